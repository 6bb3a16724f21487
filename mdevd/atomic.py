# SPDX-License-Identifier: LGPL-2.1-or-later
"""Crash-safe replacement and removal of small files.

A reader (or the next boot) sees a file's old content or its new content, never a mix and
never an empty file: the new content goes to a temporary file in the same directory (rename is
atomic only within one filesystem), is fsynced, renamed over the target, and then the directory
is fsynced so that the rename itself survives a power cut.

Temporary names are hidden and do not end in `.toml` (`.NAME.XXXXXXXX.tmp`), so a writer
killed half-way leaves at worst a stray file that no loader takes for a definition.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

TEMP_SUFFIX = ".tmp"
NEW_FILE_MODE = 0o644
NEW_DIRECTORY_MODE = 0o755


def temp_path_for(target: Path) -> Path:
    """A fresh hidden temporary name next to `target`."""
    return target.with_name(f".{target.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")


def is_temp_name(name: str) -> bool:
    """Whether `name` looks like one of our temporary files."""
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def fsync_directory(directory: Path) -> None:
    """Make the entries of `directory` (creations, renames, removals) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_directory(directory: Path, mode: int = NEW_DIRECTORY_MODE) -> None:
    """Create `directory` and missing parents, each made durable in its parent."""
    missing: list[Path] = []
    current = directory
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another writer was quicker: fine
            path.mkdir(mode)
        fsync_directory(path.parent)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def write_atomic(path: Path, data: bytes, *, mode: int | None = None) -> None:
    """Replace `path` with `data` atomically and durably.

    `mode` defaults to the mode of the file being replaced (an admin's 0600 stays 0600), or
    0644 for a new file. The directory must exist. Raises OSError; on failure the old file is
    untouched and the temporary file is gone.
    """
    if mode is None:
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except FileNotFoundError:
            mode = NEW_FILE_MODE
    temp = temp_path_for(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temp, flags, 0o600)
    try:
        try:
            _write_all(fd, data)
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        raise
    fsync_directory(path.parent)


def remove_durably(path: Path) -> None:
    """Remove `path` and make the removal durable. Raises OSError (FileNotFoundError too)."""
    path.unlink()
    fsync_directory(path.parent)
