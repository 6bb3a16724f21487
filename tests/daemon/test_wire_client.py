# SPDX-License-Identifier: LGPL-2.1-or-later
"""mdevd.wire against the real daemon: the replies the command-line programs read are the
ones dbus-fast reads, and the daemon's errors keep their names."""

from __future__ import annotations

import asyncio

import pytest

from mdevd.bus import names
from mdevd.client import Client, DeviceInfo, sorted_devices
from mdevd.wire import CallError, Connection, Variant
from tests.daemon.conftest import ClientStack
from tests.daemon.harness import BusClient, new_uuid


def _plain(value: object) -> object:
    """Variants of either library as (signature, value), structs as lists (dbus-fast gives
    tuples for some), for comparing."""
    if hasattr(value, "signature") and hasattr(value, "value"):
        return (value.signature, _plain(value.value))
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def test_list_devices_and_managed_objects_read_as_dbus_fast_reads_them(
    stack: ClientStack, client: BusClient
) -> None:
    client.define_device("par-a", "par-a-1", uuid=new_uuid(), attributes=[("setting", "7")])
    client.create_device("mtty", "mtty-1", uuid=new_uuid())

    async def fast() -> tuple[list[object], list[DeviceInfo]]:
        async with await Client.connect(stack.address) as mdevd:
            objects = await mdevd.call(
                names.ROOT_PATH, "org.freedesktop.DBus.ObjectManager", "GetManagedObjects"
            )
            return objects, await mdevd.list_devices()

    objects, devices = asyncio.run(fast())
    with Connection(stack.address, timeout=10) as connection:
        (listed,) = connection.call(
            names.BUS_NAME, names.MANAGER_PATH, names.MANAGER_INTERFACE, "ListDevices",
            "a{sv}", [{}],
        )  # fmt: skip
        got_objects = connection.call(
            names.BUS_NAME, names.ROOT_PATH, "org.freedesktop.DBus.ObjectManager",
            "GetManagedObjects",
        )  # fmt: skip
    assert sorted_devices([DeviceInfo.from_struct(s) for s in listed]) == sorted_devices(devices)
    assert _plain(got_objects) == _plain(objects)


def test_the_daemons_errors_keep_their_names(stack: ClientStack) -> None:
    with Connection(stack.address, timeout=10) as connection:
        with pytest.raises(CallError) as missing:
            connection.call(
                names.BUS_NAME, names.MANAGER_PATH, names.MANAGER_INTERFACE, "GetDevice",
                "s", ["00000000-0000-4000-8000-000000000000"],
            )  # fmt: skip
        assert missing.value.name == names.error_name("NotFound")
        with pytest.raises(CallError) as typo:
            connection.call(
                names.BUS_NAME, names.MANAGER_PATH, names.MANAGER_INTERFACE, "ListDevices",
                "a{sv}", [{"no-such-option": Variant("b", True)}],
            )  # fmt: skip
        assert typo.value.name == names.error_name("InvalidArgument")
