# SPDX-License-Identifier: LGPL-2.1-or-later
"""mdevctl's callouts around the engine's operations (the engine's `OperationHooks`).

Every operation on a device, whoever asked for it (a D-Bus client, the `mdevctl` front end,
autostart), is one transaction per mdevctl's protocol:

    pre (config JSON on stdin)  ->  veto?  ->  the operation  ->  post (success|failure)
                                                                ->  notifiers (in the background)

- A `pre` answer other than 0 (2 means "not mine" and asks the next script) vetoes the
  operation: it fails with `Vetoed`, whose message carries the script's path, exit status and
  stderr; nothing was changed, `post` is not run (the script cleaned up after itself, as
  ap-check releases its lock), and the notifiers hear `none`. With `force` (mdevctl's
  `--force`) the operation goes ahead anyway and `post` runs.
- Once `pre` has passed, `post` always runs after the operation, also when it failed, so a
  script's lock (ap-check's `/run/lock/s390apconfig.lock`, owned by the daemon's PID) is
  always released.
- One transaction per device type at a time (while callout scripts are installed): ap-check's
  lock is not re-entrant, and a second `pre` of the same type while the first holds it would
  wait ~100 s and fail. `get
  attributes` runs under the same per-type lock (ap-check takes its lock for it too).
- Defining a running device first asks `get attributes` (mdevctl 1.2's order, so `pre` sees
  the attributes); the answer becomes the definition's attributes.
- A live change goes to a version 2 script that supports the `live` event; with no version 2
  script for the type mdevd writes the attributes itself (mdevctl would refuse).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

from mdevd import validate
from mdevd.compat.callouts import (
    Action,
    CalloutRunner,
    Capabilities,
    Event,
    ScriptRun,
    State,
)
from mdevd.engine import HookAction
from mdevd.errors import Failed, MdevdError, Timeout, Vetoed
from mdevd.mdevctl_format import config_json
from mdevd.model import Attributes, Definition

log = logging.getLogger(__name__)


def _stderr_suffix(run: ScriptRun) -> str:
    text = run.stderr_text.strip()
    return f": {text}" if text else ""


def _refusal(
    device: Definition, action: Action, answer: ScriptRun | Capabilities | None, timeout: float
) -> MdevdError | None:
    """Why `pre`'s answer stops the operation, or None when it may go ahead."""
    what = f"device {device.uuid}: {action.value}"
    if answer is None:
        return None
    if isinstance(answer, Capabilities):
        return Vetoed(
            f"{what} vetoed: callout script {answer.path} handles type {device.type_id} but "
            f"does not support {action.value}"
        )
    if answer.timed_out:
        return Timeout(f"{what}: callout script {answer.path} did not answer within {timeout:g} s")
    if answer.returncode == 0:
        return None
    if answer.returncode is None:
        return Vetoed(f"{what} vetoed by callout script {answer.path} (killed by a signal)")
    return Vetoed(
        f"{what} vetoed by callout script {answer.path} (exit status {answer.returncode})"
        f"{_stderr_suffix(answer)}"
    )


def _log_stderr(
    device: Definition, event: Event, action: Action, answer: ScriptRun | Capabilities | None
) -> None:
    """What mdevctl echoes to its caller's terminal goes to the daemon's log (the journal)."""
    if isinstance(answer, ScriptRun) and answer.stderr.strip():
        log.info(
            "device %s: callout %s (%s %s): %s",
            device.uuid, answer.path.name, action.value, event.value, answer.stderr_text.strip(),
        )  # fmt: skip


def parse_attributes(text: str) -> Attributes | None:
    """A `get attributes` answer: a JSON array of one-key objects; None for no answer.

    Raises ValueError when it is not that (or names an attribute mdevd would not write).
    """
    text = text.strip().rstrip("\0").strip()
    if not text:
        return None
    document = json.loads(text)
    if document is None:
        return None
    if not isinstance(document, list):
        raise ValueError("the attributes are not an array")
    pairs: list[tuple[str, str]] = []
    for item in document:
        if not isinstance(item, dict):
            raise ValueError("an attribute is not an object")
        if not item:
            continue  # ap-check answers `[{}]` for a device without attributes
        if len(item) != 1:
            raise ValueError("an attribute object has more than one field")
        ((name, value),) = item.items()
        if not isinstance(value, str):
            raise ValueError(f"attribute {name!r} has a value that is not a string")
        pairs.append((validate.attribute_name(name), validate.attribute_value(value, name)))
    return tuple(pairs)


