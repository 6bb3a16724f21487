# SPDX-License-Identifier: LGPL-2.1-or-later
"""Watching directories for changes to the files their users read: inotify (`mdevd.inotify`),
debounced.

What to watch comes from the users, as `Watched` descriptions: a directory, which file names
in it count, whether those files are one level down in subdirectories (and which), and whether
a changed file must first be asked about. The stores describe themselves
(`DefinitionStore.watched`, `MdevctlDirectory.watched`); this module knows no layout.

Each watched directory is watched for files appearing, changing, being renamed or going. A
directory that does not exist (yet) is waited for by watching its nearest existing ancestor,
so creating `/run/mdevd/devices.d` later is seen too; a directory that is removed is waited for
again the same way. Only the names the user counts are a change, so temporary files and
editors' swap files are not.

With subdirectories, the directory itself is watched for subdirectories coming and going, and
each subdirectory it accepts (never a symlink) for its files. A subdirectory that arrives
counts by the files it holds; one that goes always counts (what it held can no longer be
asked about).

A user that writes there itself says how to tell its own writes from others'
(`changed_by_others`): each changed file is asked about once the burst is over, in a worker
thread (it may wait for a write in progress), and only a file someone else changed counts.

Changes come in bursts (an editor's write-rename-chmod, a package installing ten files), so
`on_change` is called once the directories have been quiet for `debounce` seconds, and at the
latest `max_delay` seconds after the first change of a burst. What changed is not passed on:
the caller re-reads everything (the stores skip unchanged files) and compares. An inotify
queue overflow is just another change.

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
    FILES_CHANGE,
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
    SOMETHING_APPEARS,
    Inotify,
)

log = logging.getLogger(__name__)

_FILES_MASK = FILES_CHANGE
_ANCESTOR_MASK = SOMETHING_APPEARS
#: In a directory of subdirectories: subdirectories appearing or going (or itself).
_SUBDIRECTORIES_MASK = (
    IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR
)
_SELF_EVENTS = IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED

#: Looks at the directories before giving up on them settling (each look follows a change).
_ARM_ATTEMPTS = 16


@dataclass(frozen=True, slots=True)
class Watched:
    """A directory whose files a watcher's user reads, and what counts as a change there."""

    directory: Path
    #: Whether a file of this name can change what the user reads.
    files: Callable[[str], bool]
    #: None: the files are in `directory` itself. Else they are one level down, in each
    #: subdirectory (not a symlink) whose name this accepts.
    subdirectories: Callable[[str], bool] | None = None
    #: Whether a file, as it is now, was changed by someone other than the user (asked once a
    #: burst is over, in a worker thread). None: every change counts.
    changed_by_others: Callable[[Path], bool] | None = None
    #: What the log calls it when a change had to be asked about.
    description: str = "the definitions"


@dataclass(frozen=True, slots=True)
class _Watch:
    path: Path
    #: The indexes of the `Watched` whose files are in this directory.
    files_of: frozenset[int] = frozenset()
    #: The indexes of the `Watched` whose subdirectories are in this directory.
    subdirectories_of: frozenset[int] = frozenset()
    #: Names of children that lead to missing watched directories.
    towards: frozenset[str] = frozenset()

    @property
    def mask(self) -> int:
        mask = _FILES_MASK if self.files_of else 0
        if self.subdirectories_of:
            mask |= _SUBDIRECTORIES_MASK
        if self.towards:
            mask |= _ANCESTOR_MASK
        return mask


