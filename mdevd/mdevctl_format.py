# SPDX-License-Identifier: LGPL-2.1-or-later
"""mdevctl's JSON definitions: read with mdevctl's own acceptance rules, exported in its
`list --defined --dumpjson` shape, and imported into the definition store.

mdevctl keeps one file per device, `/etc/mdevctl.d/<parent>/<uuid>`:

    {"mdev_type": "T", "start": "auto", "attrs": [{"assign_adapter": "5"}, ...]}

What mdevctl (1.x, `MDev::load_from_json`) accepts, and so what is imported:
- the file name parses as a UUID (hyphenated, 32 digits, braced or `urn:uuid:`; any case);
  other files are ignored by mdevctl, and reported here;
- only regular files in directories directly under the root (mdevctl does not follow
  symlinks there); its `scripts.d` directory is not a parent;
- the content is what `mdevd.mdevctl_config` reads (mdevctl's rules for one device's JSON, and
  mdevd's refusal of what mdevctl would accept but cannot be safe: unsafe names, NUL).
Every definition not imported is reported with its reason.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mdevd import defaults, definitions, mdevctl_config
from mdevd.definitions import Problem, ProblemKind, printable_path
from mdevd.errors import ConfigInvalid, MdevdError

# mdevctl's UUIDs and JSON shapes live there (the front end imports only that module); they
# are this module's too, as they were.
from mdevd.mdevctl_shapes import compact_json as compact_json
from mdevd.mdevctl_shapes import config_object as config_object
from mdevd.mdevctl_shapes import listing_object as listing_object
from mdevd.mdevctl_shapes import mdevctl_uuid as mdevctl_uuid
from mdevd.mdevctl_shapes import pretty_json as pretty_json
from mdevd.model import Definition

if TYPE_CHECKING:
    # Only types here: what imports this module for its JSON (the callouts) must not pay for
    # importing the store (nor `atomic`, imported where a directory is read).
    from mdevd.mdevctl_shapes import MdevctlDevice
    from mdevd.store import DefinitionStore

DEFAULT_MDEVCTL_DIR = defaults.MDEVCTL_DIR
#: mdevctl's callout and notifier scripts live here, not definitions.
SCRIPTS_DIR_NAME = "scripts.d"


def parse_mdevctl_json(text: str, uuid: str, parent: str, source: str = "") -> Definition:
    """The definition mdevctl would load from `text` for `uuid` under `parent`, read from
    `source` (`mdevd.mdevctl_config.read_config`, as a `Definition`).

    Raises `ConfigInvalid` saying whether mdevctl itself rejects it, or mdevctl accepts it but
    mdevd refuses it (an unsafe name), and why.
    """
    config = mdevctl_config.read_config(text, uuid, parent)
    return Definition(
        config.uuid, config.parent, config.type_id, config.autostart, config.attributes, source, 0
    )


# --- export -------------------------------------------------------------------------------
# The one place mdevctl's JSON is built: the definition files, `--dumpjson`, and the callouts'
# stdin, whether the daemon writes them or the `mdevctl` front end prints them.


def to_mdevctl_json(definition: Definition) -> str:
    """One definition as mdevctl writes its file `/etc/mdevctl.d/<parent>/<uuid>`."""
    return pretty_json(config_object(definition))


def config_json(device: MdevctlDevice) -> str:
    """The device's config as callout scripts read it on stdin."""
    return compact_json(config_object(device))


def dumpjson(defined: Iterable[Definition]) -> str:
    """`mdevctl list --defined --dumpjson` for these definitions (without the final newline)."""
    return pretty_json(listing_object(defined))


# --- reading a tree -----------------------------------------------------------------------


@dataclass(slots=True)
class MdevctlTree:
    """Everything under an mdevctl config directory."""

    #: Every definition mdevctl (and mdevd) accepts, in mdevctl's order (parent, then UUID).
    #: A UUID may appear under two parents: mdevctl allows it, mdevd does not.
    definitions: list[Definition] = field(default_factory=list)
    #: Each file mdevctl rejects or ignores, or mdevd refuses, with the reason.
    problems: list[Problem] = field(default_factory=list)


#: A file's (inode, size, mtime, ctime) and what reading it gave.
ReadCache = dict[str, tuple[tuple[int, int, int, int], "Definition | Problem | None"]]


