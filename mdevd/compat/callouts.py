# SPDX-License-Identifier: LGPL-2.1-or-later
"""mdevctl's callout and notifier scripts: finding them and running them, as mdevctl does.

The protocol (mdevctl's `src/callouts.rs` is the caller side; s390-tools' `ap-check` a script):
- Scripts are every file in the callout directories, the packaged one
  (`/usr/lib/mdevctl/scripts.d/callouts`) first, then the admin's
  (`/etc/mdevctl.d/scripts.d/callouts`), each sorted by name.
- Each is executed directly (never through a shell: a lock file recording the caller's PID,
  as ap-check's does with `getppid()`, must name the daemon) with the arguments
  `-t TYPE -e EVENT -a ACTION -s STATE -u UUID -p PARENT`, the device's config JSON on stdin
  (`{"mdev_type":...,"start":...,"attrs":[...]}`), stdout and stderr captured.
- Exit status 2 means "not my device type": the next script is asked. The first script that
  answers anything else handles the event; a script that cannot be executed or dies of a
  signal is skipped.
- Version 2 scripts say so: `get capabilities` (stdin `{"provides": {...}}`) is answered with
  `{"supports": {"version": 2, "actions": [...], "events": [...]}}`. The first script that
  answers it handles every event of that parent and type alone, and only what it supports.
- Notifier scripts (`.../notifiers`) all run after an operation with event `notify`.

Every run is an asyncio subprocess with a timeout (the process group is killed when it
passes); directories are listed in a worker thread, and listed again only after inotify reports
a change (`ScriptDirectories`): nothing blocks the event loop.
Transactions and their locking are `mdevd.compat.hooks`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import signal
import stat
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from mdevd import defaults
from mdevd.inotify import (
    IN_ATTRIB,
    IN_CLOSE_WRITE,
    IN_CREATE,
    IN_DELETE,
    IN_DELETE_SELF,
    IN_IGNORED,
    IN_MOVE_SELF,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    IN_ONLYDIR,
    Inotify,
)
from mdevd.mdevctl_format import config_json
from mdevd.model import Definition

log = logging.getLogger(__name__)

#: "not my device type, ask the next script"
EXIT_NOT_MINE = 2


class Event(StrEnum):
    PRE = "pre"
    POST = "post"
    GET = "get"
    LIVE = "live"
    NOTIFY = "notify"


class Action(StrEnum):
    START = "start"
    STOP = "stop"
    DEFINE = "define"
    UNDEFINE = "undefine"
    MODIFY = "modify"
    ATTRIBUTES = "attributes"
    CAPABILITIES = "capabilities"


class State(StrEnum):
    NONE = "none"
    SUCCESS = "success"
    FAILURE = "failure"


#: What mdevd offers scripts, as mdevctl 1.3 does (callout protocol version 2).
PROVIDES = {
    "provides": {
        "version": 2,
        "actions": [a.value for a in Action],
        "events": ["pre", "post", "notify", "get", "live"],
    }
}


@dataclass(frozen=True, slots=True)
class ScriptRun:
    """One script's answer to one event."""

    path: Path
    #: None when it died of a signal or was killed at the timeout.
    returncode: int | None
    stdout: bytes
    stderr: bytes
    timed_out: bool = False

    @property
    def stderr_text(self) -> str:
        return self.stderr.decode(errors="replace")


@dataclass(frozen=True, slots=True)
class Capabilities:
    """A version 2 script's `supports` answer."""

    path: Path
    version: int
    actions: frozenset[str]
    events: frozenset[str]

    def supports(self, event: Event, action: Action) -> bool:
        return event.value in self.events and action.value in self.actions


def parse_capabilities(path: Path, stdout: bytes) -> Capabilities | None:
    try:
        document = json.loads(stdout.decode().rstrip("\0\n "))
        supports = document["supports"]
        return Capabilities(
            path,
            int(supports["version"]),
            frozenset(str(a) for a in supports["actions"]),
            frozenset(str(e) for e in supports["events"]),
        )
    except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError):
        return None


#: A watched script directory: a script added, removed, renamed, rewritten or chmod'ed, or the
#: directory itself going.
_SCRIPTS_MASK = (
    IN_CREATE
    | IN_DELETE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_ATTRIB
    | IN_CLOSE_WRITE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
    | IN_ONLYDIR
)
#: The nearest existing ancestor of a missing script directory: something appearing in it.
_ANCESTOR_MASK = IN_CREATE | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR
#: Looks before giving up on directories that keep appearing and going while being watched.
_ARM_ATTEMPTS = 8


