# SPDX-License-Identifier: LGPL-2.1-or-later
"""mdevd.bus.marshalfix: what dbus-fast's writer gets is a correct message on every version.

On a dbus-fast that writes strings correctly, the wrapper's bytes are dbus-fast's own bytes;
on one that does not (Debian 12's 1.84.2, run by tests/versions), they are what a correct
writer produces, and dbus-fast's own reader reads them back as the message sent.
tests/daemon/test_non_ascii.py shows the daemon staying on the bus.
"""

from __future__ import annotations

import io

import pytest
from dbus_fast import Message, MessageType, Variant
from dbus_fast._private.unmarshaller import Unmarshaller

from mdevd import wire
from mdevd.bus import marshalfix

TEXT = "\u00e9\u2013\u20ac\U0001f600\x80"


def _messages() -> list[Message]:
    call = Message(
        destination="org.mdevd.Mdevd1", path="/org/mdevd/Mdevd1/Manager",
        interface="org.mdevd.Mdevd1.Manager", member="GetDevice", signature="s", body=[TEXT],
        serial=7,
    )  # fmt: skip
    return [
        call,
        Message.new_method_return(call, "a(ss)", [[["note", TEXT], ["ascii", "x"]]]),
        Message.new_error(call, "org.mdevd.Mdevd1.Error.InvalidArgument", f"{TEXT!r} is not"),
        Message.new_signal(
            "/org/mdevd/Mdevd1",
            "org.mdevd.Mdevd1.Manager",
            "DeviceEvent",
            "osssa{sv}",
            [
                "/org/mdevd/Mdevd1/devices/x",
                TEXT,
                "started",
                "ok",
                {"reason": Variant("s", TEXT), "n": Variant("u", 3)},
            ],
        ),
        Message.new_method_return(call, "s", ["only ascii"]),
    ]


def _read_back(data: bytes | bytearray) -> Message:
    # dbus-fast reads from any stream with read(); its stubs name only the socket's type.
    unmarshaller = Unmarshaller(io.BytesIO(bytes(data)))  # type: ignore[arg-type]
    unmarshaller.unmarshall()
    assert unmarshaller.message is not None
    return unmarshaller.message


def _plain(value: object) -> object:
    if isinstance(value, Variant):
        return ("v", value.signature, _plain(value.value))
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


@pytest.mark.parametrize("index", range(len(_messages())))
def test_the_bytes_read_back_as_the_message(index: int) -> None:
    message = _messages()[index]
    message.serial = message.serial or 9
    data = marshalfix.Remarshalled(message)._marshall(False)
    back = _read_back(data)
    for attribute in ("message_type", "serial", "path", "interface", "member", "error_name",
                      "reply_serial", "destination", "signature"):  # fmt: skip
        assert getattr(back, attribute) == getattr(message, attribute), attribute
    assert _plain(back.body) == _plain(message.body)
    if not marshalfix.needed():
        # A correct dbus-fast: the very bytes it writes itself.
        assert bytes(data) == bytes(message._marshall(False))


def test_needed_is_the_probe() -> None:
    written = bytes(Message(path="/", member="M", signature="s", body=[TEXT])._marshall(False))
    correct = len(TEXT.encode()).to_bytes(4, "little") + TEXT.encode()
    assert marshalfix.needed() == (correct not in written)


def test_fixed_wraps_only_where_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    message = _messages()[0]
    monkeypatch.setattr(marshalfix, "needed", lambda: False)
    assert marshalfix.fixed(message) is message
    monkeypatch.setattr(marshalfix, "needed", lambda: True)
    wrapped = marshalfix.fixed(message)
    assert isinstance(wrapped, marshalfix.Remarshalled)
    wrapped.serial = 41  # dbus-fast numbers a message through the wrapper
    assert message.serial == 41
    assert wrapped.message_type is MessageType.METHOD_CALL


@pytest.mark.parametrize("text", [TEXT, "only ascii"])
def test_a_message_with_fds_says_how_many(text: str) -> None:
    """A reply carrying an fd (Device.Open's `h`): the bytes have the UNIX_FDS header field
    when fd passing is negotiated, and the fds go with the wrapper to dbus-fast's writer."""
    call = _messages()[0]
    reply = Message.new_method_return(call, "sh", [text, 0], [5])
    reply.serial = 12
    wrapped = marshalfix.Remarshalled(reply)
    assert wrapped.unix_fds == [5]
    data = bytes(wrapped._marshall(True))
    parsed = wire._parse_message(data)
    assert parsed.fields[wire.UNIX_FDS] == 1
    assert parsed.body == [text, 0]
    assert wire.UNIX_FDS not in wire._parse_message(bytes(wrapped._marshall(False))).fields
    if not marshalfix.needed():
        assert data == bytes(reply._marshall(True))
