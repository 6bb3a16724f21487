# SPDX-License-Identifier: LGPL-2.1-or-later
"""Every place a running process tries to change in the filesystem, observed with strace.

    with traced_writes(pid) as writes:
        ...                                  # make the process work
    for write in writes():                   # after the block: what it tried, successful or not
        print(write.syscall, write.path, write.result)

strace attaches to every thread of `pid` (`-f`) and writes one log per thread (`-ff`), so no
line is split between threads. A write is any syscall that creates, changes, renames or
removes a name or opens a file for writing; its path is the one the kernel resolved when the
call succeeded (`-y` shows it), else the argument joined to its directory descriptor's path.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

#: Syscalls that change the filesystem (open and openat count only with a writing flag).
WRITE_SYSCALLS = (
    "open",
    "openat",
    "openat2",
    "creat",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "rename",
    "renameat",
    "renameat2",
    "unlink",
    "unlinkat",
    "rmdir",
    "symlink",
    "symlinkat",
    "link",
    "linkat",
    "truncate",
    "chmod",
    "fchmodat",
    "chown",
    "lchown",
    "fchownat",
    "utimensat",
    "setxattr",
    "lsetxattr",
)
_WRITE_FLAGS = ("O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC", "O_APPEND")
#: Syscalls whose paths are relative to a directory descriptor argument.
_AT_SYSCALLS = frozenset(
    {
        "openat",
        "openat2",
        "mkdirat",
        "mknodat",
        "renameat",
        "renameat2",
        "unlinkat",
        "symlinkat",
        "linkat",
        "fchmodat",
        "fchownat",
        "utimensat",
    }
)

_LINE = re.compile(r"^(?P<syscall>\w+)\((?P<args>.*)\)\s+=\s+(?P<result>-?\d+|\?)(?P<rest>.*)$")
_STRING = r'"((?:[^"\\]|\\.)*)"'
_AT_PAIR = re.compile(r"(?:AT_FDCWD|-?\d+)<([^>]*)>,\s*" + _STRING)
_BARE_STRING = re.compile(_STRING)
_RESOLVED_FD = re.compile(r"^<([^>]*)>")


@dataclass(frozen=True)
class Write:
    syscall: str
    path: str
    result: str
    line: str


def _unescape(text: str) -> str:
    # strace escapes quotes, backslashes and non-printable bytes; a path that needed escaping
    # is outside every directory we allow anyway, so an approximate decoding is enough.
    return text.encode().decode("unicode_escape", errors="replace")


def _paths(syscall: str, args: str) -> list[str]:
    if syscall in _AT_SYSCALLS:
        pairs = _AT_PAIR.findall(args)
        if syscall == "symlinkat":
            pairs = pairs[-1:]  # the first string is the link's target, not a place written
        return [os.path.normpath(os.path.join(base, _unescape(name))) for base, name in pairs]
    strings = _BARE_STRING.findall(args)
    if syscall in ("symlink", "link"):
        strings = strings[-1:]
    elif syscall != "rename":
        strings = strings[:1]
    return [os.path.normpath(_unescape(s)) for s in strings]


def parse_line(line: str) -> list[Write]:
    match = _LINE.match(line.strip())
    if match is None:
        return []
    syscall, args = match["syscall"], match["args"]
    if syscall not in WRITE_SYSCALLS:
        return []
    if syscall in ("open", "openat", "openat2") and not any(f in args for f in _WRITE_FLAGS):
        return []
    result = match["result"]
    paths = _paths(syscall, args)
    resolved = _RESOLVED_FD.match(match["rest"])
    if syscall.startswith("open") and resolved is not None:
        paths = [resolved[1]]
    return [Write(syscall, path, result, line.strip()) for path in paths]


@contextmanager
def traced_writes(pid: int, *, attach_timeout: float = 30) -> Iterator[Callable[[], list[Write]]]:
    """Trace `pid` for the block; yield a function returning its writes (call it afterwards)."""
    if shutil.which("strace") is None:
        raise RuntimeError("strace is missing: install the Debian package strace")
    directory = Path(tempfile.mkdtemp(prefix="mdevd-strace-"))
    prefix = directory / "trace"
    tracer = subprocess.Popen(
        [
            "strace",
            "-f",
            "-ff",
            "-qq",
            "-y",
            "-s",
            "4096",
            "-e",
            "trace=" + ",".join(WRITE_SYSCALLS),
            "-e",
            "signal=none",
            "-o",
            str(prefix),
            "-p",
            str(pid),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    writes: list[Write] = []
    try:
        # strace creates one file per thread as it attaches to it.
        threads = len(os.listdir(f"/proc/{pid}/task"))
        deadline = time.monotonic() + attach_timeout
        while len(list(directory.iterdir())) < threads:
            if tracer.poll() is not None or time.monotonic() > deadline:
                stderr = tracer.stderr.read().decode() if tracer.stderr else ""
                raise AssertionError(f"strace did not attach to {pid}: {stderr}")
            time.sleep(0.01)
        yield lambda: list(writes)
    finally:
        tracer.send_signal(signal.SIGINT)  # detaches from every thread, then exits
        try:
            tracer.wait(timeout=30)
        except subprocess.TimeoutExpired:
            tracer.kill()
            tracer.wait()
        if tracer.stderr is not None:
            tracer.stderr.close()
        for log in sorted(directory.iterdir()):
            for line in log.read_text(errors="replace").splitlines():
                writes.extend(parse_line(line))
        shutil.rmtree(directory, ignore_errors=True)