def _nearest_existing(directory: Path) -> Path:
    ancestor = directory.parent
    while not ancestor.is_dir() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    return ancestor


def list_scripts(directories: Sequence[Path]) -> list[Path]:
    """Regular files of each directory, sorted by name, directories in order."""
    found: list[Path] = []
    for directory in directories:
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            continue
        for name in names:
            path = directory / name
            with contextlib.suppress(OSError):
                if stat.S_ISREG(os.stat(path).st_mode):
                    found.append(path)
    return found


class ScriptDirectories:
    """The scripts of some directories, listed again only when inotify says something changed.

    Every operation asks for the scripts, and on most hosts the directories are empty or
    missing: listing them each time (a worker-thread hop, a listdir and a stat per entry) was
    the largest single cost of a create on the real kernel. Here each call first reads the
    inotify queue (non-blocking: one read that returns at once), so a change made before the
    call is always seen. A miss arms the watches first and lists second, in a worker thread,
    so a change during the listing is never lost either: it bumps `generation`, and a listing
    is kept only if no event arrived while it was made. Missing directories are waited for
    through their nearest existing ancestor. A queue overflow is an event like any other.

    A script that is a symlink is followed when listed, but a change of its target alone is
    not an event here; the link itself being replaced is. Without inotify (no instances
    left) every call lists, as before.
    """

    def __init__(self, directories: Sequence[Path]) -> None:
        self.directories = tuple(directories)
        #: Bumped on every event: a listing (or anything derived from one, such as a version 2
        #: script's capabilities) made at an older generation may be stale.
        self.generation = 0
        self._listed: tuple[int, list[Path]] | None = None
        self._inotify: Inotify | None = None
        self._wds: set[int] = set()
        self._unwatchable = False
        self._lock = asyncio.Lock()

    async def scripts(self) -> tuple[int, list[Path]]:
        """The scripts and the generation they were listed at."""
        self._catch_up()
        listed = self._listed
        if listed is not None and listed[0] == self.generation:
            return listed[0], list(listed[1])
        async with self._lock:
            self._open()
            self._catch_up()
            generation = self.generation
            found = await asyncio.to_thread(self._arm_and_list)
            self._catch_up()
            if self._inotify is not None:
                self._listed = (generation, found)
            return generation, list(found)

    def close(self) -> None:
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
        self._wds = set()
        self._listed = None

    def _catch_up(self) -> None:
        # IN_IGNORED alone is a watch this class removed when re-arming; a directory that goes
        # is reported first by IN_DELETE_SELF or IN_MOVE_SELF (an unmount by IN_UNMOUNT).
        if self._inotify is not None and any(
            mask != IN_IGNORED for _wd, mask, _name in self._inotify.read()
        ):
            self.generation += 1

    def _open(self) -> None:
        if self._unwatchable or self._inotify is not None:
            return
        try:
            self._inotify = Inotify()
        except OSError as e:
            self._unwatchable = True
            log.warning("cannot watch the callout script directories (%s); listing them "
                        "at every operation", e.strerror)  # fmt: skip
            return
        # The fd is closed with the object (the daemon keeps one for its lifetime).
        weakref.finalize(self, self._inotify.close)

    def _arm_and_list(self) -> list[Path]:
        """In a worker thread: watch each directory (or the way to it), then list.

        A directory created between failing to watch it and watching its ancestor would never
        be reported, so the watches are armed again until what exists is what is watched."""
        inotify = self._inotify
        for _ in range(_ARM_ATTEMPTS):
            if inotify is None:
                break
            wds: set[int] = set()
            direct: set[Path] = set()
            for directory in self.directories:
                try:
                    wds.add(inotify.add_watch(directory, _SCRIPTS_MASK))
                    direct.add(directory)
                    continue
                except OSError as e:
                    if e.errno not in (errno.ENOENT, errno.ENOTDIR):
                        log.debug("cannot watch %s: %s", directory, e.strerror)
                        continue
                with contextlib.suppress(OSError):
                    wds.add(inotify.add_watch(_nearest_existing(directory), _ANCESTOR_MASK))
            for wd in self._wds - wds:
                inotify.rm_watch(wd)
            self._wds = wds
            if direct == {d for d in self.directories if d.is_dir()}:
                break
        return list_scripts(self.directories)


