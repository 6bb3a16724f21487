# SPDX-License-Identifier: LGPL-2.1-or-later
"""Replies sent from a body marshalled before (mdevd.bus.premarshalled), byte for byte.

tests/versions runs this file with each dbus-fast mdevd supports, so `supported()` is checked
against each one's own writer, and the bytes against each one's own marshaller.
"""

from __future__ import annotations

from typing import Any

import pytest
from dbus_fast import Message, Variant

from mdevd import wire
from mdevd.bus import marshalfix, premarshalled
from mdevd.bus.reads import DEVICE_LIST_SIGNATURE, MANAGED_OBJECTS_SIGNATURE

_ENTRY: list[Any] = [
    "/org/mdevd/Mdevd1/devices/u",
    "u",
    "0000:65:00.0",
    "/",
    "nvidia-558",
    False,
    True,
    False,
    [["a", "1"]],
    "",
    -1,
    "/etc/mdevd/devices.d/u.toml",
    "",
    {"Status": Variant("s", "inactive"), "PendingChanges": Variant("a{sv}", {})},
]


def _call(sender: str | None, serial: int) -> Message:
    # dbus-fast sets `sender` on what it receives (None on a peer-to-peer connection).
    call = Message(path="/p", member="M", serial=serial)
    call.sender = sender  # type: ignore[assignment]
    return call


def test_this_dbus_fast_sends_them() -> None:
    assert premarshalled.supported()


# Destinations of every length modulo 8, so that each padding before the body is met.
@pytest.mark.parametrize("sender", [None, ":1.5", ":1.55", ":1.555", ":1.5555", ":1.55555"])
@pytest.mark.parametrize(
    ("signature", "body"),
    [
        (DEVICE_LIST_SIGNATURE, [[_ENTRY, _ENTRY]]),
        (DEVICE_LIST_SIGNATURE, [[]]),
        (MANAGED_OBJECTS_SIGNATURE, [{"/o": {"i.F": {"P": Variant("b", True)}}}]),
    ],
)
def test_the_bytes_are_dbus_fasts_own(sender: str | None, signature: str, body: Any) -> None:
    call = _call(sender, serial=300)
    written = premarshalled.marshal_body(signature, body)
    reply = premarshalled.Premarshalled(call, signature, written)
    reply.serial = 70000
    expected = Message.new_method_return(call, signature, body)
    expected.serial = 70000
    assert reply._marshall(True) == bytes(expected._marshall(True))


def test_non_ascii_bodies_are_written_correctly() -> None:
    """Even by a dbus-fast that writes them wrong itself (1.84: `marshalfix`)."""
    text = "\u00e9\u2013\U0001f600"
    entry = [*_ENTRY[:12], text, {"Status": Variant("s", text)}]
    reply = premarshalled.Premarshalled(
        _call(":1.9", 4),
        DEVICE_LIST_SIGNATURE,
        premarshalled.marshal_body(DEVICE_LIST_SIGNATURE, [[entry]]),
    )
    reply.serial = 5
    written = reply._marshall(False)
    body = written[premarshalled._header_end(written) :]
    assert int.from_bytes(written[4:8], "little") == len(body)
    ((listed,),) = wire.unmarshal(DEVICE_LIST_SIGNATURE, body)
    assert listed[12] == text
    assert listed[13]["Status"].value == text


def test_marshalfix_leaves_them_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(marshalfix, "needed", lambda: True)
    reply = premarshalled.as_message(premarshalled.Premarshalled(_call(":1.9", 4), "s", b""))
    assert marshalfix.fixed(reply) is reply
