# SPDX-License-Identifier: LGPL-2.1-or-later
"""Autostart: starting a parent's autostart devices once per registration, with retries.

A run starts the devices of one parent during one of its registrations, each in UUID order,
and retries those that failed for a transient reason (the parent busy, its types not listed
yet) after each of the retry delays. A run for a new registration supersedes the earlier
runs of the parent: one waiting to retry gives up, one starting a device finishes that one
first. The caller learns when every device had its first attempt (`first_rounds`); retries
go on in the background.

The machinery is handed plain functions by the engine, which decides what each attempt does
(`Autostart`'s arguments): it knows nothing of definitions, locks or the kernel.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field

from mdevd.engine.ports import RegistrationId
from mdevd.errors import Busy, MdevdError, TypeNotSupported
from mdevd.model import Parent

log = logging.getLogger("mdevd.engine")


class Outcome(enum.Enum):
    """How one attempt at one device went."""

    SKIPPED = "skipped"  # nothing to do (running already, or no longer an autostart device)
    DONE = "done"
    FAILED = "failed"
    RETRY = "retry"
    PARENT_GONE = "parent-gone"


def is_transient(error: MdevdError, parent: Parent | None) -> bool:
    """Whether a failed start may succeed by itself soon: the parent is busy (EBUSY), or it
    is registered (`parent`, as last read) but lists no types yet (a driver still setting
    up). A type the parent's populated list lacks is permanent."""
    if isinstance(error, Busy):
        return True
    if isinstance(error, TypeNotSupported):
        return parent is not None and not parent.types
    return False


@dataclass(eq=False)
class AutostartRun:
    """Autostart of some definitions of one parent during one of its registrations."""

    parent: str
    registration: RegistrationId
    #: Set when the parent registers again: a run waiting to retry gives up at once.
    superseded: asyncio.Event = field(default_factory=asyncio.Event)
    #: Resolved once every device had its first attempt.
    first_round: asyncio.Future[None] | None = None
    task: asyncio.Task[None] | None = None


#: `start(uuid, parent, retry_in)`: one attempt at one device; `retry_in` is the delay before
#: the next attempt should this one fail for a transient reason (None: this is the last).
StartDevice = Callable[[str, str, float | None], Awaitable[Outcome]]


class Autostart:
    """The runs in progress, per parent.

    `wanted(parent)`: the UUIDs of the parent's autostart definitions. `current(parent,
    registration)`: whether that registration is still the parent's (it is present, and did
    not register again). `start`: one attempt at one device. `refresh_parent(parent)`: read
    the parent again (after a round that created devices: their counts changed).
    """

    def __init__(
        self,
        *,
        wanted: Callable[[str], Iterable[str]],
        current: Callable[[str, RegistrationId], bool],
        start: StartDevice,
        refresh_parent: Callable[[str], Awaitable[None]],
        retry_delays: Sequence[float],
    ) -> None:
        self._wanted = wanted
        self._current = current
        self._start = start
        self._refresh_parent = refresh_parent
        self.retry_delays = tuple(retry_delays)
        self._runs: dict[str, list[AutostartRun]] = {}

    def begin(
        self,
        parent: str,
        registration: RegistrationId,
        uuids: Sequence[str] | None = None,
        *,
        supersede: bool = True,
    ) -> AutostartRun:
        """Start a run for `uuids` (default: every autostart definition of the parent) in the
        background. A run for a new registration (`supersede`) first ends the earlier runs of
        the parent: one waiting to retry gives up, one starting a device finishes that one."""
        loop = asyncio.get_running_loop()
        run = AutostartRun(parent, registration, first_round=loop.create_future())
        earlier = list(self._runs.get(parent, ()))
        if supersede:
            for other in earlier:
                other.superseded.set()
        runs = self._runs.setdefault(parent, [])
        runs.append(run)

        def finished(_: object) -> None:
            if run in runs:
                runs.remove(run)

        run.task = loop.create_task(self._run(run, uuids, earlier if supersede else []))
        run.task.add_done_callback(finished)
        return run

    @staticmethod
    async def first_rounds(runs: Sequence[AutostartRun]) -> None:
        """Return once every device of these runs had its first attempt."""
        for run in runs:
            if run.first_round is not None:
                await asyncio.shield(run.first_round)

    def tasks(self) -> list[asyncio.Task[None]]:
        """The runs still going."""
        return [
            run.task
            for runs in self._runs.values()
            for run in runs
            if run.task is not None and not run.task.done()
        ]

    def close(self) -> None:
        for runs in self._runs.values():
            for run in runs:
                if run.task is not None:
                    run.task.cancel()

    def _current_for(self, run: AutostartRun) -> bool:
        return not run.superseded.is_set() and self._current(run.parent, run.registration)

    async def _run(
        self, run: AutostartRun, uuids: Sequence[str] | None, earlier: list[AutostartRun]
    ) -> None:
        """Try each device once, in UUID order; retry the transient failures with backoff."""
        assert run.first_round is not None
        try:
            for other in earlier:
                if other.task is not None:
                    await asyncio.wait([other.task])
            if uuids is None:
                uuids = list(self._wanted(run.parent))
            pending = sorted(uuids)
            delays = self.retry_delays
            for attempt in range(len(delays) + 1):
                if attempt:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delays[attempt - 1]):
                            await run.superseded.wait()
                if not pending or not self._current_for(run):
                    return
                retry_in = delays[attempt] if attempt < len(delays) else None
                retry = []
                created = False
                try:
                    for uuid in pending:
                        if not self._current_for(run):
                            return
                        outcome = await self._start(uuid, run.parent, retry_in)
                        created = created or outcome is not Outcome.SKIPPED
                        if outcome is Outcome.RETRY:
                            retry.append(uuid)
                        elif outcome is Outcome.PARENT_GONE:
                            return
                finally:
                    if created:  # the creates left the parent's counts to this one look
                        with contextlib.suppress(MdevdError):
                            await self._refresh_parent(run.parent)
                pending = retry
                if not run.first_round.done():
                    run.first_round.set_result(None)
        except Exception:  # one parent's autostart must not end the daemon's event handling
            log.exception("autostart on parent %s failed", run.parent)
        finally:
            if not run.first_round.done():
                run.first_round.set_result(None)
