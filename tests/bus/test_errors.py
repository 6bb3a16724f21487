# SPDX-License-Identifier: LGPL-2.1-or-later
"""What a caller sees when a method fails: the contract's error names, never a traceback."""

from __future__ import annotations

import asyncio
import logging

import pytest
from dbus_fast import DBusError, Message, MessageType
from dbus_fast.aio import MessageBus
from dbus_fast.service import ServiceInterface

from mdevd import errors
from mdevd.bus.errors import dbus_errors, to_dbus_error
from mdevd.bus.signatures import DBusStr, dbus_method

pytestmark = pytest.mark.timeout(30)

INTERFACE = "org.mdevd.Test.Errors"


class Failing(ServiceInterface):
    def __init__(self) -> None:
        super().__init__(INTERFACE)

    @dbus_method()
    @dbus_errors
    async def Raise(self, name: DBusStr) -> DBusStr:
        await asyncio.sleep(0)
        if name == "ok":
            return "fine"
        if name == "bug":
            raise KeyError("/secret/install/path")
        error_class: type[errors.MdevdError] = getattr(errors, name)
        raise error_class(f"device 8a3c: {name} happened")

    @dbus_method()
    @dbus_errors
    def RaiseSync(self, name: DBusStr) -> DBusStr:
        if name == "bug":
            raise ValueError("/secret/install/path")
        raise errors.NotFound(f"device {name} not found")


async def _call(address: str, member: str, argument: str) -> tuple[str, str]:
    """(error name or "", error text or return value) of one call over a real bus."""
    service = await MessageBus(bus_address=address).connect()
    client = await MessageBus(bus_address=address).connect()
    try:
        service.export("/test", Failing())
        reply = await client.call(
            Message(
                destination=service.unique_name,
                path="/test",
                interface=INTERFACE,
                member=member,
                signature="s",
                body=[argument],
            )
        )
        if reply.message_type is MessageType.ERROR:
            return reply.error_name or "", reply.body[0]
        return "", reply.body[0]
    finally:
        client.disconnect()
        service.disconnect()


@pytest.mark.parametrize("name", errors.CONTRACT_ERROR_NAMES)
def test_each_contract_error_keeps_its_name_and_message(bus_address: str, name: str) -> None:
    error_name, text = asyncio.run(_call(bus_address, "Raise", name))
    assert error_name == f"org.mdevd.Mdevd1.Error.{name}"
    assert text == f"device 8a3c: {name} happened"


def test_subclasses_answer_with_their_base_name(bus_address: str) -> None:
    error_name, text = asyncio.run(_call(bus_address, "Raise", "InvalidUUID"))
    assert error_name == "org.mdevd.Mdevd1.Error.InvalidArgument"
    assert text == "device 8a3c: InvalidUUID happened"


def test_success_passes_through(bus_address: str) -> None:
    assert asyncio.run(_call(bus_address, "Raise", "ok")) == ("", "fine")


@pytest.mark.parametrize("member", ["Raise", "RaiseSync"])
def test_a_bug_is_failed_with_a_short_message_and_logged_with_its_traceback(
    bus_address: str, member: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="mdevd.bus.errors"):
        error_name, text = asyncio.run(_call(bus_address, member, "bug"))
    assert error_name == "org.mdevd.Mdevd1.Error.Failed"
    assert text == f"{member}: internal error (details are in the daemon's log)"
    assert "secret" not in text and "Traceback" not in text
    [record] = [r for r in caplog.records if r.name == "mdevd.bus.errors"]
    assert record.exc_info is not None
    assert "/secret/install/path" in str(record.exc_info[1])


def test_sync_methods_are_translated_too(bus_address: str) -> None:
    error_name, text = asyncio.run(_call(bus_address, "RaiseSync", "8a3c"))
    assert (error_name, text) == ("org.mdevd.Mdevd1.Error.NotFound", "device 8a3c not found")


def test_decorated_methods_keep_their_dbus_signature() -> None:
    introspection = {m.name: m for m in Failing().introspect().methods}
    for member in ("Raise", "RaiseSync"):
        assert [a.signature for a in introspection[member].in_args] == ["s"]
        assert [a.signature for a in introspection[member].out_args] == ["s"]


def test_a_dbus_error_raised_by_a_method_is_kept() -> None:
    error = DBusError("org.freedesktop.DBus.Error.InvalidArgs", "nope")
    assert to_dbus_error(error) is error
