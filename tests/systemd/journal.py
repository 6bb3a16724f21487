# SPDX-License-Identifier: LGPL-2.1-or-later
"""A real systemd-journald for the test process, and a stdout stream to it as systemd makes one.

journald runs with its sockets and its storage on tmpfs mounts made in the test's private
mount namespace (the suite's conftest puts the test process in one), so nothing reaches the
host's journal; `journalctl` run from the test reads what it stored.

`journal_stream()` is what systemd gives a service with `StandardError=journal`: a connection
to `/run/systemd/journal/stdout` after the stream header, and `JOURNAL_STREAM` naming it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

JOURNALD = Path("/lib/systemd/systemd-journald")
SOCKET = Path("/run/systemd/journal/socket")
STDOUT = Path("/run/systemd/journal/stdout")
_MOUNTS = (Path("/run/systemd"), Path("/run/log"), Path("/var/log/journal"))


@contextlib.contextmanager
def running_journald(timeout: float = 20) -> Iterator[None]:
    mounted: list[Path] = []
    journald: subprocess.Popen[bytes] | None = None
    try:
        for path in _MOUNTS:
            path.mkdir(parents=True, exist_ok=True)
            subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(path)], check=True)
            mounted.append(path)
        journald = subprocess.Popen(
            [str(JOURNALD)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while not (SOCKET.is_socket() and STDOUT.is_socket()):
            if journald.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"systemd-journald did not start ({journald.returncode})")
            time.sleep(0.02)
        yield
    finally:
        if journald is not None:
            journald.terminate()
            journald.wait(timeout=10)
        for path in reversed(mounted):
            subprocess.run(["umount", "-l", str(path)], check=False)


@contextlib.contextmanager
def journal_stream(identifier: str = "mdevd") -> Iterator[tuple[int, str]]:
    """A stream to journald (fd) and the `JOURNAL_STREAM` value that names it."""
    stream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        stream.connect(str(STDOUT))
        stream.shutdown(socket.SHUT_RD)
        # identifier, unit, priority, level prefix, forward to syslog, kmsg, console
        stream.sendall(f"{identifier}\n\n6\n1\n0\n0\n0\n".encode())
        info = os.fstat(stream.fileno())
        yield stream.fileno(), f"{info.st_dev}:{info.st_ino}"
    finally:
        stream.close()


def entries(*matches: str) -> list[dict[str, str]]:
    """`journalctl -o json MATCH...`: the stored entries, oldest first."""
    result = subprocess.run(
        ["journalctl", "--no-pager", "-o", "json", *matches],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def wait_for_entries(*matches: str, timeout: float = 20) -> list[dict[str, str]]:
    deadline = time.monotonic() + timeout
    while not (found := entries(*matches)):
        if time.monotonic() > deadline:
            raise AssertionError(f"no journal entry {matches} within {timeout} s")
        time.sleep(0.1)
    return found
