# SPDX-License-Identifier: LGPL-2.1-or-later
"""ListDevices and ListDeviceSummaries through `mdevd.client`, and `mdevdctl list`: the same
devices, the same output, as reading every object with GetManagedObjects."""

from __future__ import annotations

import asyncio
import json

from mdevd import calls
from mdevd.blocking import BlockingClient
from mdevd.bus import names
from mdevd.cli.mdevdctl import _device_json, _device_line
from mdevd.client import Client, DeviceInfo, DeviceSummary, SyncClient
from tests.daemon.conftest import ClientStack
from tests.daemon.harness import BusClient, new_uuid


def _from_objects(client: BusClient) -> list[DeviceInfo]:
    """What `mdevdctl list` showed before ListDevices: the Device objects, sorted."""
    return sorted(
        (
            DeviceInfo.from_properties(path, interfaces[names.DEVICE_INTERFACE])
            for path, interfaces in client.managed_objects().items()
            if names.DEVICE_INTERFACE in interfaces
        ),
        key=lambda d: (d.parent, d.uuid),
    )


def _populate(client: BusClient) -> None:
    client.define_device("par-a", "par-a-1", uuid=new_uuid(), attributes=[("setting", "7")])
    client.define_device("par-b", "par-b-1", uuid=new_uuid(), autostart=True, start=True)
    client.create_device("mtty", "mtty-1", uuid=new_uuid())
    client.define_device("0000:66:00.0", "nvidia-556", uuid=new_uuid())


def test_the_feature_word(client: BusClient) -> None:
    features = client.get_property(names.MANAGER_PATH, names.MANAGER_INTERFACE, "Features")
    assert "list-devices" in features
    assert "device-summaries" in features


def test_the_client_lists_what_the_objects_say(stack: ClientStack, client: BusClient) -> None:
    _populate(client)

    async def listed() -> tuple[list[DeviceInfo], list[DeviceInfo]]:
        async with await Client.connect(stack.address) as mdevd:
            return await mdevd.list_devices(), await mdevd.devices()

    unsorted, devices = asyncio.run(listed())
    expected = _from_objects(client)
    assert len(expected) >= 4
    assert sorted(unsorted, key=lambda d: (d.parent, d.uuid)) == expected
    assert devices == expected


def test_mdevdctl_list_prints_what_the_objects_say(stack: ClientStack, client: BusClient) -> None:
    _populate(client)
    expected = _from_objects(client)
    as_json = stack.daemon.ctl("list", "--json", check=True)
    assert as_json.stdout == json.dumps([_device_json(d) for d in expected], indent=2) + "\n"
    as_text = stack.daemon.ctl("list", check=True)
    assert as_text.stdout == "".join(_device_line(d) + "\n" for d in expected)


def test_the_client_summarises_what_the_objects_say(stack: ClientStack, client: BusClient) -> None:
    _populate(client)
    expected = {
        d.uuid: DeviceSummary(
            d.uuid, d.parent, d.type_id, d.active, d.defined, d.autostart, d.attributes
        )
        for d in _from_objects(client)
    }
    # Defined only, active only, both; with attributes.
    assert {(s.active, s.defined) for s in expected.values()} == {
        (False, True),
        (True, False),
        (True, True),
    }
    assert any(s.attributes == (("setting", "7"),) for s in expected.values())

    async def summaries() -> list[DeviceSummary]:
        async with await Client.connect(stack.address) as mdevd:
            return await mdevd.list_device_summaries()

    listed = asyncio.run(summaries())
    assert {s.uuid: s for s in listed} == expected
    assert len(listed) == len(expected)
    by_uuid = sorted(expected.values(), key=lambda s: s.uuid)
    with SyncClient(stack.address) as sync:
        assert sorted(sync.list_device_summaries(), key=lambda s: s.uuid) == by_uuid
    # mdevdctl's transport (mdevd.wire), the same request.
    with BlockingClient.connect(stack.address) as blocking:
        from_wire = blocking.run(calls.list_device_summaries())
    assert sorted(from_wire, key=lambda s: s.uuid) == by_uuid
