# SPDX-License-Identifier: LGPL-2.1-or-later
"""Writing an initramfs: a gzip-compressed cpio archive in the kernel's `newc` format.

Just enough of the format for what the harness packs (directories, regular files, symlinks),
so building the initramfs needs neither `cpio` nor root-owned staging directories. Entries are
written in the order given; the kernel needs a directory before the files in it.
"""

from __future__ import annotations

import gzip
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_TRAILER = "TRAILER!!!"


@dataclass(frozen=True, slots=True)
class Entry:
    """One archive member: `path` inside the archive (no leading slash)."""

    path: str
    mode: int
    data: bytes = b""

    @classmethod
    def directory(cls, path: str) -> Entry:
        return cls(path, stat.S_IFDIR | 0o755)

    @classmethod
    def file(cls, path: str, data: bytes, executable: bool = False) -> Entry:
        return cls(path, stat.S_IFREG | (0o755 if executable else 0o644), data)

    @classmethod
    def symlink(cls, path: str, target: str) -> Entry:
        return cls(path, stat.S_IFLNK | 0o777, target.encode())


def _pad(length: int) -> bytes:
    return b"\0" * (-length % 4)


def _member(inode: int, entry: Entry) -> bytes:
    name = entry.path.encode() + b"\0"
    fields = (
        inode,
        entry.mode,
        0,  # uid
        0,  # gid
        2 if stat.S_ISDIR(entry.mode) else 1,  # nlink
        0,  # mtime: fixed, so the same inputs give the same archive
        len(entry.data),
        0,  # devmajor
        0,  # devminor
        0,  # rdevmajor
        0,  # rdevminor
        len(name),
        0,  # check
    )
    header = b"070701" + b"".join(b"%08X" % value for value in fields)
    return header + name + _pad(len(header) + len(name)) + entry.data + _pad(len(entry.data))


def archive(entries: Iterable[Entry]) -> bytes:
    """The uncompressed newc archive of `entries`, with its trailer."""
    members = [_member(inode, entry) for inode, entry in enumerate(entries, start=1)]
    members.append(_member(0, Entry(_TRAILER, 0)))
    return b"".join(members)


def write_initramfs(destination: Path, entries: Iterable[Entry]) -> None:
    """Write the gzip-compressed archive to `destination` (replaced atomically)."""
    temporary = destination.with_name(destination.name + ".tmp")
    temporary.write_bytes(gzip.compress(archive(entries), compresslevel=6, mtime=0))
    temporary.replace(destination)
