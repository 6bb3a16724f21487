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
passes); directories are listed in a worker thread: nothing blocks the event loop.
Transactions and their locking are `mdevd.compat.hooks`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

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


def config_json(device: Definition) -> str:
    """The device's config as scripts read it on stdin (serde_json's compact `to_string`)."""
    document = {
        "mdev_type": device.type_id,
        "start": "auto" if device.autostart else "manual",
        "attrs": [{name: value} for name, value in device.attributes],
    }
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False)


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


def _signature(directories: Sequence[Path]) -> tuple[object, ...]:
    """Changes when a script is added, removed or replaced: the cache's key."""
    entries: list[object] = []
    for directory in directories:
        try:
            st = os.stat(directory)
            entries.append((str(directory), st.st_mtime_ns, st.st_ino))
            for entry in os.scandir(directory):
                with contextlib.suppress(OSError):
                    s = entry.stat()
                    entries.append((entry.path, s.st_ino, s.st_mtime_ns, s.st_size, s.st_mode))
        except OSError:
            entries.append((str(directory), None))
    return tuple(sorted(entries, key=repr))


class CalloutRunner:
    """Finds and runs scripts. Stateless but for the cache of version 2 scripts."""

    def __init__(
        self,
        callout_dirs: Sequence[Path],
        notifier_dirs: Sequence[Path],
        timeout: float = 150.0,
    ) -> None:
        self.callout_dirs = tuple(callout_dirs)
        self.notifier_dirs = tuple(notifier_dirs)
        self.timeout = timeout
        self._versioned: dict[tuple[str, str], Capabilities | None] = {}
        self._versioned_key: tuple[object, ...] = ()

    # ---- finding scripts ---------------------------------------------------------------

    @staticmethod
    def scripts_in(directories: Sequence[Path]) -> list[Path]:
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

    async def callout_scripts(self) -> list[Path]:
        """The callout scripts in the order they are asked (listed off the event loop)."""
        return await asyncio.to_thread(self.scripts_in, self.callout_dirs)

    async def versioned_script(self, device: Definition) -> Capabilities | None:
        """The version 2 script that handles `device`'s parent and type, if one does."""
        key = await asyncio.to_thread(_signature, self.callout_dirs)
        if key != self._versioned_key:
            self._versioned.clear()
            self._versioned_key = key
        target = (device.parent, device.type_id)
        if target in self._versioned:
            return self._versioned[target]
        found: Capabilities | None = None
        stdin = json.dumps(PROVIDES, separators=(",", ":")).encode()
        for path in await self.callout_scripts():
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
        for path in await asyncio.to_thread(self.scripts_in, self.notifier_dirs):
            run = await self.run(path, device, Event.NOTIFY, action, state, stdin)
            if run is not None and run.returncode not in (0, EXIT_NOT_MINE):
                log.debug("device %s: notifier %s answered %s", device.uuid, path, run.returncode)
