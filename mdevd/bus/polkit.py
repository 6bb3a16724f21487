# SPDX-License-Identifier: LGPL-2.1-or-later
"""Asking polkitd: one `CheckAuthorization` for a caller, asynchronous and bounded in time.

The subject is always `system-bus-name` with the caller's unique name: polkitd resolves the
uid, pid and start time of the connection itself, so nothing the caller controls (and no pid
that could be recycled) enters the decision. The event loop never waits on polkitd: the call is
an awaited D-Bus message with a timeout, and on timeout it is cancelled in polkitd as well
(`CancelCheckAuthorization`), so an authentication dialog does not outlive the request.

The checks are also bounded in number, because they all travel on the daemon's one bus
connection and the system bus lets a connection have only 128 calls awaiting replies
(`max_replies_per_connection`): past that, the bus answers the daemon's own calls with
LimitsExceeded. `FairLimiter` keeps at most `MAX_CHECKS_IN_FLIGHT` checks waiting for polkitd,
at most `MAX_CHECKS_IN_FLIGHT_PER_CALLER` of them one caller's, and serves the callers that
wait in turn, so one caller's flood waits for itself and not others for it. A caller with
`MAX_CHECKS_PER_CALLER` checks in flight or waiting is refused the next one at once.

polkitd authorizes uid 0 for every action it knows without consulting any rule, so a check for
root needs no round trip per call: `allows_root` asks once per action (about the daemon's own
connection, which is root's) and remembers the answer until polkitd says its actions changed,
polkitd itself comes or goes, or a few seconds have passed. A polkitd that does not know the
action still denies root.

This module only asks and reports; what an answer means for a method is `mdevd.bus.auth`'s
decision.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from collections import deque
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from mdevd.bus import busdaemon, names

log = logging.getLogger(__name__)

#: How long polkitd may take to decide without asking anyone. It answers in about a
#: millisecond; the bound sits above polkit's own 15 s limit for a runaway rule script and
#: below the 25 s a libdbus or GDBus client waits for our reply by default.
CHECK_TIMEOUT: Final = 20.0
#: How long a person may take to answer an authentication dialog (`auth.interactive`).
INTERACTIVE_CHECK_TIMEOUT: Final = 300.0
#: How long a cancellation after a timeout may take; it is best effort.
CANCEL_TIMEOUT: Final = 5.0

#: Checks waiting for polkitd at once. They travel on the daemon's one bus connection, where
#: the system bus allows 128 calls awaiting replies; the rest stays free for the daemon's other
#: calls (uid lookups, cancellations, match rules).
MAX_CHECKS_IN_FLIGHT: Final = 32
#: ...of which one caller's. A caller whose checks are slow (dialogs left open for minutes)
#: then holds only a few, and at least eight callers always have checks in progress.
MAX_CHECKS_IN_FLIGHT_PER_CALLER: Final = 4
#: One caller's checks in flight and waiting together; the next is refused without waiting.
MAX_CHECKS_PER_CALLER: Final = 64
#: Cancellations of timed-out checks in flight; beyond that they are skipped (best effort).
MAX_CANCELS_IN_FLIGHT: Final = 8

#: How long polkitd's answer about root is relied on without asking again. polkitd announces
#: changes to its actions (`Changed`), but a bus policy that admits only mdevd's interfaces to
#: the daemon keeps that signal from it; this bounds how long a removed .policy file goes
#: unnoticed, at the cost of one round trip per action and period for all of root's calls.
ROOT_ANSWER_LIFETIME: Final = 5.0

#: CheckAuthorization flag: polkitd may ask an authentication agent.
ALLOW_USER_INTERACTION: Final = 0x1

#: Errors from the bus daemon: nobody owns the polkit name and none can be activated.
_ABSENT_ERRORS: Final = frozenset(
    {names.DBUS_ERROR_SERVICE_UNKNOWN, names.DBUS_ERROR_NAME_HAS_NO_OWNER}
)


class PolkitUnavailable(Exception):
    """polkitd is not on the bus (no owner, not activatable)."""


class PolkitFailure(Exception):
    """polkitd did not give an answer: an error reply, a timeout or a malformed reply."""


class CallerOverloaded(Exception):
    """The caller already has as many checks in flight and waiting as it may have."""

    def __init__(self, caller: Hashable, pending: int) -> None:
        super().__init__(f"caller {caller} already has {pending} checks in flight or waiting")
        self.caller = caller
        self.pending = pending


@dataclass(slots=True)
class _Lane:
    """One caller's share of a FairLimiter."""

    in_flight: int = 0
    waiting: deque[asyncio.Future[None]] = field(default_factory=deque)
    #: Whether the caller is in the limiter's round-robin of callers to serve.
    queued: bool = False


