# SPDX-License-Identifier: LGPL-2.1-or-later
"""inotify through ctypes: the three system calls and the event records, nothing more.

The fd is non-blocking and close-on-exec; its users read it from the asyncio loop
(`loop.add_reader`), so no thread ever waits on it. What to watch and what an event means is
theirs: `mdevd.watch` (the directories stores read), `mdevd.compat.callouts` (the script
directories).
"""

from __future__ import annotations

import ctypes
import os
import struct
from pathlib import Path

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_ISDIR = 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

#: In a directory of files: anything that can change what a reader of them reads. IN_ATTRIB:
#: a file made unreadable, or a mask symlink's target; IN_CLOSE_WRITE: an edit in place.
FILES_CHANGE = (
    IN_ATTRIB
    | IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
    | IN_ONLYDIR
)
#: In the nearest existing ancestor of a missing directory: something appearing in it (or the
#: ancestor going).
SOMETHING_APPEARS = IN_CREATE | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR

#: wd, mask, cookie, len (struct inotify_event); the name follows, NUL-padded to len.
_EVENT_HEADER = struct.Struct("iIII")


class Inotify:
    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._libc.inotify_add_watch.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32)
        self._libc.inotify_rm_watch.argtypes = (ctypes.c_int, ctypes.c_int)
        self.fd = self._check(self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC), "inotify_init1")

    @staticmethod
    def _check(result: int, what: str) -> int:
        if result < 0:
            code = ctypes.get_errno()
            raise OSError(code, f"{what}: {os.strerror(code)}")
        return result

    def add_watch(self, path: Path, mask: int) -> int:
        return self._check(
            self._libc.inotify_add_watch(self.fd, os.fsencode(path), mask),
            f"inotify_add_watch {path}",
        )

    def rm_watch(self, wd: int) -> None:
        self._libc.inotify_rm_watch(self.fd, wd)  # EINVAL when the kernel dropped it: fine

    def read(self) -> list[tuple[int, int, str]]:
        """Every event queued now, as (wd, mask, name)."""
        events: list[tuple[int, int, str]] = []
        while True:
            try:
                data = os.read(self.fd, 64 * 1024)
            except BlockingIOError:
                return events
            offset = 0
            while offset + _EVENT_HEADER.size <= len(data):
                wd, mask, _cookie, length = _EVENT_HEADER.unpack_from(data, offset)
                offset += _EVENT_HEADER.size
                raw = data[offset : offset + length].split(b"\0", 1)[0]
                offset += length
                events.append((wd, mask, os.fsdecode(raw)))

    def close(self) -> None:
        """Idempotent: a second close must not close an fd number reused since."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
