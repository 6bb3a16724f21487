# SPDX-License-Identifier: LGPL-2.1-or-later
"""Who is calling: the method-call message being served, and its sender's uid.

dbus-fast hands a service method its arguments, not the message. A message handler, which
dbus-fast runs for every incoming message before dispatching it, stores method calls in a
ContextVar. A sync method runs inside that same dispatch and sees its own message; an async
method runs as a Task, and a Task copies the context when it is created, i.e. during that
dispatch, so it keeps seeing its own message however many calls are in flight.
"""

from __future__ import annotations

import asyncio
from contextvars import ContextVar

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from mdevd.bus import names
from mdevd.errors import Failed, Timeout

#: How long the bus daemon may take to answer a question about a connection. It answers from
#: memory, so this only bounds the damage of a wedged bus.
BUS_QUERY_TIMEOUT = 5.0

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


async def sender_uid(bus: MessageBus, sender: str, timeout: float = BUS_QUERY_TIMEOUT) -> int:
    """The uid of the process behind `sender`, as the bus daemon authenticated it.

    Raises `Timeout` when the bus does not answer in time and `Failed` when it refuses (the
    caller has disconnected meanwhile, for instance).
    """
    query = Message(
        destination=names.DBUS_BUS_NAME,
        path=names.DBUS_PATH,
        interface=names.DBUS_INTERFACE,
        member="GetConnectionUnixUser",
        signature="s",
        body=[sender],
    )
    try:
        async with asyncio.timeout(timeout):
            reply = await bus.call(query)
    except TimeoutError:
        raise Timeout(
            f"the bus did not tell the uid of caller {sender} within {timeout} s"
        ) from None
    if reply.message_type is MessageType.ERROR:
        detail = reply.body[0] if reply.body else ""
        raise Failed(f"cannot identify caller {sender}: {reply.error_name}: {detail}")
    uid = reply.body[0] if reply.signature == "u" else None
    if not isinstance(uid, int):
        raise Failed(f"cannot identify caller {sender}: the bus answered {reply.signature!r}")
    return uid


class CallerTracker:
    """The same, bound to one connection: what the interface objects and the authorizer hold."""

    def __init__(self, bus: MessageBus, timeout: float = BUS_QUERY_TIMEOUT) -> None:
        self.bus = bus
        self.timeout = timeout
        self._installed = False

    def install(self) -> None:
        """Start tracking calls on the connection. Idempotent."""
        if not self._installed:
            track_calls(self.bus)
            self._installed = True

    def current_sender(self) -> str:
        return current_sender()

    async def uid(self, sender: str) -> int:
        return await sender_uid(self.bus, sender, self.timeout)