class FairLimiter:
    """Turns to do something at most `capacity` at a time, shared fairly between callers.

    A caller holds at most `per_caller_in_flight` turns at once and has at most `per_caller`
    turns held and waiting together: asking for one more raises `CallerOverloaded` at once.
    Callers that wait are served round-robin, one turn each per round, so a caller that asks
    for many turns waits behind its own requests and delays others by at most one turn each.
    Each caller's own requests are served in order. Nothing is kept of a caller with no turn
    held or waiting.
    """

    def __init__(
        self,
        capacity: int = MAX_CHECKS_IN_FLIGHT,
        per_caller_in_flight: int = MAX_CHECKS_IN_FLIGHT_PER_CALLER,
        per_caller: int = MAX_CHECKS_PER_CALLER,
    ) -> None:
        if not 0 < per_caller_in_flight <= min(capacity, per_caller):
            raise ValueError("per_caller_in_flight must be positive, within capacity and cap")
        self.capacity = capacity
        self.per_caller_in_flight = per_caller_in_flight
        self.per_caller = per_caller
        self._in_flight = 0
        self._lanes: dict[Hashable, _Lane] = {}
        #: Callers that wait and may take a turn now, in the order they get it.
        self._round: deque[Hashable] = deque()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def pending(self, caller: Hashable) -> int:
        """How many turns `caller` holds or waits for."""
        lane = self._lanes.get(caller)
        return 0 if lane is None else lane.in_flight + len(lane.waiting)

    def callers(self) -> int:
        """How many callers hold or wait for a turn (what the limiter remembers)."""
        return len(self._lanes)

    async def acquire(self, caller: Hashable) -> None:
        """Wait for a turn of `caller`'s; `CallerOverloaded` if it has too many already.

        Every successful `acquire` must be followed by one `release(caller)`.
        """
        lane = self._lanes.get(caller)
        if lane is None:
            lane = self._lanes[caller] = _Lane()
        pending = lane.in_flight + len(lane.waiting)
        if pending >= self.per_caller:
            self._forget_if_idle(caller, lane)
            raise CallerOverloaded(caller, pending)
        # With a turn free and nobody of this caller waiting, nobody else waits either: every
        # release hands its turn to a waiting caller before it could stay free.
        if (
            not lane.waiting
            and lane.in_flight < self.per_caller_in_flight
            and self._in_flight < self.capacity
        ):
            self._take(lane)
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        lane.waiting.append(turn)
        self._enqueue(caller, lane)
        self._serve()
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                # Granted just as the wait was cancelled: hand the turn on.
                self.release(caller)
            else:
                with contextlib.suppress(ValueError):  # already dropped by _serve
                    lane.waiting.remove(turn)
                self._forget_if_idle(caller, lane)
            raise

    def release(self, caller: Hashable) -> None:
        """Give back one of `caller`'s turns."""
        lane = self._lanes[caller]
        lane.in_flight -= 1
        self._in_flight -= 1
        self._enqueue(caller, lane)
        self._serve()
        self._forget_if_idle(caller, lane)

    def _take(self, lane: _Lane) -> None:
        lane.in_flight += 1
        self._in_flight += 1

    def _enqueue(self, caller: Hashable, lane: _Lane) -> None:
        """Put `caller` at the end of the round if it waits and may take a turn."""
        if not lane.queued and lane.waiting and lane.in_flight < self.per_caller_in_flight:
            lane.queued = True
            self._round.append(caller)

    def _serve(self) -> None:
        while self._in_flight < self.capacity and self._round:
            caller = self._round.popleft()
            lane = self._lanes[caller]
            lane.queued = False
            while lane.waiting and lane.waiting[0].done():  # cancelled while it waited
                lane.waiting.popleft()
            if not lane.waiting:
                self._forget_if_idle(caller, lane)
                continue
            self._take(lane)
            lane.waiting.popleft().set_result(None)
            self._enqueue(caller, lane)

    def _forget_if_idle(self, caller: Hashable, lane: _Lane) -> None:
        if not lane.in_flight and not lane.waiting and not lane.queued:
            self._lanes.pop(caller, None)


@dataclass(frozen=True, slots=True)
class PolkitResult:
    """polkitd's `(is_authorized, is_challenge, details)`."""

    is_authorized: bool
    is_challenge: bool
    details: Mapping[str, str] = field(default_factory=dict)

    @property
    def dismissed(self) -> bool:
        """The user closed the authentication dialog instead of authenticating."""
        return self.details.get("polkit.dismissed") == "true"


