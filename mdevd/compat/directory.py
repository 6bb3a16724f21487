# SPDX-License-Identifier: LGPL-2.1-or-later
"""mdevctl's definitions directory: `<root>/<parent>/<uuid>` files in mdevctl's JSON format.

Reading follows mdevctl's own acceptance rules (`mdevd.mdevctl_format`); every write is atomic
(temporary file, fsync, rename, fsync of the directory), so libvirt's file monitor, ap-check
and zdev never read a half-written file. Temporary files are hidden (`.<uuid>.XXXXXXXX.tmp`):
mdevctl, ap-check and zdev skip names that are not UUIDs.

The directory also holds `.mdevd-mirrors.json`, the record of the files mdevd wrote there as
copies of its TOML definitions (see `mdevd.compat.store`): with it, a copy whose TOML
definition was deleted is removed instead of being mistaken for an mdevctl definition. mdevctl
skips it (it is a file, not a parent directory).

Synchronous and not locked: `mdevd.compat.store` serializes its callers. Files unchanged since
the last read (inode, size, times) are not parsed again.

What the daemon's watcher looks at here is what mdevctl reads (`watched`): UUID-named files in
the parent directories, not `scripts.d`, not symlinked ones, and the parent directories coming
and going; mdevd's own writes there are told apart by the caller.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mdevd import atomic, definitions, mdevctl_format, validate
from mdevd.definitions import Problem
from mdevd.errors import Failed, MdevdError
from mdevd.mdevctl_format import MdevctlTree
from mdevd.model import Definition
from mdevd.watch import Watched

MIRROR_RECORD_NAME = ".mdevd-mirrors.json"

#: (device, inode, size, mtime): what `changed_by_others` compares.
FileSignature = tuple[int, int, int, int]


def content_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_signature(path: Path) -> FileSignature | None:
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass(frozen=True, slots=True)
class MirrorEntry:
    """A file mdevd wrote as a copy of a TOML definition, and what it wrote."""

    path: str  # relative to the root: "<parent>/<file name>"
    digest: str


class MdevctlDirectory:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._cache: mdevctl_format.ReadCache = {}

    # ---- reading -----------------------------------------------------------------------

    def exists(self) -> bool:
        return self.root.is_dir()

    def read(self) -> MdevctlTree:
        """Every definition mdevctl would list (and mdevd accepts), and why others are not.

        An absent directory holds nothing. Our own temporary files are not reported.
        """
        if not self.root.exists():
            return MdevctlTree()
        tree = mdevctl_format.read_mdevctl_tree(self.root, verb="ignored", cache=self._cache)
        tree.problems = [p for p in tree.problems if not atomic.is_temp_name(Path(p.file).name)]
        return tree

    def watched(self, changed_by_others: Callable[[Path], bool]) -> Watched:
        """What a watcher looks at to see mdevctl's definitions change: `<root>/<parent>/<uuid>`
        as mdevctl reads it. mdevd writes there itself (its definitions, the mirror of the
        TOML ones): `changed_by_others(path)` tells a file someone else changed from one as
        mdevd left it. A parent directory that goes always counts (mdevd never removes one)."""
        return Watched(
            self.root,
            files=lambda name: mdevctl_format.mdevctl_uuid(name) is not None,
            subdirectories=is_parent_directory_name,
            changed_by_others=changed_by_others,
            description="mdevctl's directory",
        )

    def digest_of(self, path: Path) -> str | None:
        data = _read_regular(path, definitions.MAX_MDEVCTL_FILE_SIZE)
        return content_digest(data) if isinstance(data, bytes) else None

    # ---- writing -----------------------------------------------------------------------

    def path_for(self, definition: Definition) -> Path:
        parent = validate.parent_name(definition.parent)
        return self.root / parent / validate.uuid(definition.uuid)

    def write(self, definition: Definition, path: Path | None = None) -> tuple[Path, str]:
        """Write `definition` as mdevctl does (`to_string_pretty`, no trailing newline) to
        `path` (default `<root>/<parent>/<uuid>`); return the path and the content's digest."""
        target = self.path_for(definition) if path is None else path
        data = mdevctl_format.to_mdevctl_json(definition).encode()
        try:
            atomic.ensure_directory(target.parent)
            atomic.write_atomic(target, data)
        except OSError as e:
            raise Failed(f"{target}: cannot write: {e.strerror}") from None
        return target, content_digest(data)

    def remove(self, path: Path) -> None:
        try:
            atomic.remove_durably(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise Failed(f"{path}: cannot remove: {e.strerror}") from None

    # ---- the mirror record -------------------------------------------------------------

    @property
    def record_path(self) -> Path:
        return self.root / MIRROR_RECORD_NAME

    def load_record(self) -> tuple[dict[str, MirrorEntry], list[Problem]]:
        """The mirror record by UUID; an unreadable record is reported and treated as empty
        (its copies then count as mdevctl definitions: nothing is lost)."""
        # Bounded like a definitions file: a record of every definition there may be.
        data = _read_regular(self.record_path, definitions.MAX_FILE_SIZE)
        if data is None:
            return {}, []
        if isinstance(data, str):
            return {}, [Problem(str(self.record_path), 0, data)]
        try:
            too_costly = definitions.bound_problem(data.decode("utf-8"), "", json=True)
            if too_costly is not None:
                raise ValueError(too_costly.message)
            raw = json.loads(data)
            entries = {
                validate.uuid(uuid): MirrorEntry(str(entry["path"]), str(entry["digest"]))
                for uuid, entry in raw.items()
            }
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError, MdevdError) as e:
            message = f"not a mirror record mdevd can read ({e}); its files count as mdevctl's"
            return {}, [Problem(str(self.record_path), 0, message)]
        return entries, []

    def save_record(self, entries: dict[str, MirrorEntry]) -> None:
        if not entries:
            with contextlib.suppress(FileNotFoundError):
                self.remove(self.record_path)
            return
        document = {
            uuid: {"path": entry.path, "digest": entry.digest}
            for uuid, entry in sorted(entries.items())
        }
        try:
            atomic.ensure_directory(self.root)
            atomic.write_atomic(self.record_path, (json.dumps(document, indent=2) + "\n").encode())
        except OSError as e:
            raise Failed(f"{self.record_path}: cannot write: {e.strerror}") from None

    def remove_stale_temp_files(self) -> list[str]:
        """Remove the temporary files a killed writer left: `<parent>/.<uuid>.XXXXXXXX.tmp`,
        and the mirror record's `.mdevd-mirrors.json.XXXXXXXX.tmp` in the directory itself.
        Returns their paths, relative to the directory."""
        removed = [name for name in atomic.remove_stale_temp_files(self.root, ".json")]
        for parent in _parent_directories(self.root):
            removed += [f"{parent.name}/{name}" for name in atomic.remove_stale_temp_files(parent)]
        return removed

    def relative(self, path: Path) -> str:
        return str(path.relative_to(self.root))

    def contains(self, path: str | Path) -> bool:
        try:
            Path(path).relative_to(self.root)
        except ValueError:
            return False
        return True


def is_parent_directory_name(name: str) -> bool:
    """Whether mdevctl takes a directory of this name in its directory for a parent's."""
    return name != mdevctl_format.SCRIPTS_DIR_NAME


def _parent_directories(root: Path) -> list[Path]:
    """mdevctl's parent directories (not symlinks, not scripts.d); none if `root` is absent."""
    try:
        with os.scandir(root) as entries:
            return [
                Path(entry.path)
                for entry in entries
                if entry.is_dir(follow_symlinks=False) and is_parent_directory_name(entry.name)
            ]
    except FileNotFoundError:
        return []


def _read_regular(path: Path, limit: int) -> bytes | str | None:
    """The content of the regular file `path` (a symlink is not followed), at most `limit`
    bytes; None if it does not exist; else why it cannot be read."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        if not stat.S_ISREG(os.stat(path, follow_symlinks=False).st_mode):
            return "not a regular file; not read"
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"cannot read: {e.strerror}"
    try:
        data = os.read(fd, limit + 1)
    except OSError as e:
        return f"cannot read: {e.strerror}"
    finally:
        os.close(fd)
    return data if len(data) <= limit else f"larger than {limit} bytes; not read"
