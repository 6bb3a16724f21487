# SPDX-License-Identifier: LGPL-2.1-or-later
"""Who is calling: the method-call message being served, and its sender's uid.

dbus-fast hands a service method its arguments, not the message. A message handler, which
dbus-fast runs for every incoming message before dispatching it, stores method calls in a
ContextVar. A sync method runs inside that same dispatch and sees its own message; an async
method runs as a Task, and a Task copies the context when it is created, i.e. during that
dispatch, so it keeps seeing its own message however many calls are in flight.

A caller's uid comes from the bus daemon (`GetConnectionUnixUser`). The bus never gives a unique
name to a second connection, so `CallerTracker` remembers each answer until the bus announces
that the connection has left (NameOwnerChanged), within a bound, and asks about one connection
once however many of its calls arrive together. Its questions share the daemon's one
connection, and its 128 pending replies, with everything else the daemon asks, so at most
`MAX_LOOKUPS_IN_FLIGHT` are in flight.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from contextvars import ContextVar
from typing import Final

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from mdevd.bus import busdaemon, names
from mdevd.errors import Failed, Timeout

#: How long the bus daemon may take to answer a question about a connection. It answers from
#: memory, so this only bounds the damage of a wedged bus.
BUS_QUERY_TIMEOUT = 5.0
#: Connections whose uid is remembered; the longest unused is forgotten first. The system bus
#: admits 2048 connections by default (`max_completed_connections`), so this holds them all.
MAX_REMEMBERED_CALLERS: Final = 4096
#: uid questions waiting for the bus daemon at once (it answers from memory, in microseconds).
MAX_LOOKUPS_IN_FLIGHT: Final = 16

log = logging.getLogger(__name__)

_current_call: ContextVar[Message | None] = ContextVar("mdevd_current_call", default=None)


def _remember_call(message: Message) -> None:
    # Returning None (not True) lets dbus-fast go on dispatching the message.
    if message.message_type is MessageType.METHOD_CALL:
        _current_call.set(message)


def track_calls(bus: MessageBus) -> None:
    """Make `current_call()` work for methods served on `bus`. Call once, before exporting."""
    bus.add_message_handler(_remember_call)


def current_call() -> Message:
    """The method call being served; only valid inside a method (or property getter)."""
    message = _current_call.get()
    if message is None:
        raise RuntimeError("no D-Bus method call is being served here (was track_calls run?)")
    return message


def current_sender() -> str:
    """The unique bus name (`:1.42`) of the caller of the method being served."""
    sender = current_call().sender
    if not sender:
        # The bus daemon always sets it; only a peer-to-peer connection would not.
        raise RuntimeError("the method call has no sender")
    return sender


async def _connection_number(
    bus: MessageBus, member: str, what: str, sender: str, timeout: float
) -> int:
    """The bus daemon's `member` answer (one `u`) about connection `sender`: its uid or pid.

    Raises `Timeout` when the bus does not answer in time and `Failed` when it refuses (the
    caller has disconnected meanwhile, for instance).
    """
    try:
        async with asyncio.timeout(timeout):
            reply = await bus.call(busdaemon.message(member, "s", [sender]))
    except TimeoutError:
        raise Timeout(
            f"the bus did not tell the {what} of caller {sender} within {timeout} s"
        ) from None
    if reply.message_type is MessageType.ERROR:
        detail = reply.body[0] if reply.body else ""
        raise Failed(f"cannot identify caller {sender}: {reply.error_name}: {detail}")
    number = reply.body[0] if reply.signature == "u" else None
    if not isinstance(number, int):
        raise Failed(f"cannot identify caller {sender}: the bus answered {reply.signature!r}")
    return number


async def sender_uid(bus: MessageBus, sender: str, timeout: float = BUS_QUERY_TIMEOUT) -> int:
    """The uid of the process behind `sender`, as the bus daemon authenticated it."""
    return await _connection_number(bus, "GetConnectionUnixUser", "uid", sender, timeout)


async def sender_pid(bus: MessageBus, sender: str, timeout: float = BUS_QUERY_TIMEOUT) -> int:
    """The pid of the process behind `sender`, as the bus daemon knows it."""
    return await _connection_number(bus, "GetConnectionUnixProcessID", "pid", sender, timeout)


class CallerTracker:
    """The same, bound to one connection: what the interface objects and the authorizer hold.

    `uid` remembers its answers (see the module's docstring).
    """

    def __init__(
        self,
        bus: MessageBus,
        timeout: float = BUS_QUERY_TIMEOUT,
        max_remembered: int = MAX_REMEMBERED_CALLERS,
    ) -> None:
        self.bus = bus
        self.timeout = timeout
        self.max_remembered = max_remembered
        self._installed = False
        self._uids: OrderedDict[str, int] = OrderedDict()
        self._lookups: dict[str, asyncio.Task[int]] = {}
        # Connections that left while their uid was being looked up: not to be remembered.
        self._departed: set[str] = set()
        self._lookup_slots = asyncio.Semaphore(MAX_LOOKUPS_IN_FLIGHT)
        self._watch: asyncio.Task[None] | None = None
        self._departure_listeners: list[Callable[[str], None]] = []

    def on_departure(self, listener: Callable[[str], None]) -> None:
        """Tell `listener` each unique name that leaves the bus (from now on)."""
        self._departure_listeners.append(listener)
        self._watch_departures()

    def install(self) -> None:
        """Start tracking calls on the connection. Idempotent."""
        if not self._installed:
            track_calls(self.bus)
            self._installed = True

    def current_sender(self) -> str:
        return current_sender()

    def remembered(self) -> int:
        """How many connections' uids are remembered now."""
        return len(self._uids)

    async def uid(self, sender: str) -> int:
        """`sender_uid`, remembered for the life of the connection `sender`."""
        self._watch_departures()
        uid = self._uids.get(sender)
        if uid is not None:
            self._uids.move_to_end(sender)
            return uid
        lookup = self._lookups.get(sender)
        if lookup is None:
            lookup = asyncio.get_running_loop().create_task(self._look_up(sender))
            self._lookups[sender] = lookup
            # A lookup whose every waiter was cancelled must not log "never retrieved".
            lookup.add_done_callback(lambda task: task.cancelled() or task.exception())
        # Shielded: one waiter's cancellation must not fail the others' shared lookup.
        return await asyncio.shield(lookup)

    async def _look_up(self, sender: str) -> int:
        try:
            async with self._lookup_slots:
                uid = await sender_uid(self.bus, sender, self.timeout)
        finally:
            del self._lookups[sender]
            departed = sender in self._departed
            self._departed.discard(sender)
        if not departed:
            self._uids[sender] = uid
            while len(self._uids) > self.max_remembered:
                self._uids.popitem(last=False)
        return uid

    def _watch_departures(self) -> None:
        if self._watch is not None:
            return
        self.bus.add_message_handler(self._on_message)
        self._watch = asyncio.get_running_loop().create_task(self._subscribe())

    async def _subscribe(self) -> None:
        # Only departures (new owner ""): unique names that leave, and well-known names
        # released, which the handler ignores.
        rule = (
            f"type='signal',sender='{names.DBUS_BUS_NAME}',interface='{names.DBUS_INTERFACE}',"
            "member='NameOwnerChanged',arg2=''"
        )
        failure = await busdaemon.add_match(self.bus, rule, self.timeout)
        if failure is None:
            return
        # Still correct (a unique name is never reused): uids are only kept until evicted.
        log.warning("cannot follow callers leaving the bus: %s", failure)

    def _on_message(self, message: Message) -> None:
        # Returns None, never True: the message goes on to whoever else handles it.
        if (
            message.message_type is MessageType.SIGNAL
            and message.member == "NameOwnerChanged"
            and message.sender == names.DBUS_BUS_NAME
            and message.signature == "sss"
        ):
            name, _, new_owner = message.body
            if name.startswith(":") and not new_owner:
                self._uids.pop(name, None)
                if name in self._lookups:
                    self._departed.add(name)
                for listener in self._departure_listeners:
                    listener(name)
