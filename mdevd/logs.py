# SPDX-License-Identifier: LGPL-2.1-or-later
"""Where the daemon's log goes: the journal under systemd, readable stderr elsewhere.

Under systemd (stderr is the journal stream named by `$JOURNAL_STREAM`), records go through
systemd-python's `JournalHandler`, which turns the `extra=` fields of a record into journal
fields: the engine's device events carry `MDEV_UUID`, `MDEV_PARENT`, `MDEV_TYPE` and
`MDEVD_EVENT`, so `journalctl -u mdevd MDEV_UUID=...` finds one device's history. Without
systemd-python the lines still reach the journal, through stderr with sd-daemon(3) priority
prefixes (`<3>`), just without the extra fields. Anywhere else, stderr gets
`mdevd: LEVEL: message` lines.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import TextIO

#: The levels `--log-level` and `[daemon] log_level` accept, least severe first.
LEVELS = ("debug", "info", "warning", "error")
SYSLOG_IDENTIFIER = "mdevd"

# sd-daemon(3) prefixes: journald reads them off the start of each stderr line.
_SYSLOG_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


def stderr_is_journal(
    environ: Mapping[str, str] | None = None, stream: TextIO | None = None
) -> bool:
    """True when stderr is connected to the journal (systemd.exec(5), `$JOURNAL_STREAM`).

    The variable holds the `device:inode` of the stream systemd connected; it is compared with
    stderr itself, since a process started from a service's shell inherits the variable
    without the stream.
    """
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    try:
        info = os.fstat((stream or sys.stderr).fileno())
        return (info.st_dev, info.st_ino) == (int(device), int(inode))
    except (ValueError, OSError):
        return False


class _PriorityPrefixFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        priority = _SYSLOG_PRIORITY.get(record.levelno, 6)
        text = super().format(record)
        return "\n".join(f"<{priority}>{line}" for line in text.split("\n"))


def journal_handler() -> logging.Handler | None:
    """A `JournalHandler` sending straight to journald, or None without systemd-python."""
    try:
        from systemd.journal import JournalHandler
    except ImportError:
        return None
    handler: logging.Handler = JournalHandler(SYSLOG_IDENTIFIER=SYSLOG_IDENTIFIER)
    return handler


def setup_logging(level: str = "info", *, journal: bool | None = None) -> None:
    """Send the root logger's records to the journal or to stderr, at `level`.

    `journal=None` decides by `stderr_is_journal()`.
    """
    if journal is None:
        journal = stderr_is_journal()
    handler: logging.Handler | None = journal_handler() if journal else None
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        if journal:
            handler.setFormatter(_PriorityPrefixFormatter("%(message)s"))
        else:
            handler.setFormatter(logging.Formatter("mdevd: %(levelname)s: %(message)s"))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    set_level(level)


def set_level(level: str) -> None:
    if level not in LEVELS:
        raise ValueError(f"unknown log level {level!r}; known: {', '.join(LEVELS)}")
    logging.getLogger().setLevel(level.upper())
