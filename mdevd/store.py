# SPDX-License-Identifier: LGPL-2.1-or-later
"""The persistent definition store: a stack of drop-in directories of definitions files.

Directories are searched highest precedence first (by default `/etc/mdevd/devices.d`, then
`/run/mdevd/devices.d`, then `/usr/lib/mdevd/devices.d`). Only `*.toml` files that are not
hidden are read. A file masks every file of the same name in lower directories; a symlink to
`/dev/null` masks without defining anything (the systemd convention).

Loading never fails as a whole: each file is parsed on its own, a bad file or entry is skipped
and reported as a `Problem`, and every other definition loads. A UUID defined more than once
is a conflict: the first definition wins (higher directory first, then file name in byte
order, then position in the file) and each other one is reported.

Writes (for the API) are atomic (`mdevd.atomic`) and re-read the files they touch first, so a
hand edit made since the last load is never overwritten. Each write first looks at every
directory, as a load does, unless inotify says nothing changed since the last look but the
store's own writes (`mdevd.dirchanges`): a define then costs the same with 10 files or 10,000.

- a new device goes to `<write_dir>/<uuid>.toml`;
- a device defined in a writable file (`/etc` or `/run`, hand-written or not) is changed or
  removed in place, in that file, keeping its comments and the other devices in it;
- a device defined in a read-only (vendor) directory is refused with `ReadOnly`, whose message
  says how to override or mask it; so is removing a device that a vendor file also defines,
  because the vendor's definition would silently take its place.

The class is synchronous and thread-safe; the daemon's engine calls it from a worker thread.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import functools
import os
import stat
import threading
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mdevd import atomic, definitions, validate
from mdevd.config import StoreConfig
from mdevd.definitions import ParsedFile, Problem, ProblemKind
from mdevd.dirchanges import DirectoryChanges
from mdevd.errors import ConfigInvalid, Failed, NotFound, ReadOnly
from mdevd.model import Definition
from mdevd.watch import Watched

DEFINITION_SUFFIX = ".toml"
MASK_TARGET = "/dev/null"


def is_definition_file_name(name: str) -> bool:
    """Whether the store reads a file of this name: `*.toml`, not hidden (so neither its own
    temporary files, `.NAME.XXXX.tmp`, nor editors' swap files)."""
    return name.endswith(DEFINITION_SUFFIX) and not name.startswith(".")


# (device, inode, size, mtime, ctime): an atomic replace changes the inode, an edit in place
# changes mtime or size; either makes the store parse the file again.
_Signature = tuple[int, int, int, int, int]


@dataclass(frozen=True, slots=True)
class LoadResult:
    """What a load found."""

    #: The definition in effect for each UUID, in precedence order.
    definitions: dict[str, Definition]
    #: Everything wrong, in precedence order of the files; each names file and line.
    problems: list[Problem]
    #: The files read (after masking), in precedence order.
    files: list[Path] = field(default_factory=list)
    #: Files not read: masked by a same-named file above them, or masks (links to /dev/null).
    masked: list[Path] = field(default_factory=list)


@dataclass(slots=True)
class _Listing:
    """What a look at the directories found, before any file is read."""

    #: The directories that could not be read, or not all of them.
    problems: list[Problem]
    #: For each file name, the path in effect (the highest directory that has it), in
    #: precedence order.
    effective: dict[str, Path]
    #: Masks in effect, and the files masked by a same-named file above them.
    masked: list[Path]
    #: The files to read, in precedence order.
    files: list[Path]
    #: A file in effect is a symlink that is not a mask: its target can change unseen.
    follows_links: bool
    #: For each name in `effective`, the index of its directory in the search path.
    rank: dict[str, int]


@dataclass(slots=True)
class _State:
    result: LoadResult
    #: Every valid definition of each UUID, winner first (conflict losers after it).
    all_definitions: dict[str, list[Definition]]
    listing: _Listing

    @property
    def effective(self) -> dict[str, Path]:
        return self.listing.effective


def _signature(st: os.stat_result) -> _Signature:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _unusable(source: str, message: str, kind: ProblemKind = ProblemKind.UNREADABLE) -> ParsedFile:
    return ParsedFile((), (Problem(source, 0, message, kind),), usable=False)


@functools.cache
def _null_device() -> tuple[int, int]:
    st = os.stat(MASK_TARGET)
    return st.st_mode, st.st_rdev


def _is_mask_at(dir_fd: int, name: str) -> bool:
    """A symlink that ends at /dev/null (stat()ed, never opened)."""
    try:
        if not stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
            return False
        st = os.stat(name, dir_fd=dir_fd)
    except OSError:
        return False
    return stat.S_ISCHR(st.st_mode) and (st.st_mode, st.st_rdev) == _null_device()


_NOT_REGULAR = "not a regular file (only a symlink to /dev/null masks a file)"


def _open_checked(dir_fd: int, name: str, *, trusted: bool) -> tuple[int, os.stat_result] | str:
    """A readable fd of the file `name` stands for, and its status; or why it cannot be read.

    Its type is checked before it is opened for reading (lstat, or O_PATH through a symlink):
    a device node or FIFO in the directory is never opened. With `trusted`, so are its owner
    and mode. A symlink the admin placed is followed; the file it leads to is checked the same.
    """
    reading = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        entry = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if stat.S_ISREG(entry.st_mode):
            # O_NOFOLLOW, and the same inode after: still the regular file lstat saw.
            fd = os.open(name, reading | os.O_NOFOLLOW, dir_fd=dir_fd)
        elif stat.S_ISLNK(entry.st_mode):
            path_fd = os.open(name, os.O_PATH | os.O_CLOEXEC, dir_fd=dir_fd)
            try:
                entry = os.fstat(path_fd)
                if not stat.S_ISREG(entry.st_mode):
                    return _NOT_REGULAR
                # Through /proc: exactly the file just checked, not what the link says now.
                fd = os.open(f"/proc/self/fd/{path_fd}", reading)
            finally:
                os.close(path_fd)
        else:
            return _NOT_REGULAR
    except OSError as e:
        return f"cannot open: {e.strerror}"
    try:
        st = os.fstat(fd)
        reason = None
        if (st.st_dev, st.st_ino) != (entry.st_dev, entry.st_ino):
            reason = "replaced while mdevd was reading it; not read"
        elif trusted and (untrusted := atomic.untrusted_reason(st)) is not None:
            reason = f"not read: {untrusted}; definitions must be root's alone"
    except OSError as e:
        reason = f"cannot read: {e.strerror}"
    if reason is not None:
        os.close(fd)
        return reason
    return fd, st


def _read_definitions_file(
    dir_fd: int, name: str, source: str, *, trusted: bool = True
) -> tuple[_Signature | None, ParsedFile | bytes]:
    """The file's signature and content, or a ParsedFile holding why it cannot be used.

    Never reads more than MAX_FILE_SIZE bytes, whatever the file claims (a sparse 10 GB file
    costs a stat).
    """
    opened = _open_checked(dir_fd, name, trusted=trusted)
    if isinstance(opened, str):
        return None, _unusable(source, opened)
    fd, st = opened
    limit = definitions.MAX_FILE_SIZE
    too_big = f"larger than {limit} bytes; not read"
    try:
        if st.st_size > limit:
            return None, _unusable(source, too_big, ProblemKind.LIMIT)
        chunks: list[bytes] = []
        remaining = limit + 1
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        if remaining <= 0:
            return None, _unusable(source, too_big, ProblemKind.LIMIT)
    except OSError as e:
        return None, _unusable(source, f"cannot read: {e.strerror}")
    finally:
        os.close(fd)
    return _signature(st), b"".join(chunks)


def _read_path(path: Path, *, trusted: bool = True) -> tuple[_Signature | None, ParsedFile | bytes]:
    """`_read_definitions_file` for a path, relative to its directory (checked with `trusted`)."""
    try:
        if trusted:
            dir_fd = atomic.open_directory(path.parent)
        else:
            dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        return None, _unusable(str(path), f"cannot open its directory: {e.strerror or e}")
    try:
        return _read_definitions_file(dir_fd, path.name, str(path), trusted=trusted)
    finally:
        os.close(dir_fd)


def _is_mask(path: Path) -> bool:
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return _is_mask_at(dir_fd, path.name)
    finally:
        os.close(dir_fd)


def _directory_names(dir_fd: int, links: set[str]) -> list[str] | None:
    """The definition file names in a directory, sorted (adding the symlinks' to `links`);
    None if it holds too many entries."""
    names: list[str] = []
    with os.scandir(dir_fd) as entries:
        for count, entry in enumerate(entries, start=1):
            if count > definitions.MAX_DIRECTORY_ENTRIES:
                return None
            if is_definition_file_name(entry.name):
                names.append(entry.name)
                if entry.is_symlink():  # from the directory entry: no system call
                    links.add(entry.name)
    return sorted(names)


def _merge(parsed_files: Iterable[ParsedFile]) -> tuple[LoadResult, dict[str, list[Definition]]]:
    winners: dict[str, Definition] = {}
    everything: dict[str, list[Definition]] = {}
    problems: list[Problem] = []
    for parsed in parsed_files:
        problems.extend(parsed.problems)
        for definition in parsed.definitions:
            everything.setdefault(definition.uuid, []).append(definition)
            winner = winners.setdefault(definition.uuid, definition)
            if winner is not definition:
                problems.append(
                    Problem(
                        definition.source_file,
                        definition.source_line,
                        f"device {definition.uuid} is also defined at {_where(winner)}, "
                        "which takes precedence; this definition is ignored",
                        ProblemKind.CONFLICT,
                        definition.uuid,
                    )
                )
    return LoadResult(winners, problems), everything


def _where(definition: Definition) -> str:
    if definition.source_line > 0:
        return f"{definition.source_file}:{definition.source_line}"
    return definition.source_file


class DefinitionStore:
    """Device definitions in a stack of directories; see the module documentation.

    `dirs` is the search path, highest precedence first. New definitions are written to
    `write_dir` (default: the first directory), which must be one of `dirs`. Definitions in
    `read_only` directories are never changed or removed.
    """

    def __init__(
        self,
        dirs: Sequence[Path],
        *,
        write_dir: Path | None = None,
        read_only: Collection[Path] = (),
    ) -> None:
        if not dirs:
            raise ValueError("a definition store needs at least one directory")
        self.dirs: tuple[Path, ...] = tuple(dirs)
        self.write_dir = self.dirs[0] if write_dir is None else write_dir
        if self.write_dir not in self.dirs:
            raise ValueError(f"write directory {self.write_dir} is not in the search path")
        self.read_only: frozenset[Path] = frozenset(read_only)
        if self.write_dir in self.read_only:
            raise ValueError(f"write directory {self.write_dir} is read-only")
        self._lock = threading.RLock()
        self._cache: dict[Path, tuple[_Signature, ParsedFile]] = {}
        self._changes = DirectoryChanges(self.dirs, is_definition_file_name)
        #: The last look's result while inotify vouches for it; None: look again.
        self._state: _State | None = None
        self._looks = 0

    @classmethod
    def from_config(cls, config: StoreConfig) -> DefinitionStore:
        """The standard stack: `/etc` (written), `/run`, and the read-only vendor directory."""
        return cls(
            config.search_path(),
            write_dir=config.devices_dir,
            read_only=(config.vendor_devices_dir,),
        )

    def close(self) -> None:
        """Release the inotify instance; the store still works, looking every time."""
        with self._lock:
            self._changes.close()
            self._state = None

    # --- reading --------------------------------------------------------------------------

    def watched(self) -> list[Watched]:
        """What a watcher looks at to see the definitions change on disk: each directory."""
        return [Watched(directory, is_definition_file_name) for directory in self.dirs]

    def load(self) -> LoadResult:
        """Read every directory; files unchanged since the last load are not parsed again."""
        with self._lock:
            result = self._load_state().result
            # The store keeps its state between looks: the caller gets containers of its own.
            return LoadResult(
                dict(result.definitions), list(result.problems), list(result.files),
                list(result.masked),
            )  # fmt: skip

    def get(self, uuid: str) -> Definition | None:
        """The definition in effect for `uuid`, read afresh, or None."""
        with self._lock:
            return self._load_state().result.definitions.get(validate.uuid(uuid))

    def path_for_new(self, uuid: str) -> Path:
        """The file `save` writes a new definition of `uuid` to."""
        return self.write_dir / f"{validate.uuid(uuid)}{DEFINITION_SUFFIX}"

    def is_writable(self, uuid: str) -> bool:
        """Whether the API may both change and remove `uuid`.

        False when a read-only directory defines it, in effect or as a conflicting copy. An
        unknown UUID is writable (`save` would create it).
        """
        with self._lock:
            state = self._load_state()
            found = state.all_definitions.get(validate.uuid(uuid), [])
            return not any(self._in_read_only_dir(d) for d in found)

    def _in_read_only_dir(self, definition: Definition) -> bool:
        return Path(definition.source_file).parent in self.read_only

    def _parse(self, path: Path, dir_fd: int | None = None) -> ParsedFile:
        """The parsed content of `path` (in the open directory `dir_fd`, else in its own
        directory, which must be trusted)."""
        if dir_fd is None:
            try:
                dir_fd = atomic.open_directory(path.parent)
            except OSError as e:
                return _unusable(str(path), f"cannot open its directory: {e.strerror or e}")
            try:
                return self._parse(path, dir_fd)
            finally:
                os.close(dir_fd)
        cached = self._cache.get(path)
        if cached is not None:
            # A stat() is enough to know an unchanged file: no open, no read. A chmod or
            # chown changes ctime, so a file made untrusted is read (and refused) again.
            with contextlib.suppress(OSError):
                if _signature(os.stat(path.name, dir_fd=dir_fd)) == cached[0]:
                    return cached[1]
        signature, content = _read_definitions_file(dir_fd, path.name, str(path))
        if isinstance(content, ParsedFile):
            self._cache.pop(path, None)
            return content
        assert signature is not None
        parsed = definitions.parse_bytes(content, str(path))
        self._cache[path] = (signature, parsed)
        return parsed

    def _open_directories(self, problems: list[Problem]) -> dict[Path, int]:
        """An fd of each directory that exists and may be used; a problem for each other.

        A directory someone other than root could write to is refused, alone: the others
        still load (a refused /etc directory does not unmask the vendor's files either:
        nothing of it is read).
        """
        fds: dict[Path, int] = {}
        for directory in self.dirs:
            try:
                fds[directory] = atomic.open_directory(directory)
            except FileNotFoundError:
                continue  # an absent directory holds no definitions; that is normal
            except atomic.UntrustedError as e:
                message = f"directory not read: {e.args[0].split(': ', 2)[-1]}; it must be "
                message += "owned by root and writable by no one else"
                problems.append(Problem(str(directory), 0, message, ProblemKind.UNREADABLE))
            except OSError as e:
                problems.append(
                    Problem(
                        str(directory),
                        0,
                        f"cannot read directory: {e.strerror}",
                        ProblemKind.UNREADABLE,
                    )
                )
        return fds

    def _load_state(self) -> _State:
        if self._state is not None and not self._changes.changed():
            return self._state
        # A program that loads once (the command line) never opens an inotify instance: the
        # watch starts with the second look.
        watching = self._looks > 0 and self._changes.reset()
        self._looks += 1
        state = self._look()
        self._state = state if watching and not state.listing.follows_links else None
        return state

    def _look(self) -> _State:
        """Every directory listed, every file in effect stat()ed (and parsed if it changed)."""
        problems: list[Problem] = []
        effective: dict[str, Path] = {}
        rank: dict[str, int] = {}
        masked: list[Path] = []
        fds = self._open_directories(problems)
        links: dict[Path, set[str]] = {directory: set() for directory in fds}
        try:
            for directory, dir_fd in fds.items():
                try:
                    names = _directory_names(dir_fd, links[directory])
                except OSError as e:
                    message = f"cannot read directory: {e.strerror}"
                    problems.append(Problem(str(directory), 0, message, ProblemKind.UNREADABLE))
                    continue
                if names is None:
                    message = (
                        f"directory not read: it holds more than "
                        f"{definitions.MAX_DIRECTORY_ENTRIES} entries"
                    )
                    problems.append(Problem(str(directory), 0, message, ProblemKind.LIMIT))
                    continue
                for name in names:
                    path = directory / name
                    if definitions.printable_path(name) != name:
                        message = "file name is not valid UTF-8; not read"
                        problems.append(Problem(definitions.printable_path(path), 0, message))
                        continue
                    if name in effective:
                        masked.append(path)
                    else:
                        effective[name] = path
                        rank[name] = self.dirs.index(directory)

            files: list[Path] = []
            follows_links = False
            for path in effective.values():
                if path.name in links[path.parent]:
                    if _is_mask_at(fds[path.parent], path.name):
                        masked.append(path)
                        continue
                    follows_links = True
                files.append(path)
            listing = _Listing(problems, effective, masked, files, follows_links, rank)
            return self._assemble(listing, lambda path: self._parse(path, fds[path.parent]))
        finally:
            for dir_fd in fds.values():
                os.close(dir_fd)

    def _assemble(self, listing: _Listing, parse: Callable[[Path], ParsedFile]) -> _State:
        """The state from a listing, each file's content from `parse`."""
        parsed_files: list[ParsedFile] = []
        total_devices = total_bytes = 0
        cache = self._cache
        for path in listing.files:
            parsed = parse(path)
            # Bounds on the whole load: what a file adds beyond them is not loaded, so
            # a directory of many files cannot cost more than one of the bounds allows.
            cached = cache.get(path)
            size = cached[0][2] if cached is not None else 0
            devices = len(parsed.definitions)
            if (
                total_devices + devices > definitions.MAX_DEVICES_TOTAL
                or total_bytes + size > definitions.MAX_TOTAL_SIZE
            ):
                parsed = _unusable(
                    str(path),
                    f"not loaded: the definitions loaded before it reach the limit of "
                    f"{definitions.MAX_DEVICES_TOTAL} devices or "
                    f"{definitions.MAX_TOTAL_SIZE} bytes in all directories",
                    ProblemKind.LIMIT,
                )
            else:
                total_devices += devices
                total_bytes += size
            parsed_files.append(parsed)
        if len(self._cache) > len(listing.files):
            for stale in set(self._cache) - set(listing.files):
                del self._cache[stale]

        merged, everything = _merge(parsed_files)
        problems = [*listing.problems, *merged.problems]
        result = LoadResult(merged.definitions, problems, list(listing.files), list(listing.masked))
        return _State(result, everything, listing)

    def _follow_own_writes(self, written: Sequence[Path]) -> None:
        """After the store wrote or removed the files `written`: when inotify saw nothing
        else change, the state follows those files alone, without a look at every other."""
        state = self._state
        if state is None:
            return
        if self._changes.changed(own=written):
            self._state = None
            return
        listing = state.listing
        effective = dict(listing.effective)
        files = list(listing.files)
        rank = dict(listing.rank)
        for path in written:
            exists = os.path.lexists(path)
            in_effect = effective.get(path.name)
            if exists and in_effect == path:
                continue  # rewritten in place: parsed again below
            if exists and in_effect is None and path.parent in self.dirs:
                # A new file: in its place in precedence order, which both lists keep.
                rank[path.name] = self.dirs.index(path.parent)
                key = (rank[path.name], path.name)
                names = list(effective)
                at = bisect.bisect(names, key, key=lambda name: (rank[name], name))
                names.insert(at, path.name)
                effective[path.name] = path
                effective = {name: effective[name] for name in names}
                at = bisect.bisect(files, key, key=lambda each: (rank[each.name], each.name))
                files.insert(at, path)
            elif not exists and in_effect == path:
                del effective[path.name]
                del rank[path.name]
                files.remove(path)
            else:
                self._state = None  # not what the store's own write does: look again
                return
        changed = set(written)

        def parse(path: Path) -> ParsedFile:
            cached = self._cache.get(path)
            if cached is not None and path not in changed:
                return cached[1]
            return self._parse(path)

        following = _Listing(
            listing.problems, effective, listing.masked, files, listing.follows_links, rank
        )
        self._state = self._assemble(following, parse)

    def remove_stale_temp_files(self) -> list[Path]:
        """Remove what a writer killed half-way left (`.<name>.toml.XXXXXXXX.tmp`) from the
        writable directories; for the daemon's start-up only, when no write of its own can be
        in flight. Returns the files removed; a directory that cannot be used is left alone
        (loading reports it)."""
        removed: list[Path] = []
        for directory in self.dirs:
            if directory in self.read_only:
                continue
            with contextlib.suppress(OSError):
                names = atomic.remove_stale_temp_files(directory, DEFINITION_SUFFIX)
                removed += [directory / name for name in names]
        return removed

    # --- writing --------------------------------------------------------------------------

    def save(self, definition: Definition) -> Definition:
        """Persist `definition` (new, or replacing the one with its UUID); return it as stored.

        Raises `InvalidArgument` (bad names or values), `ReadOnly` (defined in a read-only
        directory), `ConfigInvalid` (the file it belongs in cannot be edited safely: not
        TOML, an invalid entry for the same UUID, ...), `Failed` (I/O error, or the file
        changed while it was being updated).
        """
        wanted = definitions.check_definition(definition)
        uuid = wanted.uuid
        with self._lock:
            state = self._load_state()
            current = state.result.definitions.get(uuid)
            if current is not None:
                if self._in_read_only_dir(current):
                    raise ReadOnly(self._read_only_message(current, "changed", current))
                if definitions.same_device(current, wanted):
                    return current
                path = Path(current.source_file)
                self._rewrite(
                    path, lambda text: definitions.replace_in_text(text, str(path), wanted)
                )
            else:
                # A new definition next to an invalid one of the same UUID would silently
                # replace what the admin meant; the admin must settle that first.
                broken = [
                    p
                    for p in state.result.problems
                    if p.uuid == uuid and p.kind is ProblemKind.INVALID
                ]
                if broken:
                    raise ConfigInvalid(
                        f"{broken[0]}; fix or remove that entry before defining device {uuid}"
                    )
                path = self.path_for_new(uuid)
                in_effect = state.effective.get(path.name, path)
                if in_effect != path:
                    raise ConfigInvalid(
                        f"{in_effect} masks {path}, so device {uuid} cannot be written there"
                    )
                if os.path.islink(path) and not _is_mask(path):
                    # Appending would write wherever the link leads (a link planted there
                    # once led a define into a root-only file elsewhere).
                    raise ConfigInvalid(
                        f"{path} is a symlink that does not mask; mdevd writes a new "
                        f"definition only to a regular file there: remove the link, or define "
                        f"device {uuid} in the file it leads to"
                    )
                if os.path.lexists(path) and not _is_mask(path):
                    self._rewrite(
                        path, lambda text: definitions.append_to_text(text, str(path), wanted)
                    )
                else:
                    self._create(path, definitions.render([wanted]))
            # What was written, read back from that file alone: the state above already said
            # which file is in effect for this UUID (a second full load would stat every file
            # of every directory again, making each define cost O(all definitions)).
            saved = next(
                (d for d in self._parse(path).definitions if d.uuid == uuid),
                None,
            )
            self._follow_own_writes([path])
        if saved is None or not definitions.same_device(saved, wanted):
            raise Failed(f"device {uuid}: written to {path}, but another definition is in effect")
        return saved

    def remove(self, uuid: str) -> None:
        """Remove every definition of `uuid` (the one in effect and any conflicting copies).

        Raises `NotFound` if none exists, `ReadOnly` (before changing anything) if a read-only
        directory defines it too, `ConfigInvalid` or `Failed` as `save` does.
        """
        uuid = validate.uuid(uuid)
        with self._lock:
            state = self._load_state()
            found = state.all_definitions.get(uuid, [])
            if not found:
                raise NotFound(f"device {uuid} is not defined")
            for definition in found:
                if self._in_read_only_dir(definition):
                    raise ReadOnly(self._read_only_message(definition, "removed", found[0]))
            # Every file's edit is computed (and verified) before any is written, so a file
            # mdevd cannot edit stops the removal before it has half happened.
            pending = [
                self._prepare_removal(path, uuid, sum(Path(d.source_file) == path for d in found))
                for path in dict.fromkeys(Path(d.source_file) for d in found)
            ]
            for write in pending:
                self._commit(write)
            self._follow_own_writes([write.path for write in pending])

    def _prepare_removal(self, path: Path, uuid: str, copies: int) -> _PendingWrite:
        def edit(text: str) -> str:
            for _ in range(copies):
                text = definitions.remove_from_text(text, str(path), uuid)
            return text

        # A file left with no devices is deleted, unless deleting it would unmask a file of
        # the same name below it: the emptied file then stays, still masking.
        lower_dirs = self.dirs[self.dirs.index(path.parent) + 1 :]
        masks_lower = any(os.path.lexists(d / path.name) for d in lower_dirs)
        return self._prepare(path, edit, delete_if_empty=not masks_lower)

    def _read_only_message(self, definition: Definition, verb: str, winner: Definition) -> str:
        source = Path(definition.source_file)
        override = self.write_dir / source.name
        if definition is not winner:
            # Removing the copy in effect would silently promote the vendor's definition.
            return (
                f"device {definition.uuid} is also defined in {_where(definition)}, in the "
                f"read-only directory {source.parent}, which would take effect once the "
                f"definition at {_where(winner)} is removed; mask that file first with "
                f"`ln -s /dev/null {override}` (or copy it there without this device)"
            )
        return (
            f"device {definition.uuid} is defined in {_where(definition)}, in the read-only "
            f"directory {source.parent}, and cannot be {verb} through mdevd; to override it, "
            f"copy that file to {override} and edit the copy, or mask it with "
            f"`ln -s /dev/null {override}`"
        )

    def _create(self, path: Path, text: str) -> None:
        try:
            atomic.ensure_directory(path.parent)
            atomic.write_atomic(path, text.encode())
        except OSError as e:
            raise _write_error(path, e) from None

    def _rewrite(
        self,
        path: Path,
        edit: Callable[[str], str],
        *,
        delete_if_empty: bool = False,
    ) -> None:
        """Apply `edit` to the text of `path` and replace the file atomically."""
        self._commit(self._prepare(path, edit, delete_if_empty=delete_if_empty))

    def _prepare(
        self, path: Path, edit: Callable[[str], str], *, delete_if_empty: bool
    ) -> _PendingWrite:
        """Read `path` and compute its new content, writing nothing yet.

        The file's real location is what gets written, so a symlinked file stays a symlink.
        """
        real = Path(os.path.realpath(path))
        signature, content = _read_path(real)
        if isinstance(content, ParsedFile):
            raise ConfigInvalid(f"{content.problems[0]}; mdevd will not rewrite it")
        try:
            text = content.decode("utf-8")
        except UnicodeDecodeError:
            message = f"{path}: not valid UTF-8 text; mdevd will not rewrite it"
            raise ConfigInvalid(message) from None
        new_text = edit(text)
        delete = delete_if_empty and _only_comments(new_text)
        return _PendingWrite(path, real, signature, None if delete else new_text)

    def _commit(self, pending: _PendingWrite) -> None:
        """Write (or delete) a prepared file, unless it changed since it was read."""
        again, _ = _read_path(pending.real)
        if again != pending.signature:
            message = f"{pending.path}: changed on disk while mdevd was updating it; try again"
            raise Failed(message)
        try:
            if pending.new_text is None:
                atomic.remove_durably(pending.real)
            else:
                atomic.write_atomic(pending.real, pending.new_text.encode())
        except OSError as e:
            raise _write_error(pending.path, e) from None


@dataclass(frozen=True, slots=True)
class _PendingWrite:
    path: Path
    real: Path
    signature: _Signature | None
    #: None: delete the file (nothing but comments would be left in it).
    new_text: str | None


def _write_error(path: Path, error: OSError) -> Failed | ReadOnly:
    """What a failed write of a definitions file means to the caller."""
    if isinstance(error, atomic.UntrustedError):
        return Failed(f"{path}: cannot write: {error}")
    if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return ReadOnly(f"{path}: cannot write: {error.strerror}; the directory is read-only")
    return Failed(f"{path}: cannot write: {error.strerror}")


def _only_comments(text: str) -> bool:
    return all(not line.strip() or line.lstrip().startswith("#") for line in text.split("\n"))


def check_files(paths: Sequence[Path]) -> LoadResult:
    """Load the given files alone, as if they were one directory in this order.

    For `mdevd check-config FILE...`: every file is checked, masks and names do not matter,
    and neither do owner and mode (a file can be checked before root installs it); the type
    is checked before the file is opened, and the bounds apply.
    """
    parsed_files: list[ParsedFile] = []
    for path in paths:
        _, content = _read_path(path, trusted=False)
        if isinstance(content, ParsedFile):
            parsed_files.append(content)
        else:
            parsed_files.append(definitions.parse_bytes(content, str(path)))
    merged, _ = _merge(parsed_files)
    return LoadResult(merged.definitions, merged.problems, list(paths), [])
