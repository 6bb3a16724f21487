# SPDX-License-Identifier: LGPL-2.1-or-later
"""Method returns whose body was marshalled before: the same bytes sent again, unmarshalled.

A large read's reply (ListDevices, GetManagedObjects: 448 KB for 1,000 devices) costs its
sender about 6 ms of dbus-fast's marshalling, compiled, and the reply is the same from one
call to the next while nothing changes. `marshal_body` writes a body once; `Premarshalled` is a
method return that carries those bytes and writes only its own header per call (its serial,
the caller's serial and name, the signature and the body's length; the body's alignment is
relative to the message's start, and the header always ends on an 8-byte boundary, so the same
body bytes fit behind any header).

dbus-fast has no public way to send bytes. What this relies on is what `mdevd.bus.marshalfix`
already does: dbus-fast's asyncio writer (`_MessageWriter.buffer_message`, pure Python in every
version) asks a message for its bytes with `msg._marshall(negotiate_unix_fd)` and for its
`unix_fds`, and `MessageBus.send` numbers it through `serial`. `supported()` checks that, once,
against the installed dbus-fast itself: a premarshalled reply handed to its writer's
`buffer_message` must come out as the very bytes dbus-fast writes for the same reply. Where it
does not (a future dbus-fast), callers build ordinary messages, as before.
"""

from __future__ import annotations

import functools
import logging
import struct
from collections import deque
from typing import Any, Final

from dbus_fast import Message, MessageFlag, MessageType, Variant

from mdevd import wire
from mdevd.bus import marshalfix

_log = logging.getLogger(__name__)

#: Where the fixed part of a header ends and its fields (an `a(yv)`) start: the field array's
#: length is the uint32 at 12.
_FIELDS_AT: Final = 16
_HEADER: Final = "yyyyuua(yv)"


def _header_end(written: bytes | bytearray) -> int:
    """Where the body starts in a whole little-endian message."""
    if written[:1] != b"l":
        raise ValueError("not a little-endian message")
    fields_length: int = struct.unpack_from("<I", written, 12)[0]
    return -(-(_FIELDS_AT + fields_length) // 8) * 8


def marshal_body(signature: str, body: list[Any]) -> bytes:
    """The bytes of a message body with `signature` holding `body`, as the bus must receive
    them (`marshalfix`: correct even where dbus-fast writes non-ASCII strings wrong)."""
    message = Message(
        message_type=MessageType.METHOD_RETURN, reply_serial=1, signature=signature, body=body
    )
    written = marshalfix.fixed(message)._marshall(False)
    start = _header_end(written)
    (length,) = struct.unpack_from("<I", written, 4)
    if len(written) - start != length:
        raise ValueError(f"a message of {len(written)} bytes with a {length}-byte body at {start}")
    return bytes(written[start:])


class Premarshalled:
    """A method return to `call` with a body marshalled before (`marshal_body`), shaped as
    dbus-fast's send path reads a Message: `serial`, `message_type`, `flags`, `unix_fds`,
    `_marshall`. It has no `body`: nothing on that path reads one."""

    __slots__ = ("body_bytes", "destination", "reply_serial", "serial", "signature")

    message_type: Final = MessageType.METHOD_RETURN
    flags: Final = MessageFlag.NONE
    unix_fds: Final[list[int]] = []
    #: Its bytes are written here, correctly in every dbus-fast (`marshalfix.fixed` leaves it).
    marshalled_correctly: Final = True

    def __init__(self, call: Message, signature: str, body_bytes: bytes) -> None:
        self.serial = 0  # numbered when sent, by the bus
        self.reply_serial: int = call.serial
        self.destination: str | None = call.sender
        self.signature = signature
        self.body_bytes = body_bytes

    def _marshall(self, negotiate_unix_fd: bool) -> bytes:
        """The whole message: a header written now, then the body's bytes as they are."""
        fields = [[wire.REPLY_SERIAL, wire.Variant("u", self.reply_serial)]]
        if self.destination:
            fields.append([wire.DESTINATION, wire.Variant("s", self.destination)])
        fields.append([wire.SIGNATURE, wire.Variant("g", self.signature)])
        header = wire.marshal(
            _HEADER,
            [
                ord("l"),
                MessageType.METHOD_RETURN.value,
                MessageFlag.NONE.value,
                1,
                len(self.body_bytes),
                self.serial,
                fields,
            ],
        )
        return header + b"\0" * (-len(header) % 8) + self.body_bytes


def as_message(reply: Premarshalled) -> Message:
    """`reply` where a Message is expected: dbus-fast's send path takes it as one (`supported`)."""
    message: Message = reply  # type: ignore[assignment]
    return message


class _WriterStandIn:
    """The state dbus-fast's `_MessageWriter.buffer_message` uses (every version)."""

    def __init__(self) -> None:
        self.messages: deque[Any] = deque()
        self.negotiate_unix_fd = True


@functools.cache
def supported() -> bool:
    """The installed dbus-fast sends a `Premarshalled` as the bytes it would write itself."""
    try:
        from dbus_fast.aio.message_bus import _MessageWriter

        call = Message(
            destination="org.example.Peer",
            path="/p",
            member="M",
            signature="s",
            body=["x"],
            serial=7,
        )
        call.sender = ":1.42"
        signature, body = "a(sa{sv}u)", [[["a", {"b": Variant("s", "c")}, 3]]]
        expected = bytes(Message.new_method_return(call, signature, body)._marshall(True))
        reply = Premarshalled(call, signature, marshal_body(signature, body))
        reply.serial = 0
        writer = _WriterStandIn()
        # The writer's own method, on a stand-in for its state: what it buffers is what the
        # socket gets.
        _MessageWriter.buffer_message(writer, as_message(reply), None)  # type: ignore[arg-type]
        buffered, fds, _future = writer.messages[0]
        works = bytes(buffered) == expected and not fds
    except Exception:  # any shape of dbus-fast this does not know
        _log.debug("premarshalled replies: the check failed", exc_info=True)
        works = False
    if not works:
        _log.info("this dbus-fast cannot send premarshalled replies: each large read marshals")
    return works
