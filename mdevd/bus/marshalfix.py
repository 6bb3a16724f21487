# SPDX-License-Identifier: LGPL-2.1-or-later
"""Messages with non-ASCII strings, written correctly even by dbus-fast versions that do not.

dbus-fast 1.84.2, the version Debian 12 ships as python3-dbus-fast, writes the length of a
string as its number of characters instead of its number of UTF-8 bytes
(`_private/marshaller.py`, `_write_string`: `value_len = len(value)`). A message with any
non-ASCII string is then malformed, and the bus daemon drops the connection that sent it. For
the daemon that would mean: any caller who can make mdevd echo a non-ASCII string (a parent
name in an error message, an attribute value, a file name) disconnects it from the bus.

`needed()` finds out once, by marshalling one non-ASCII string, whether the dbus-fast in use
has the fault. Where it has, each outgoing message is handed to dbus-fast wrapped
(`Remarshalled`): dbus-fast's asyncio writer asks the message for its bytes
(`msg._marshall(...)`) and for its file descriptors and nothing else, and the wrapper answers
with bytes written by `mdevd.wire`'s marshaller (checked against dbus-fast's own on correct
versions, tests/bus/test_wire.py). Versions without the fault are left alone.
"""

from __future__ import annotations

import functools
from typing import Any

from dbus_fast import Message

from mdevd import wire

#: Header fields dbus-fast's Message carries (the signature is added by `wire`).
_FIELDS = (
    (wire.PATH, "path", "o"),
    (wire.INTERFACE, "interface", "s"),
    (wire.MEMBER, "member", "s"),
    (wire.ERROR_NAME, "error_name", "s"),
    (wire.REPLY_SERIAL, "reply_serial", "u"),
    (wire.DESTINATION, "destination", "s"),
    (wire.SENDER, "sender", "s"),
)


@functools.cache
def needed() -> bool:
    """The installed dbus-fast writes a string's character count as its length."""
    text = "\u00e9"
    # `_marshall` is what dbus-fast's own writer calls to get a message's bytes (every version).
    written = bytes(Message(path="/", member="M", signature="s", body=[text])._marshall(False))
    correct = len(text.encode()).to_bytes(4, "little") + text.encode() + b"\0"
    return correct not in written


class Remarshalled:
    """A dbus-fast Message as its asyncio writer sees it, with correctly written bytes."""

    def __init__(self, message: Message) -> None:
        self.message = message

    def __getattr__(self, name: str) -> Any:
        return getattr(self.message, name)

    @property
    def serial(self) -> int:
        return int(self.message.serial)

    @serial.setter
    def serial(self, value: int) -> None:
        self.message.serial = value

    def _marshall(self, negotiate_unix_fd: bool) -> bytes | bytearray:
        message = self.message
        if _ascii_only(message.body) and _ascii_only(
            [getattr(message, attribute, None) for _code, attribute, _sig in _FIELDS]
        ):
            # Nothing the fault touches: dbus-fast's own (compiled) marshaller, the fast one.
            written: bytes | bytearray = message._marshall(negotiate_unix_fd)
            return written
        fields = {
            code: wire.Variant(signature, value)
            for code, attribute, signature in _FIELDS
            if (value := getattr(message, attribute, None))
        }
        if message.unix_fds and negotiate_unix_fd:
            fields[wire.UNIX_FDS] = wire.Variant("u", len(message.unix_fds))
        return wire.encode_message(
            message.message_type.value,
            message.flags.value,
            message.serial,
            fields,
            message.signature,
            message.body,
        )


def _ascii_only(value: Any) -> bool:
    if isinstance(value, str):
        return value.isascii()
    if isinstance(value, list | tuple):
        return all(_ascii_only(item) for item in value)
    if isinstance(value, dict):
        return all(_ascii_only(k) and _ascii_only(v) for k, v in value.items())
    if hasattr(value, "signature") and hasattr(value, "value"):  # a Variant
        return _ascii_only(value.value)
    return True  # numbers, bytes (written as they are), None


def fixed(message: Message) -> Message:
    """`message`, or its wrapper where the installed dbus-fast would write it wrong."""
    if needed() and not getattr(message, "marshalled_correctly", False):
        # (A `mdevd.bus.premarshalled` reply writes its bytes correctly itself.)
        # Duck-typed for dbus-fast's writer, which reads only what the wrapper answers.
        wrapped: Message = Remarshalled(message)  # type: ignore[assignment]
        return wrapped
    return message
