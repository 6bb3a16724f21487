# SPDX-License-Identifier: LGPL-2.1-or-later
"""Whether a stack of directories changed since the last look, known without looking.

The definition store reads every directory before each write (never overwrite a hand edit,
find a UUID defined elsewhere). Reading means a listing and a stat() per file: O(files) per
define, which made a define cost milliseconds with a few hundred files. The kernel already
knows when nothing changed: an inotify instance, read without blocking by whoever asks (the
store's worker thread; never the loop), tells whether anything that counts happened since
`reset`. inotify queues an event before the system call that caused it returns, so a change
finished before `changed` is asked is always seen; one racing with it is seen by the next
question.

What counts, per watched directory: a file the store reads (`files`) appearing, going,
renamed, written, or its mode or owner changed; the directory itself changed, moved or
removed; an inotify queue overflow. A missing directory is waited for at its nearest existing
ancestor, as `mdevd.watch` does. A caller that wrote files itself names them (`own`): its
rename onto them or removal of them is no change.

What inotify cannot see, the caller must not trust this for: a file reached through a
symlink (its target elsewhere changes silently), or an ancestor's mode. The store looks at
everything again while a directory holds a symlink that is not a mask, and the daemon's own
watcher (`mdevd.watch`) has the same view as this.
"""

from __future__ import annotations

import errno
import os
import weakref
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from mdevd.inotify import (
    FILES_CHANGE,
    IN_DELETE,
    IN_DELETE_SELF,
    IN_IGNORED,
    IN_MODIFY,
    IN_MOVE_SELF,
    IN_MOVED_TO,
    IN_Q_OVERFLOW,
    SOMETHING_APPEARS,
    Inotify,
)
from mdevd.watch import waiting_point

#: What the daemon's watcher watches for, and IN_MODIFY: a write in place not closed yet
#: (the look this replaces would have seen it in the file's stat()).
_FILES_MASK = FILES_CHANGE | IN_MODIFY
_SELF_EVENTS = IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED
#: What the caller's own atomic write (a rename onto the file) or removal sends for the file.
_OWN_EVENTS = IN_MOVED_TO | IN_DELETE


@dataclass(frozen=True, slots=True)
class _Watch:
    #: The watched directory (its files count), or None for an ancestor of missing ones.
    directory: Path | None
    #: For an ancestor: the names of its children that lead to a missing directory.
    towards: frozenset[str] = frozenset()


class DirectoryChanges:
    """Asked from one thread at a time (the store's lock); opens its inotify instance at the
    first `reset`. Without inotify (the per-user instance limit reached), `reset` says so and
    the caller looks every time, as it did before this existed."""

    def __init__(self, directories: Sequence[Path], files: Callable[[str], bool]) -> None:
        self.directories = tuple(Path(os.path.abspath(d)) for d in directories)
        self._files = files
        self._inotify: Inotify | None = None
        self._watches: dict[int, _Watch] = {}
        self._usable = True

    def reset(self) -> bool:
        """Forget what happened so far and watch the directories as they are now; call just
        before looking at everything. False: this cannot tell, look every time."""
        if not self._usable:
            return False
        if self._inotify is None:
            try:
                self._inotify = Inotify()
            except OSError:
                self._usable = False
                return False
            # The fd must not outlive a store nobody closed (a program that makes many).
            weakref.finalize(self, self._inotify.close)
        inotify = self._inotify
        inotify.read()
        wanted: dict[Path, _Watch] = {}
        for directory in self.directories:
            if directory.is_dir():
                wanted[directory] = _Watch(directory)
                continue
            ancestor, step = waiting_point(directory)
            previous = wanted.get(ancestor)
            if previous is None or previous.directory is None:
                towards = previous.towards if previous is not None else frozenset()
                wanted[ancestor] = _Watch(None, towards | {step})
            else:
                # Watched for its own files already: its files mask covers IN_CREATE too.
                wanted[ancestor] = _Watch(previous.directory, previous.towards | {step})
        watches: dict[int, _Watch] = {}
        for path, watch in wanted.items():
            mask = _FILES_MASK if watch.directory is not None else SOMETHING_APPEARS
            try:
                wd = inotify.add_watch(path, mask)
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                    # Gone since the look above: what replaces it is unknown.
                    return self._give_up_this_time(watches)
                self._usable = False
                return False
            watches[wd] = watch
        for wd in set(self._watches) - set(watches):
            inotify.rm_watch(wd)
        self._watches = watches
        return True

    def _give_up_this_time(self, watches: dict[int, _Watch]) -> bool:
        self._watches = watches
        return False

    def changed(self, own: Collection[Path] = ()) -> bool:
        """Whether anything that counts happened since `reset` (or the last call), other than
        a rename onto or a removal of the files `own` names. Reads every queued event."""
        if self._inotify is None:
            return True
        own = {Path(os.path.abspath(path)) for path in own}
        changed = False
        for wd, mask, name in self._inotify.read():
            if mask & IN_Q_OVERFLOW:
                changed = True
                continue
            watch = self._watches.get(wd)
            if watch is None:
                continue  # a watch given up at the last reset
            if mask & _SELF_EVENTS or name in watch.towards:
                changed = True
            elif watch.directory is None:
                continue
            elif not name:
                changed = True  # the directory itself: its mode or owner
            elif not self._files(name):
                continue  # temporary files, editors' swap files
            elif not (mask & _OWN_EVENTS and watch.directory / name in own):
                changed = True
        return changed

    def close(self) -> None:
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
        self._watches = {}