def read_mdevctl_tree(
    root: Path = DEFAULT_MDEVCTL_DIR,
    *,
    verb: str = "not imported",
    cache: ReadCache | None = None,
) -> MdevctlTree:
    """Read `root/<parent>/<uuid>` files the way mdevctl's `list --defined` does.

    `verb` starts each problem's reason: what happens to the file ("not imported" by
    `import-mdevctl`, "ignored" by the daemon's live mdevctl store). With `cache` (kept by the
    caller between reads), a file whose inode, size and times are unchanged is not read again.
    Raises `ConfigInvalid` if `root` itself cannot be read. The directory, each parent
    directory and each file must be root's alone (owned by root, writable by no one else);
    one that is not is reported and skipped, with everything in it.
    """
    from mdevd import atomic

    tree = MdevctlTree()
    seen: set[str] = set()
    try:
        root_fd = atomic.open_directory(root)
    except atomic.UntrustedError as e:
        tree.problems.append(Problem(str(root), 0, _untrusted_message(e), ProblemKind.UNREADABLE))
        return tree
    except OSError as e:
        raise ConfigInvalid(f"{root}: cannot read mdevctl's directory: {e.strerror}") from None
    try:
        parents = _entries(root, tree)
        if parents is None:
            return tree
        for parent_entry in parents:
            if parent_entry.name == SCRIPTS_DIR_NAME:
                continue
            if parent_entry.is_symlink():
                tree.problems.append(
                    Problem(
                        printable_path(parent_entry.path),
                        0,
                        "mdevctl ignores symlinked parent directories",
                    )
                )
                continue
            if not parent_entry.is_dir(follow_symlinks=False):
                continue
            _read_parent(root_fd, parent_entry, tree, verb, cache, seen)
    finally:
        os.close(root_fd)
    if cache is not None:
        for stale in set(cache) - seen:
            del cache[stale]
    return tree


def _untrusted_message(error: OSError) -> str:
    reason = str(error.args[0]).split(": ", 2)[-1]
    return f"directory not read: {reason}; it must be owned by root and writable by no one else"


def _entries(directory: Path | str, tree: MdevctlTree) -> list[os.DirEntry[str]] | None:
    """The entries of `directory` by name; None (and a problem) if it holds too many."""
    found: list[os.DirEntry[str]] = []
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if len(found) >= definitions.MAX_DIRECTORY_ENTRIES:
                    message = (
                        f"directory not read: it holds more than "
                        f"{definitions.MAX_DIRECTORY_ENTRIES} entries"
                    )
                    tree.problems.append(
                        Problem(printable_path(directory), 0, message, ProblemKind.LIMIT)
                    )
                    return None
                found.append(entry)
    except OSError as e:
        message = f"cannot read directory: {e.strerror}"
        tree.problems.append(Problem(printable_path(directory), 0, message, ProblemKind.UNREADABLE))
        return None
    return sorted(found, key=lambda e: e.name)


def _read_parent(
    root_fd: int,
    parent_entry: os.DirEntry[str],
    tree: MdevctlTree,
    verb: str,
    cache: ReadCache | None,
    seen: set[str],
) -> None:
    from mdevd import atomic

    where = printable_path(parent_entry.path)
    try:
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        parent_fd = os.open(parent_entry.name, flags, dir_fd=root_fd)
    except OSError as e:
        message = f"cannot read directory: {e.strerror}"
        tree.problems.append(Problem(where, 0, message, ProblemKind.UNREADABLE))
        return
    try:
        untrusted = atomic.untrusted_reason(os.fstat(parent_fd))
        if untrusted is not None:
            error = atomic.UntrustedError(f"{where}: not trusted: {untrusted}")
            tree.problems.append(
                Problem(where, 0, _untrusted_message(error), ProblemKind.UNREADABLE)
            )
            return
        children = _entries(parent_entry.path, tree)
        if children is None:
            return
        found: list[Definition] = []
        for child in children:
            result = _read_cached(child, parent_fd, parent_entry.name, verb, cache, seen)
            if isinstance(result, Definition):
                if len(tree.definitions) + len(found) >= definitions.MAX_DEVICES_TOTAL:
                    message = (
                        f"{verb}: the definitions read before it reach the limit of "
                        f"{definitions.MAX_DEVICES_TOTAL} devices"
                    )
                    result = Problem(result.source_file, 0, message, ProblemKind.LIMIT)
                else:
                    found.append(result)
                    continue
            if result is not None:
                tree.problems.append(result)
        tree.definitions.extend(sorted(found, key=lambda d: d.uuid))
    finally:
        os.close(parent_fd)


