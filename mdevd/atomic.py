# SPDX-License-Identifier: LGPL-2.1-or-later
"""Crash-safe replacement and removal of small files.

A reader (or the next boot) sees a file's old content or its new content, never a mix and
never an empty file: the new content goes to a temporary file in the same directory (rename is
atomic only within one filesystem), is fsynced, renamed over the target, and then the directory
is fsynced so that the rename itself survives a power cut.

Temporary names are hidden and do not end in `.toml` (`.NAME.XXXXXXXX.tmp`), so a writer
killed half-way leaves at worst a stray file that no loader takes for a definition; the
daemon removes those at start-up (`remove_stale_temp_files`).

Everything happens relative to one open directory, which must be `trusted` (owned by root,
writable by no one else, as sshd's StrictModes and sudo ask of their files): a directory
swapped or a symlink planted meanwhile cannot send a write elsewhere.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

TEMP_SUFFIX = ".tmp"
NEW_FILE_MODE = 0o644
NEW_DIRECTORY_MODE = 0o755


#: Exactly what `temp_path_for` makes: `.` NAME `.` 8 hex digits `.tmp`.
_OWN_TEMP_NAME_RE = re.compile(r"\..+\.[0-9a-f]{8}\.tmp")


class UntrustedError(PermissionError):
    """A directory or file that someone other than root could have changed."""


def temp_path_for(target: Path) -> Path:
    """A fresh hidden temporary name next to `target`."""
    return target.with_name(f".{target.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")


def is_temp_name(name: str) -> bool:
    """Whether `name` looks like one of our temporary files."""
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def is_own_temp_name(name: str, target_suffix: str = "") -> bool:
    """Whether `name` is exactly of `temp_path_for`'s pattern (for a target ending in
    `target_suffix`): only those are ever removed as stale."""
    if not _OWN_TEMP_NAME_RE.fullmatch(name):
        return False
    return name[1:-13].endswith(target_suffix) if target_suffix else True


def untrusted_reason(st: os.stat_result) -> str | None:
    """Why a directory or file with this status must not be trusted, or None.

    Owned by root and writable by no one else: what sshd's StrictModes and sudo demand. A
    directory writable by others lets anyone plant definitions the root daemon acts on.
    """
    if st.st_uid != 0:
        return f"owned by uid {st.st_uid}, not root"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def open_directory(directory: Path) -> int:
    """An fd of `directory`, checked to be trusted. Raises OSError (UntrustedError)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        reason = untrusted_reason(os.fstat(fd))
        if reason is not None:
            raise UntrustedError(f"{directory}: not trusted: {reason}")
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def trusted_directory(directory: Path) -> Iterator[int]:
    fd = open_directory(directory)
    try:
        yield fd
    finally:
        os.close(fd)


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


def write_atomic(path: Path, data: bytes, *, mode: int | None = None, durable: bool = True) -> None:
    """Replace `path` with `data` atomically and durably.

    `durable=False` skips the fsyncs: for records that a crash of the host makes worthless
    anyway (what the kernel held is gone with it), a reader still sees the old file or the
    new one, never a mix, and a crash of the daemon alone loses nothing.

    `mode` defaults to the mode of the file being replaced (an admin's 0600 stays 0600), or
    0644 for a new file. The directory must exist. Raises OSError; on failure the old file is
    untouched and the temporary file is gone.
    """
    with trusted_directory(path.parent) as dir_fd:
        if mode is None:
            mode = NEW_FILE_MODE
            with contextlib.suppress(FileNotFoundError):
                # The entry itself: a symlink in its place is replaced, never followed.
                st = os.stat(path.name, dir_fd=dir_fd, follow_symlinks=False)
                if stat.S_ISREG(st.st_mode):
                    mode = stat.S_IMODE(st.st_mode)
        temp = temp_path_for(path).name
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(temp, flags, 0o600, dir_fd=dir_fd)
        try:
            try:
                written = os.fstat(fd)
                _write_all(fd, data)
                os.fchmod(fd, mode)
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            # rename(2) replaces the entry (a symlink too) and never follows it. It takes the
            # paths (an fd-relative rename would hide the path from tracing tools); that the
            # result is in the very directory checked above is verified right after.
            os.replace(path.parent / temp, path)
            now = os.stat(path.name, dir_fd=dir_fd, follow_symlinks=False)
            if (now.st_dev, now.st_ino) != (written.st_dev, written.st_ino):
                raise UntrustedError(f"{path.parent}: replaced while mdevd was writing in it")
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp, dir_fd=dir_fd)
            raise
        if durable:
            os.fsync(dir_fd)


def remove_durably(path: Path) -> None:
    """Remove `path` and make the removal durable. Raises OSError (FileNotFoundError too)."""
    with trusted_directory(path.parent) as dir_fd:
        os.unlink(path.name, dir_fd=dir_fd)
        os.fsync(dir_fd)


def remove_stale_temp_files(directory: Path, target_suffix: str = "") -> list[str]:
    """Remove the temporary files a killed writer left in `directory` (only names of exactly
    our pattern, only regular files); return their names. A missing directory has none."""
    removed: list[str] = []
    try:
        dir_fd = open_directory(directory)
    except FileNotFoundError:
        return removed
    try:
        for name in os.listdir(dir_fd):
            if not is_own_temp_name(name, target_suffix):
                continue
            with contextlib.suppress(FileNotFoundError):
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                if stat.S_ISREG(st.st_mode):
                    os.unlink(name, dir_fd=dir_fd)
                    removed.append(name)
        if removed:
            os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return removed