class DirectoryWatcher:
    """Calls `on_change` (from the loop) after what the `watched` describe changed."""

    def __init__(
        self,
        watched: Sequence[Watched],
        on_change: Callable[[], None],
        *,
        debounce: float = 0.2,
        max_delay: float = 2.0,
    ) -> None:
        self.watched = tuple(
            replace(each, directory=Path(os.path.abspath(each.directory))) for each in watched
        )
        self._on_change = on_change
        self._debounce = debounce
        self._max_delay = max_delay
        self._inotify: Inotify | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: wd -> what it watches: a watched directory, or an ancestor of missing ones.
        self._watches: dict[int, _Watch] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._burst_started = 0.0
        # This burst: a change for certain, and, by the index of their `Watched`, files and
        # arrived subdirectories that are one unless the user itself left them so.
        self._changed = False
        self._to_ask: dict[int, set[Path]] = {}
        self._arrived: dict[int, set[Path]] = {}
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
        found out whether the user made it itself)."""
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
            path: Path, *, files_of: int | None = None, subdirectories_of: int | None = None
        ) -> None:
            watch = wanted.get(path, _Watch(path))
            wanted[path] = replace(
                watch,
                files_of=watch.files_of | _one(files_of),
                subdirectories_of=watch.subdirectories_of | _one(subdirectories_of),
            )

        def wait_for(directory: Path) -> None:
            ancestor, step = waiting_point(directory)
            watch = wanted.get(ancestor, _Watch(ancestor))
            wanted[ancestor] = replace(watch, towards=watch.towards | {step})

        for index, watched in enumerate(self.watched):
            if not watched.directory.is_dir():
                wait_for(watched.directory)
            elif watched.subdirectories is None:
                want(watched.directory, files_of=index)
            else:
                want(watched.directory, subdirectories_of=index)
                for subdirectory in _subdirectories(watched.directory, watched.subdirectories):
                    want(subdirectory, files_of=index)
        return wanted

    def _arm(self) -> None:
        """Watch each existing watched directory (and its subdirectories), and the nearest
        existing ancestor of each missing one. Idempotent: called again whenever a watched
        directory comes or goes.

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
        to_ask: dict[int, set[Path]] = {}
        arrived: dict[int, set[Path]] = {}
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
            for index in watch.files_of:
                watched = self.watched[index]
                if not watched.files(name):
                    continue
                if watched.changed_by_others is None:
                    changed = True
                else:
                    to_ask.setdefault(index, set()).add(watch.path / name)
            for index in watch.subdirectories_of:
                accepts = self.watched[index].subdirectories
                if not mask & IN_ISDIR or accepts is None or not accepts(name):
                    continue
                rearm = True
                if mask & (IN_CREATE | IN_MOVED_TO):
                    arrived.setdefault(index, set()).add(watch.path / name)  # may be the user's
                else:
                    changed = True  # what it held can no longer be asked about
            if name in watch.towards:
                # A missing directory, or a step towards it, appeared; one that arrives whole
                # (renamed into place) may already hold files.
                rearm = changed = True
        if rearm:
            self._arm()
        if changed or to_ask or arrived:
            self._changed = self._changed or changed
            for index, paths in to_ask.items():
                self._to_ask.setdefault(index, set()).update(paths)
            for index, paths in arrived.items():
                self._arrived.setdefault(index, set()).update(paths)
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
        changed, to_ask, arrived = self._changed, self._to_ask, self._arrived
        self._changed, self._to_ask, self._arrived = False, {}, {}
        if changed:
            log.debug("the definitions changed on disk: reloading")
            self._on_change()
        elif to_ask or arrived:
            assert self._loop is not None
            self._checking = self._loop.create_task(
                self._fire_if_changed_by_others(to_ask, arrived)
            )

    async def _fire_if_changed_by_others(
        self, to_ask: dict[int, set[Path]], arrived: dict[int, set[Path]]
    ) -> None:
        changed = await asyncio.to_thread(self._changed_by_others, to_ask, arrived)
        if changed is not None:
            log.debug("%s changed: reloading", changed.description)
            self._on_change()
        else:
            asked = sorted(set(to_ask) | set(arrived))
            described = " and ".join(self.watched[index].description for index in asked)
            log.debug("%s changed by mdevd only: no reload", described)

    def _changed_by_others(
        self, to_ask: dict[int, set[Path]], arrived: dict[int, set[Path]]
    ) -> Watched | None:
        """The first `Watched` with a file someone else changed, if any."""
        for index in sorted(set(to_ask) | set(arrived)):
            watched = self.watched[index]
            candidates = set(to_ask.get(index, ()))
            for subdirectory in arrived.get(index, ()):
                # Gone again: its removal is its own event.
                with contextlib.suppress(OSError), os.scandir(subdirectory) as entries:
                    candidates.update(
                        subdirectory / entry.name for entry in entries if watched.files(entry.name)
                    )
            ask = watched.changed_by_others
            if any(ask is None or ask(path) for path in sorted(candidates)):
                return watched
        return None


def waiting_point(directory: Path) -> tuple[Path, str]:
    """Where to wait for a missing `directory`: its nearest existing ancestor, and the name
    in it that leads there."""
    ancestor = directory.parent
    while not ancestor.is_dir() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    return ancestor, directory.relative_to(ancestor).parts[0]


def _one(index: int | None) -> frozenset[int]:
    return frozenset() if index is None else frozenset({index})


def _subdirectories(directory: Path, accepts: Callable[[str], bool]) -> list[Path]:
    """The subdirectories of `directory` that `accepts` names (not symlinks), sorted."""
    try:
        with os.scandir(directory) as entries:
            return sorted(
                directory / entry.name
                for entry in entries
                if accepts(entry.name) and entry.is_dir(follow_symlinks=False)
            )
    except OSError:
        return []