def _read_cached(
    child: os.DirEntry[str],
    parent_fd: int,
    parent: str,
    verb: str,
    cache: ReadCache | None,
    seen: set[str],
) -> Definition | Problem | None:
    if cache is None or child.is_symlink() or not child.is_file(follow_symlinks=False):
        return _read_child(child, parent_fd, parent, verb)
    try:
        st = child.stat(follow_symlinks=False)
    except OSError:
        return _read_child(child, parent_fd, parent, verb)
    signature = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    seen.add(child.path)
    cached = cache.get(child.path)
    if cached is not None and cached[0] == signature:
        return cached[1]
    result = _read_child(child, parent_fd, parent, verb)
    cache[child.path] = (signature, result)
    return result


def _read_bounded(child: os.DirEntry[str], parent_fd: int) -> bytes | str:
    """The content of a regular file the directory entry says is one, or why not.

    Its type is known before it is opened (from the entry); it is opened relative to its
    directory without following a link, must still be that file, root's alone, and within
    MAX_MDEVCTL_FILE_SIZE.
    """
    from mdevd import atomic

    limit = definitions.MAX_MDEVCTL_FILE_SIZE
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(child.name, flags, dir_fd=parent_fd)
    except OSError as e:
        return f"cannot read: {e.strerror}"
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_ino != child.inode():
            return "replaced while mdevd was reading it; not read"
        untrusted = atomic.untrusted_reason(st)
        if untrusted is not None:
            return f"not read: {untrusted}; definitions must be root's alone"
        if st.st_size > limit:
            return f"larger than {limit} bytes; not read"
        data = os.read(fd, limit + 1)
        if len(data) > limit:
            return f"larger than {limit} bytes; not read"
        return data
    except OSError as e:
        return f"cannot read: {e.strerror}"
    finally:
        os.close(fd)


def _read_child(
    child: os.DirEntry[str], parent_fd: int, parent: str, verb: str
) -> Definition | Problem | None:
    if child.is_symlink():
        return Problem(printable_path(child.path), 0, f"{verb}: mdevctl ignores symlinks")
    if not child.is_file(follow_symlinks=False):
        return None
    uuid = mdevctl_uuid(child.name)
    if uuid is None:
        return Problem(
            printable_path(child.path),
            0,
            f"{verb}: mdevctl ignores it (the name is not a UUID)",
        )
    data = _read_bounded(child, parent_fd)
    if isinstance(data, str):
        return Problem(printable_path(child.path), 0, data, ProblemKind.UNREADABLE, uuid)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return Problem(printable_path(child.path), 0, f"{verb}: mdevctl rejects it: not UTF-8 text")
    try:
        return parse_mdevctl_json(text, uuid, parent, child.path)
    except MdevdError as e:
        return Problem(printable_path(child.path), 0, f"{verb}: {e.message}", uuid=uuid)


# --- importing ----------------------------------------------------------------------------


@dataclass(slots=True)
class ImportReport:
    #: (mdevctl definition, the file it was written to, or would be with --dry-run).
    imported: list[tuple[Definition, Path]] = field(default_factory=list)
    #: mdevctl definitions the store already holds identically (a repeated import).
    unchanged: list[Definition] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def import_tree(tree: MdevctlTree, store: DefinitionStore, *, dry_run: bool) -> ImportReport:
    """Write each of the tree's definitions into the store, unless the store already has it.

    Never overwrites: a UUID the store defines differently is reported and left alone. With
    `dry_run`, nothing is written and `imported` says where each file would go.
    """
    report = ImportReport(problems=list(tree.problems))
    existing = store.load().definitions
    first: dict[str, Definition] = {}
    for definition in tree.definitions:
        uuid = definition.uuid
        earlier = first.setdefault(uuid, definition)
        if earlier is not definition:
            report.problems.append(
                Problem(
                    definition.source_file,
                    0,
                    f"not imported: device {uuid} is also defined under parent "
                    f"{earlier.parent} ({earlier.source_file}); mdevd allows one definition per "
                    "UUID (the kernel allows one device per UUID), so only that one is imported",
                    ProblemKind.CONFLICT,
                    uuid,
                )
            )
            continue
        current = existing.get(uuid)
        if current is not None:
            if definitions.same_device(current, definition):
                report.unchanged.append(definition)
            else:
                where = f"{current.source_file}:{current.source_line}"
                report.problems.append(
                    Problem(
                        definition.source_file,
                        0,
                        f"not imported: device {uuid} is already defined differently at "
                        f"{where}; mdevd leaves that definition alone",
                        ProblemKind.CONFLICT,
                        uuid,
                    )
                )
            continue
        if dry_run:
            report.imported.append((definition, store.path_for_new(uuid)))
            continue
        try:
            saved = store.save(definition)
        except MdevdError as e:
            report.problems.append(
                Problem(definition.source_file, 0, f"not imported: {e.message}", uuid=uuid)
            )
            continue
        report.imported.append((definition, Path(saved.source_file)))
    return report