class CalloutRunner:
    """Finds and runs scripts. Stateless but for the cache of version 2 scripts."""

    def __init__(
        self,
        callout_dirs: Sequence[Path],
        notifier_dirs: Sequence[Path],
        timeout: float = defaults.CALLOUT_TIMEOUT,
    ) -> None:
        self.callout_dirs = tuple(callout_dirs)
        self.notifier_dirs = tuple(notifier_dirs)
        self.timeout = timeout
        self._callouts = ScriptDirectories(self.callout_dirs)
        self._notifiers = ScriptDirectories(self.notifier_dirs)
        self._versioned: dict[tuple[str, str], Capabilities | None] = {}
        self._versioned_generation = -1

    # ---- finding scripts ---------------------------------------------------------------

    async def callout_scripts(self) -> list[Path]:
        """The callout scripts in the order they are asked."""
        return (await self._callouts.scripts())[1]

    async def notifier_scripts(self) -> list[Path]:
        return (await self._notifiers.scripts())[1]

    def close(self) -> None:
        self._callouts.close()
        self._notifiers.close()

    async def versioned_script(self, device: Definition) -> Capabilities | None:
        """The version 2 script that handles `device`'s parent and type, if one does."""
        generation, scripts = await self._callouts.scripts()
        if generation != self._versioned_generation:
            self._versioned.clear()
            self._versioned_generation = generation
        target = (device.parent, device.type_id)
        if target in self._versioned:
            return self._versioned[target]
        found: Capabilities | None = None
        stdin = json.dumps(PROVIDES, separators=(",", ":")).encode()
        for path in scripts:
            run = await self.run(path, device, Event.GET, Action.CAPABILITIES, State.NONE, stdin)
            if run is None or run.returncode is None or run.returncode == EXIT_NOT_MINE:
                continue
            found = parse_capabilities(path, run.stdout)
            if found is not None:
                break
        self._versioned[target] = found
        return found

    # ---- running -----------------------------------------------------------------------

    async def run(
        self,
        path: Path,
        device: Definition,
        event: Event,
        action: Action,
        state: State,
        stdin: bytes | None,
    ) -> ScriptRun | None:
        """Run one script; None when it cannot be executed at all (mdevctl skips those)."""
        argv = [
            str(path),
            "-t", device.type_id,
            "-e", event.value,
            "-a", action.value,
            "-s", state.value,
            "-u", device.uuid,
            "-p", device.parent,
        ]  # fmt: skip
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,  # its own process group, so a timeout kills it all
            )
        except OSError as e:
            log.debug("callout %s cannot be executed: %s", path, e)
            return None
        try:
            async with asyncio.timeout(self.timeout):
                stdout, stderr = await process.communicate(stdin or b"")
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = await process.communicate()
            log.warning(
                "device %s: callout %s (%s %s) killed after %g s",
                device.uuid, path, event.value, action.value, self.timeout,
            )  # fmt: skip
            return ScriptRun(path, None, stdout, stderr, timed_out=True)
        returncode = process.returncode
        if returncode is not None and returncode < 0:
            log.warning("device %s: callout %s died of signal %d", device.uuid, path, -returncode)
            returncode = None
        return ScriptRun(path, returncode, stdout, stderr)

    async def callout(
        self,
        device: Definition,
        event: Event,
        action: Action,
        state: State,
        stdin: bytes | None,
    ) -> ScriptRun | Capabilities | None:
        """Ask the script that handles `device` about `event`/`action`.

        Returns its run; the version 2 script's `Capabilities` when that script handles the
        device but does not support the event or action (mdevctl treats that as a failure);
        None when no script handles the device.
        """
        versioned = await self.versioned_script(device)
        if versioned is not None:
            if not versioned.supports(event, action):
                return versioned
            return await self.run(versioned.path, device, event, action, state, stdin)
        for path in await self.callout_scripts():
            run = await self.run(path, device, event, action, state, stdin)
            if run is None or (run.returncode is None and not run.timed_out):
                continue
            if run.returncode == EXIT_NOT_MINE:
                continue
            return run
        return None

    async def notify(self, device: Definition, action: Action, state: State) -> None:
        """Run every notifier script; their answers are only logged."""
        stdin = config_json(device).encode()
        for path in await self.notifier_scripts():
            run = await self.run(path, device, Event.NOTIFY, action, state, stdin)
            if run is not None and run.returncode not in (0, EXIT_NOT_MINE):
                log.debug("device %s: notifier %s answered %s", device.uuid, path, run.returncode)