class PolkitAuthority:
    """The `org.freedesktop.PolicyKit1.Authority` of the bus `bus` is connected to."""

    def __init__(
        self,
        bus: MessageBus,
        timeout: float = CHECK_TIMEOUT,
        interactive_timeout: float = INTERACTIVE_CHECK_TIMEOUT,
        limiter: FairLimiter | None = None,
    ) -> None:
        self.bus = bus
        self.timeout = timeout
        self.interactive_timeout = interactive_timeout
        self.limiter = limiter if limiter is not None else FairLimiter()
        # polkitd wants cancellation ids unique per calling connection.
        self._cancellation_ids = (f"mdevd-{n}" for n in itertools.count(1))
        # Cancellations in flight; the loop itself keeps only weak references to tasks.
        self._cancels: set[asyncio.Task[None]] = set()
        # Actions polkitd allows root -> until when (loop time) that answer is relied on.
        self._root_allowed: dict[str, float] = {}
        self._root_checks: dict[str, asyncio.Task[bool]] = {}
        #: Counts polkitd's announced changes, so that an answer that crossed one is not kept.
        self._generation = 0
        self._watching: asyncio.Task[bool] | None = None
        self._handler_added = False

    async def check(
        self, sender: str, action_id: str, interactive: bool, caller: Hashable | None = None
    ) -> PolkitResult:
        """Is the connection `sender` authorized for `action_id`?

        `interactive` lets polkitd ask an authentication agent. `caller` is whom the check
        counts against in the limiter (the sender's uid, say; the sender itself by default).
        Raises `CallerOverloaded` when that caller has too many checks already,
        `PolkitUnavailable` when polkitd is not on the bus and `PolkitFailure` when it gives no
        usable answer (or the check waited for its turn longer than a check may take).
        """
        timeout = self.interactive_timeout if interactive else self.timeout
        key = sender if caller is None else caller
        try:
            async with asyncio.timeout(timeout):
                await self.limiter.acquire(key)
        except TimeoutError:
            raise PolkitFailure(
                f"the check of {action_id} for {sender} waited {timeout:g} s for its turn"
            ) from None
        try:
            return await self._ask(sender, action_id, interactive)
        finally:
            self.limiter.release(key)

    async def allows_root(self, action_id: str) -> bool:
        """Whether polkitd would authorize any uid-0 caller for `action_id` right now.

        polkitd authorizes uid 0 for every action it has registered, before any rule, so the
        answer does not depend on the caller and is asked once, about the daemon's own
        connection, and then remembered until polkitd announces a change (`Changed`), its name
        changes owner, or `ROOT_ANSWER_LIFETIME` has passed. Without polkitd on the bus the
        answer is yes: only root may act then (see `mdevd.bus.auth`). False when polkitd fails
        to answer or does not know the action: the caller's own check then gets the real
        answer.
        """
        # The daemon's own connection stands for uid 0 only when the daemon runs as root.
        if os.geteuid() != 0 or not self.bus.unique_name:
            return False
        if not await self._watch_changes():
            return False
        if self._root_allowed.get(action_id, 0.0) > asyncio.get_running_loop().time():
            return True
        task = self._root_checks.get(action_id)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._ask_for_root(action_id))
            self._root_checks[action_id] = task
            task.add_done_callback(lambda _: self._root_checks.pop(action_id, None))
        return await asyncio.shield(task)

    async def _ask_for_root(self, action_id: str) -> bool:
        generation = self._generation
        try:
            result = await self._ask(self.bus.unique_name or "", action_id, False)
            allowed = result.is_authorized
        except PolkitUnavailable:
            allowed = True
        except PolkitFailure as failure:
            log.debug("asking polkit about root and %s: %s", action_id, failure)
            return False
        if allowed and generation == self._generation:
            expiry = asyncio.get_running_loop().time() + ROOT_ANSWER_LIFETIME
            self._root_allowed[action_id] = expiry
        return allowed

    async def _watch_changes(self) -> bool:
        """Subscribe to polkitd's announcements (once); whether that worked."""
        if self._watching is None or (self._watching.done() and not self._watching.result()):
            self._watching = asyncio.get_running_loop().create_task(self._subscribe())
        return await asyncio.shield(self._watching)

    async def _subscribe(self) -> bool:
        if not self._handler_added:
            self.bus.add_message_handler(self._on_message)
            self._handler_added = True
        rules = (
            f"type='signal',sender='{names.DBUS_BUS_NAME}',interface='{names.DBUS_INTERFACE}',"
            f"member='NameOwnerChanged',arg0='{names.POLKIT_BUS_NAME}'",
            f"type='signal',sender='{names.POLKIT_BUS_NAME}',"
            f"interface='{names.POLKIT_INTERFACE}',member='Changed'",
        )
        for rule in rules:
            failure = await busdaemon.add_match(self.bus, rule, self.timeout)
            if failure is not None:
                log.warning("cannot follow polkit's changes, asking it for root too: %s", failure)
                return False
        return True

    def _on_message(self, message: Message) -> None:
        # Returns None, never True: the message goes on to whoever else handles it.
        if message.message_type is not MessageType.SIGNAL:
            return
        polkit_moved = (
            message.member == "NameOwnerChanged"
            and message.sender == names.DBUS_BUS_NAME
            and bool(message.body)
            and message.body[0] == names.POLKIT_BUS_NAME
        )
        polkit_changed = message.member == "Changed" and message.interface == names.POLKIT_INTERFACE
        if polkit_moved or polkit_changed:
            # Anyone may send us a Changed signal; all it can do is cost a round trip.
            self._generation += 1
            self._root_allowed.clear()

    async def _ask(self, sender: str, action_id: str, interactive: bool) -> PolkitResult:
        cancellation_id = next(self._cancellation_ids)
        timeout = self.interactive_timeout if interactive else self.timeout
        query = Message(
            destination=names.POLKIT_BUS_NAME,
            path=names.POLKIT_PATH,
            interface=names.POLKIT_INTERFACE,
            member="CheckAuthorization",
            signature="(sa{sv})sa{ss}us",
            body=[
                ["system-bus-name", {"name": Variant("s", sender)}],
                action_id,
                {},
                ALLOW_USER_INTERACTION if interactive else 0,
                cancellation_id,
            ],
        )
        try:
            async with asyncio.timeout(timeout):
                reply = await self.bus.call(query)
        except TimeoutError:
            self._cancel_later(cancellation_id)
            raise PolkitFailure(
                f"polkit did not decide on {action_id} for {sender} within {timeout:g} s"
            ) from None
        except Exception as error:  # a disconnected bus, say: no answer is a failure
            raise PolkitFailure(f"asking polkit failed: {error}") from None
        if reply is None:  # dbus-fast answers None only for NO_REPLY_EXPECTED calls
            raise PolkitFailure("polkit sent no reply")
        if reply.message_type is MessageType.ERROR:
            detail = reply.body[0] if reply.body and isinstance(reply.body[0], str) else ""
            # Only the bus itself can say that nobody owns the name: polkitd forwards the same
            # error names about the subject (a caller that has disconnected meanwhile).
            if reply.sender == names.DBUS_BUS_NAME and reply.error_name in _ABSENT_ERRORS:
                raise PolkitUnavailable(f"polkit is not on the bus ({reply.error_name})")
            raise PolkitFailure(f"polkit failed: {reply.error_name}: {detail}")
        return _parse_result(reply)

    def _cancel_later(self, cancellation_id: str) -> None:
        if len(self._cancels) >= MAX_CANCELS_IN_FLIGHT:
            # polkitd is not answering anyway; more unanswered calls would only fill the
            # connection's pending replies.
            log.debug("not cancelling polkit check %s: too many cancellations", cancellation_id)
            return
        task = asyncio.get_running_loop().create_task(self._cancel(cancellation_id))
        self._cancels.add(task)
        task.add_done_callback(self._cancels.discard)

    async def _cancel(self, cancellation_id: str) -> None:
        """Ask polkitd to drop a check we stopped waiting for (and close its dialog)."""
        query = Message(
            destination=names.POLKIT_BUS_NAME,
            path=names.POLKIT_PATH,
            interface=names.POLKIT_INTERFACE,
            member="CancelCheckAuthorization",
            signature="s",
            body=[cancellation_id],
        )
        try:
            async with asyncio.timeout(CANCEL_TIMEOUT):
                reply = await self.bus.call(query)
        except Exception as error:  # best effort: the check already counts as failed
            log.debug("cancelling polkit check %s failed: %s", cancellation_id, error)
            return
        if reply is not None and reply.message_type is MessageType.ERROR:
            log.debug("cancelling polkit check %s: %s", cancellation_id, reply.error_name)


def _parse_result(reply: Message) -> PolkitResult:
    body: list[Any] = reply.body
    if reply.signature != "(bba{ss})" or len(body) != 1:
        raise PolkitFailure(f"polkit answered with signature {reply.signature!r}")
    is_authorized, is_challenge, details = body[0]
    if not (
        isinstance(is_authorized, bool)
        and isinstance(is_challenge, bool)
        and isinstance(details, dict)
    ):
        raise PolkitFailure("polkit answered with a malformed result")
    return PolkitResult(is_authorized, is_challenge, dict(details))
