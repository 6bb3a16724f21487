# SPDX-License-Identifier: LGPL-2.1-or-later
"""The log files of the processes under test, and what each test added to them.

    with watched_log("mdevd", daemon.log_path):         # for as long as the daemon runs
        ...

`running_daemon` and `running_sim` register their logs here. Under pytest,
tests/support/report_logs.py (loaded by tests/conftest.py) calls `begin_test()` before each
test and, when the test fails, attaches `written_during_test()` to its report: the lines each
process wrote while that test ran, whether the process belongs to the test or to its module.
Outside pytest nothing reads the registry. Independent of pytest.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

#: Of a long log, the last this many lines are shown (the whole file is named).
MAX_LINES = 2000


@dataclass
class _Log:
    label: str
    path: Path
    #: Bytes the file held when the current test began (0 if it started during the test).
    start: int = 0
    running: bool = True


@dataclass(frozen=True)
class Written:
    """What one log got during the current test."""

    label: str
    path: Path
    text: str
    #: Lines left out at the front (the log was longer than MAX_LINES).
    left_out: int = 0


_lock = threading.Lock()
_logs: list[_Log] = []


@contextmanager
def watched_log(label: str, path: Path) -> Iterator[None]:
    """Register `path` (the log of `label`, e.g. "mdevd") for the length of the block."""
    entry = _Log(label, path)
    with _lock:
        _logs.append(entry)
    try:
        yield
    finally:
        # Kept until the next test begins: the test that stopped it may still fail.
        entry.running = False


def begin_test() -> None:
    """A test begins: forget the logs of processes that stopped, and count what the others
    hold so far as before it."""
    with _lock:
        _logs[:] = [log for log in _logs if log.running]
        for log in _logs:
            log.start = _size(log.path)


def written_during_test() -> list[Written]:
    """What each registered log got since `begin_test()` (or since it was registered), for
    the logs that got anything, in the order they were registered."""
    with _lock:
        logs = list(_logs)
    found = []
    for log in logs:
        try:
            with log.path.open("rb") as file:
                file.seek(log.start)
                data = file.read()
        except OSError:
            continue
        if not data:
            continue
        lines = data.decode(errors="replace").splitlines(keepends=True)
        left_out = max(0, len(lines) - MAX_LINES)
        found.append(Written(log.label, log.path, "".join(lines[left_out:]), left_out))
    return found


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