class CalloutHooks:
    """Implements `mdevd.engine.OperationHooks` with mdevctl's callout protocol."""

    def __init__(self, runner: CalloutRunner) -> None:
        self.runner = runner
        self._type_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._notifications: set[asyncio.Task[None]] = set()

    @contextlib.asynccontextmanager
    async def transaction(
        self,
        action: HookAction,
        device: Definition,
        *,
        force: bool = False,
        fill_attributes: bool = False,
    ) -> AsyncIterator[Definition]:
        """pre -> (yield the device's config) -> post; see the module documentation."""
        act = Action(action)
        state = State.NONE
        if not await self.runner.callout_scripts():
            # Nothing to ask: no per-type serialization either (different parents proceed in
            # parallel, as the engine promises), only the notifiers are told.
            try:
                yield device
                state = State.SUCCESS
            except BaseException:
                state = State.FAILURE
                raise
            finally:
                self._notify(device, act, state)
            return
        try:
            async with self._type_locks[device.type_id]:
                if fill_attributes:
                    answered = await self._attributes(device, strict=True)
                    if answered is not None:
                        device = replace(device, attributes=answered)
                stdin = config_json(device).encode()
                answer = await self.runner.callout(device, Event.PRE, act, State.NONE, stdin)
                _log_stderr(device, Event.PRE, act, answer)
                refusal = _refusal(device, act, answer, self.runner.timeout)
                if refusal is not None:
                    if not force:
                        raise refusal
                    log.warning("%s; going ahead anyway (force)", refusal.message)
                state = State.FAILURE
                # As mdevctl does, `post` goes to the script that answered `pre`.
                handler = answer.path if isinstance(answer, ScriptRun) else None
                try:
                    yield device
                    state = State.SUCCESS
                finally:
                    await self._post(device, act, state, stdin, handler)
        finally:
            self._notify(device, act, state)

    async def query_attributes(self, device: Definition) -> Attributes | None:
        """What the device's script says its attributes are (mdevctl's `list`); None when no
        script answers or the answer is unusable."""
        async with self._type_locks[device.type_id]:
            try:
                return await self._attributes(device, strict=False)
            except MdevdError:
                return None

    async def live_update(self, device: Definition) -> bool:
        """Let the version 2 script apply `device`'s attributes to the running device.

        False when no version 2 script handles the type (the engine writes them itself).
        """
        versioned = await self.runner.versioned_script(device)
        if versioned is None:
            return False
        what = f"device {device.uuid}: live modify"
        async with self._type_locks[device.type_id]:
            if not versioned.supports(Event.LIVE, Action.MODIFY):
                raise Vetoed(
                    f"{what} vetoed: callout script {versioned.path} handles type "
                    f"{device.type_id} but does not support live changes"
                )
            stdin = config_json(device).encode()
            run = await self.runner.run(
                versioned.path, device, Event.LIVE, Action.MODIFY, State.NONE, stdin
            )
        if run is None or run.returncode != 0:
            self._notify(device, Action.MODIFY, State.FAILURE)
            code = "not executable" if run is None else f"exit status {run.returncode}"
            suffix = _stderr_suffix(run) if run is not None else ""
            raise Vetoed(f"{what} vetoed by callout script {versioned.path} ({code}){suffix}")
        self._notify(device, Action.MODIFY, State.SUCCESS)
        return True

    async def drain(self) -> None:
        """Wait for the notifier scripts started so far."""
        while self._notifications:
            await asyncio.gather(*list(self._notifications), return_exceptions=True)

    # ---- internals ---------------------------------------------------------------------

    async def _post(
        self,
        device: Definition,
        action: Action,
        state: State,
        stdin: bytes,
        handler: Path | None,
    ) -> None:
        try:
            answer: ScriptRun | Capabilities | None
            if handler is not None:
                answer = await self.runner.run(handler, device, Event.POST, action, state, stdin)
            else:
                answer = await self.runner.callout(device, Event.POST, action, state, stdin)
        except Exception:  # post must never turn a done operation into a failed one
            log.exception("device %s: %s post callout failed", device.uuid, action.value)
            return
        _log_stderr(device, Event.POST, action, answer)
        if isinstance(answer, ScriptRun) and answer.returncode != 0:
            log.warning(
                "device %s: %s post callout %s answered %s%s",
                device.uuid, action.value, answer.path, answer.returncode, _stderr_suffix(answer),
            )  # fmt: skip

    async def _attributes(self, device: Definition, *, strict: bool) -> Attributes | None:
        answer = await self.runner.callout(device, Event.GET, Action.ATTRIBUTES, State.NONE, None)
        where = f"device {device.uuid}: get attributes"
        if answer is None:
            return None
        if isinstance(answer, Capabilities):
            if strict:
                raise Failed(f"{where}: callout script {answer.path} does not support it")
            return None
        if answer.returncode != 0:
            if strict:
                raise Failed(
                    f"{where}: callout script {answer.path} failed (exit status "
                    f"{answer.returncode}){_stderr_suffix(answer)}"
                )
            return None
        try:
            return parse_attributes(answer.stdout.decode(errors="replace"))
        except (ValueError, MdevdError) as e:
            if strict:
                message = e.message if isinstance(e, MdevdError) else str(e)
                raise Failed(
                    f"{where}: invalid JSON received from callout script {answer.path}: {message}"
                ) from None
            return None

    def _notify(self, device: Definition, action: Action, state: State) -> None:
        if not self.runner.notifier_dirs:
            return
        task = asyncio.get_running_loop().create_task(self.runner.notify(device, action, state))
        self._notifications.add(task)
        task.add_done_callback(self._notifications.discard)
