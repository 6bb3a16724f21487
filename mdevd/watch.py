# SPDX-License-Identifier: LGPL-2.1-or-later
"""Watching the definition directories for changes: inotify (`mdevd.inotify`), debounced.

Each definition directory is watched for files appearing, changing, being renamed or going.
A directory that does not exist (yet) is waited for by watching its nearest existing ancestor,
so creating `/run/mdevd/devices.d` later is seen too; a directory that is removed is waited for
again the same way. Only what the store reads counts: `*.toml` names that are not hidden, so
the store's own temporary files (`.NAME.XXXX.tmp`) and editors' swap files do not.

In mdevctl compatibility mode mdevctl's directory is watched too, as mdevctl reads it:
`<dir>/<parent>/<uuid>`, UUID-named files in per-parent directories (not `scripts.d`, not
symlinked ones), and the parent directories coming and going. mdevd writes there itself (its
definitions, the mirror of the TOML ones), so each such file is asked about
(`changed_by_others`, run in a worker thread: it may wait for a write in progress) once the
burst is over, and only a file someone else changed counts; a parent directory that arrives
counts by the files it holds, one that goes always counts (mdevd never removes one).

Changes come in bursts (an editor's write-rename-chmod, a package installing ten files), so
`on_change` is called once the directories have been quiet for `debounce` seconds, and at the
latest `max_delay` seconds after the first change of a burst. What changed is not passed on:
the caller re-reads everything (the store skips unchanged files) and compares. An inotify queue
overflow is just another change.

The fd is non-blocking and read from the asyncio loop, like the uevent monitor.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from mdevd.inotify import (
    IN_ATTRIB,
    IN_CLOSE_WRITE,
    IN_CREATE,
    IN_DELETE,
    IN_DELETE_SELF,
    IN_IGNORED,
    IN_ISDIR,
    IN_MOVE_SELF,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    IN_ONLYDIR,
    IN_Q_OVERFLOW,
    Inotify,
)
from mdevd.mdevctl_format import SCRIPTS_DIR_NAME, mdevctl_uuid
from mdevd.store import DEFINITION_SUFFIX

log = logging.getLogger(__name__)

#: In a definition directory: anything that can change what the store reads. IN_ATTRIB: a
#: file made unreadable, or a mask symlink's target; IN_CLOSE_WRITE: an edit in place.
_DIRECTORY_MASK = (
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
#: In an ancestor of a missing directory: something appearing (or the ancestor going).
_ANCESTOR_MASK = IN_CREATE | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR
#: In mdevctl's directory: parent directories appearing or going (or the directory itself).
_MDEVCTL_ROOT_MASK = (
    IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR
)
_SELF_EVENTS = IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED

#: Looks at the directories before giving up on them settling (each look follows a change).
_ARM_ATTEMPTS = 16


@dataclass(frozen=True, slots=True)
class _Watch:
    path: Path
    #: It is a definition directory.
    definitions: bool = False
    #: It is mdevctl's directory: its parent directories come and go.
    mdevctl_root: bool = False
    #: It is a parent directory in mdevctl's: UUID-named files.
    mdevctl_parent: bool = False
    #: Names of children that lead to missing definition directories.
    towards: frozenset[str] = frozenset()

    @property
    def mask(self) -> int:
        mask = _DIRECTORY_MASK if self.definitions or self.mdevctl_parent else 0
        if self.mdevctl_root:
            mask |= _MDEVCTL_ROOT_MASK
        if self.towards:
            mask |= _ANCESTOR_MASK
        return mask


def relevant_name(name: str) -> bool:
    """Whether a file of this name in a definition directory can change what is loaded."""
    return name.endswith(DEFINITION_SUFFIX) and not name.startswith(".")


class DefinitionsWatcher:
    """Calls `on_change` (from the loop) after the definition directories changed."""

    def __init__(
        self,
        directories: Sequence[Path],
        on_change: Callable[[], None],
        *,
        debounce: float = 0.2,
        max_delay: float = 2.0,
        mdevctl_dir: Path | None = None,
        changed_by_others: Callable[[Path], bool] | None = None,
    ) -> None:
        """`mdevctl_dir`: mdevctl's directory, in compatibility mode; `changed_by_others(path)`
        tells a file someone else changed there from one as mdevd left it (default: all are)."""
        self.directories = tuple(Path(os.path.abspath(d)) for d in directories)
        self.mdevctl_dir = Path(os.path.abspath(mdevctl_dir)) if mdevctl_dir else None
        self._on_change = on_change
        self._changed_by_others = changed_by_others or (lambda path: True)
        self._debounce = debounce
        self._max_delay = max_delay
        self._inotify: Inotify | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: wd -> what it watches: a definition directory, or an ancestor of missing ones.
        self._watches: dict[int, _Watch] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._burst_started = 0.0
        # This burst: a change for certain, and mdevctl files and parent directories that are
        # one unless mdevd itself left them so.
        self._changed = False
        self._mdevctl_files: set[Path] = set()
        self._mdevctl_parents: set[Path] = set()
        self._checking: asyncio.Task[None] | None = None

    def open(self) -> None:
        """Start watching (changes queue until `attach`). Call before the first load, so
        that no change can fall between the load and the watch."""
        self._inotify = Inotify()
        self._arm()

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self._inotify is not None, "open() first"
        self._loop = loop
        loop.add_reader(self._inotify.fd, self._readable)

    @property
    def pending(self) -> bool:
        """A change was seen and `on_change` has not been called for it yet (or it is being
        found out whether mdevd made it itself)."""
        return self._timer is not None or (self._checking is not None and not self._checking.done())

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._checking is not None:
            self._checking.cancel()
            self._checking = None
        if self._inotify is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._inotify.fd)
            self._inotify.close()
            self._inotify = None
        self._loop = None

    # ---- watches -------------------------------------------------------------------------

    def _wanted(self) -> dict[Path, _Watch]:
        wanted: dict[Path, _Watch] = {}

        def want(
            path: Path, *, definitions: bool = False, root: bool = False, parent: bool = False
        ) -> None:
            watch = wanted.get(path, _Watch(path))
            wanted[path] = replace(
                watch,
                definitions=watch.definitions or definitions,
                mdevctl_root=watch.mdevctl_root or root,
                mdevctl_parent=watch.mdevctl_parent or parent,
            )

        def wait_for(directory: Path) -> None:
            ancestor = directory.parent
            while not ancestor.is_dir() and ancestor != ancestor.parent:
                ancestor = ancestor.parent
            step = directory.relative_to(ancestor).parts[0]
            watch = wanted.get(ancestor, _Watch(ancestor))
            wanted[ancestor] = replace(watch, towards=watch.towards | {step})

        for directory in self.directories:
            if directory.is_dir():
                want(directory, definitions=True)
            else:
                wait_for(directory)
        if self.mdevctl_dir is not None:
            if self.mdevctl_dir.is_dir():
                want(self.mdevctl_dir, root=True)
                for parent in _mdevctl_parent_dirs(self.mdevctl_dir):
                    want(parent, parent=True)
            else:
                wait_for(self.mdevctl_dir)
        return wanted

    def _arm(self) -> None:
        """Watch each existing definition directory, and the nearest existing ancestor of each
        missing one. Idempotent: called again whenever a watched directory comes or goes.

        A directory can appear between looking for it and watching its parent; its creation
        is then never reported, so the look is repeated until it no longer changes."""
        assert self._inotify is not None
        wanted = self._wanted()
        for _ in range(_ARM_ATTEMPTS):
            watches: dict[int, _Watch] = {}
            for path, watch in wanted.items():
                try:
                    wd = self._inotify.add_watch(path, watch.mask)
                except OSError as exc:
                    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                        continue  # gone since we looked: the next look finds its ancestor
                    log.warning("cannot watch %s for definition changes: %s", path, exc.strerror)
                    continue
                watches[wd] = watch
            for wd in set(self._watches) - set(watches):
                self._inotify.rm_watch(wd)
            self._watches = watches
            again = self._wanted()
            if again == wanted:
                return
            wanted = again
        log.warning("definition directories keep changing; watching what was there last")

    # ---- events --------------------------------------------------------------------------

    def _readable(self) -> None:
        if self._inotify is None:
            return
        changed = False
        rearm = False
        mdevctl_files: set[Path] = set()
        mdevctl_parents: set[Path] = set()
        for wd, mask, name in self._inotify.read():
            if mask & IN_Q_OVERFLOW:
                changed = True
                continue
            watch = self._watches.get(wd)
            if watch is None:
                continue
            if mask & _SELF_EVENTS:
                rearm = changed = True
                continue
            if watch.definitions and relevant_name(name):
                changed = True
            if watch.mdevctl_parent and mdevctl_uuid(name) is not None:
                mdevctl_files.add(watch.path / name)
            if watch.mdevctl_root and mask & IN_ISDIR and name != SCRIPTS_DIR_NAME:
                rearm = True
                if mask & (IN_CREATE | IN_MOVED_TO):
                    mdevctl_parents.add(watch.path / name)  # mdevd makes them too
                else:
                    changed = True  # mdevd never removes a parent directory
            if name in watch.towards:
                # A missing directory, or a step towards it, appeared; one that arrives whole
                # (renamed into place) may already hold files.
                rearm = changed = True
        if rearm:
            self._arm()
        if changed or mdevctl_files or mdevctl_parents:
            self._changed = self._changed or changed
            self._mdevctl_files |= mdevctl_files
            self._mdevctl_parents |= mdevctl_parents
            self._schedule()

    def _schedule(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        if self._timer is None:
            self._burst_started = now
        else:
            self._timer.cancel()
        fire_at = min(now + self._debounce, self._burst_started + self._max_delay)
        self._timer = self._loop.call_at(fire_at, self._fire)

    def _fire(self) -> None:
        self._timer = None
        changed, files, parents = self._changed, self._mdevctl_files, self._mdevctl_parents
        self._changed, self._mdevctl_files, self._mdevctl_parents = False, set(), set()
        if changed:
            log.debug("the definitions changed on disk: reloading")
            self._on_change()
        elif files or parents:
            assert self._loop is not None
            self._checking = self._loop.create_task(self._fire_if_changed_by_others(files, parents))

    async def _fire_if_changed_by_others(self, files: set[Path], parents: set[Path]) -> None:
        if await asyncio.to_thread(self._any_changed_by_others, files, parents):
            log.debug("mdevctl's directory changed: reloading")
            self._on_change()
        else:
            log.debug("mdevctl's directory changed by mdevd only: no reload")

    def _any_changed_by_others(self, files: set[Path], parents: set[Path]) -> bool:
        candidates = set(files)
        for parent in parents:
            with contextlib.suppress(OSError):  # gone again: its removal is its own event
                candidates.update(
                    parent / entry.name
                    for entry in os.scandir(parent)
                    if mdevctl_uuid(entry.name) is not None
                )
        return any(self._changed_by_others(path) for path in sorted(candidates))


def _mdevctl_parent_dirs(root: Path) -> list[Path]:
    """The parent directories mdevctl reads in its directory (not symlinks, not scripts.d)."""
    try:
        entries = list(os.scandir(root))
    except OSError:
        return []
    return sorted(
        root / entry.name
        for entry in entries
        if entry.name != SCRIPTS_DIR_NAME and entry.is_dir(follow_symlinks=False)
    )
