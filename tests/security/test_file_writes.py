# SPDX-License-Identifier: LGPL-2.1-or-later
"""The strace observer of `file_writes` sees what a process writes, in any of its threads."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

from tests.security.file_writes import parse_line, traced_writes

_WRITER = textwrap.dedent(
    """
    import os, sys, threading
    directory = sys.argv[1]
    sys.stdin.readline()
    def write():
        with open(os.path.join(directory, "made"), "w") as file:
            file.write("x")
    thread = threading.Thread(target=write)
    thread.start()
    thread.join()
    os.rename(os.path.join(directory, "made"), os.path.join(directory, "renamed"))
    dir_fd = os.open(directory, os.O_RDONLY)
    os.mkdir("sub", dir_fd=dir_fd)
    os.symlink("/etc/passwd", os.path.join(directory, "link"))
    open("/etc/hostname").read()
    sys.stdin.readline()
    """
)


def test_traced_writes_sees_every_kind_of_write(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(tmp_path)], stdin=subprocess.PIPE, text=True
    )
    assert process.stdin is not None
    try:
        with traced_writes(process.pid) as writes:
            process.stdin.write("go\n")
            process.stdin.flush()
            deadline = time.monotonic() + 30
            while not (tmp_path / "link").is_symlink():
                assert time.monotonic() < deadline, "the writer did not finish"
                time.sleep(0.01)
        seen = {(w.syscall, w.path) for w in writes()}
    finally:
        process.stdin.close()
        process.wait()
    assert ("openat", str(tmp_path / "made")) in seen
    assert ("rename", str(tmp_path / "made")) in seen
    assert ("rename", str(tmp_path / "renamed")) in seen
    assert ("mkdirat", str(tmp_path / "sub")) in seen
    assert ("symlink", str(tmp_path / "link")) in seen
    # Reading is not writing; a symlink's target is not a place written.
    assert not any(path.startswith("/etc/") for _, path in seen)


def test_parse_line_resolves_directory_descriptors() -> None:
    line = (
        'openat(7</run/x/devices.d>, "../../../etc/shadow", O_WRONLY|O_CREAT|O_CLOEXEC, 0600)'
        " = -1 EACCES (Permission denied)"
    )
    assert [w.path for w in parse_line(line)] == ["/etc/shadow"]
    assert (
        parse_line('openat(AT_FDCWD</>, "/etc/passwd", O_RDONLY|O_CLOEXEC) = 3</etc/passwd>') == []
    )
