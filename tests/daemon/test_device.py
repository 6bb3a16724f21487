# SPDX-License-Identifier: LGPL-2.1-or-later
"""The Device interface's methods: Start, Stop, Define, Undefine, Update (also live)."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests.daemon.harness import BusClient, DaemonError, device_path, in_sysfs, new_uuid
from tests.support.daemon import DaemonProcess
from tests.support.sim import RunningSim


def _definition(path: str | Path) -> dict[str, Any]:
    with open(path, "rb") as file:
        [device] = tomllib.load(file)["device"]
    result: dict[str, Any] = device
    return result


def _matrix(sim: RunningSim, uuid: str) -> str:
    return (sim.root / "bus" / "mdev" / "devices" / uuid / "matrix").read_text()


def test_start_and_stop_a_defined_device(client: BusClient, sim: RunningSim) -> None:
    uuid = new_uuid()
    client.define_device(
        "matrix",
        "vfio_ap-passthrough",
        uuid=uuid,
        attributes=[
            ("assign_adapter", "0x21"),
            ("assign_domain", "0x21"),
        ],
    )
    client.start(uuid)
    assert in_sysfs(sim, uuid)
    assert _matrix(sim, uuid) == "21.0021\n"
    device = client.device(uuid)
    assert (device["Active"], device["Defined"]) == (True, True)

    client.stop(uuid)
    assert not in_sysfs(sim, uuid)
    device = client.device(uuid)
    assert (device["Active"], device["Defined"]) == (False, True)
    assert (device["SysfsPath"], device["IommuGroup"]) == ("", -1)
    assert os.path.exists(device["ConfigFile"])

    client.start(uuid)  # a stopped definition starts again, attributes and all
    assert _matrix(sim, uuid) == "21.0021\n"
    client.stop(uuid)


def test_stop_of_a_transient_device_removes_its_object(client: BusClient, sim: RunningSim) -> None:
    uuid = new_uuid()
    client.create_device("mtty", "mtty-1", uuid=uuid)
    client.stop(uuid)
    assert not in_sysfs(sim, uuid)
    with pytest.raises(DaemonError) as raised:
        client.get_device(uuid)
    assert raised.value.short_name == "NotFound"


def test_define_persists_a_running_transient_device_as_it_is(
    client: BusClient, sim: RunningSim, daemon: DaemonProcess
) -> None:
    uuid = new_uuid()
    client.create_device(
        "par-a", "par-a-1", uuid=uuid, attributes=[("setting", "5"), ("other", "6")]
    )
    client.define(uuid, autostart=True)
    device = client.device(uuid)
    assert (device["Active"], device["Defined"], device["Autostart"]) == (True, True, True)
    assert device["ConfigFile"] == str(daemon.devices_dir / f"{uuid}.toml")
    assert _definition(device["ConfigFile"]) == {
        "uuid": uuid,
        "parent": "par-a",
        "type": "par-a-1",
        "autostart": True,
        "attributes": [{"name": "setting", "value": "5"}, {"name": "other", "value": "6"}],
    }
    # Stopping keeps it now; starting recreates it with the same attributes.
    client.stop(uuid)
    assert client.device(uuid)["Defined"] is True
    client.start(uuid)
    assert in_sysfs(sim, uuid)
    client.stop(uuid)


def test_define_without_autostart(client: BusClient) -> None:
    uuid = new_uuid()
    client.create_device("mtty", "mtty-1", uuid=uuid)
    client.define(uuid)
    assert client.device(uuid)["Autostart"] is False
    assert _definition(client.device(uuid)["ConfigFile"]).get("autostart", False) is False
    client.stop(uuid)


def test_undefine_keeps_a_running_device_running(client: BusClient, sim: RunningSim) -> None:
    uuid = new_uuid()
    client.define_device("par-b", "par-b-1", uuid=uuid, start=True, attributes=[("setting", "9")])
    config_file = client.device(uuid)["ConfigFile"]
    client.undefine(uuid)
    assert not os.path.exists(config_file)
    assert in_sysfs(sim, uuid)
    device = client.device(uuid)
    assert (device["Active"], device["Defined"], device["ConfigFile"]) == (True, False, "")
    # It is transient now, with the attributes it was started with.
    assert device["Attributes"] == [["setting", "9"]]
    client.stop(uuid)
    with pytest.raises(DaemonError):
        client.get_device(uuid)


def test_undefine_of_an_inactive_device_removes_it(client: BusClient) -> None:
    uuid = new_uuid()
    client.define_device("mtty", "mtty-1", uuid=uuid)
    config_file = client.device(uuid)["ConfigFile"]
    client.undefine(uuid)
    assert not os.path.exists(config_file)
    with pytest.raises(DaemonError) as raised:
        client.get_device(uuid)
    assert raised.value.short_name == "NotFound"


def test_update_changes_the_definition_on_disk(client: BusClient) -> None:
    uuid = new_uuid()
    client.define_device("par-a", "par-a-1", uuid=uuid, attributes=[("setting", "1")])
    client.update(
        uuid,
        {"type": "par-a-2", "autostart": True, "attributes": [("setting", "2"), ("setting", "3")]},
    )
    device = client.device(uuid)
    assert (device["Type"], device["Autostart"]) == ("par-a-2", True)
    assert device["Attributes"] == [["setting", "2"], ["setting", "3"]]
    assert _definition(device["ConfigFile"]) == {
        "uuid": uuid,
        "parent": "par-a",
        "type": "par-a-2",
        "autostart": True,
        "attributes": [{"name": "setting", "value": "2"}, {"name": "setting", "value": "3"}],
    }
    client.update(uuid, {"attributes": []})
    assert client.device(uuid)["Attributes"] == []
    assert "attributes" not in _definition(device["ConfigFile"])


def test_an_update_that_changes_nothing_writes_and_signals_nothing(client: BusClient) -> None:
    uuid = new_uuid()
    client.define_device(
        "par-a", "par-a-1", uuid=uuid, autostart=True, attributes=[("setting", "1")]
    )
    config_file = client.device(uuid)["ConfigFile"]
    before = os.stat(config_file)
    mark = client.mark()
    client.update(uuid, {})
    client.update(uuid, {"type": "par-a-1", "autostart": True, "attributes": [("setting", "1")]})
    assert client.signals(mark) == []
    after = os.stat(config_file)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    client.update(uuid, {"autostart": False})  # a real change is still one
    assert client.event_details(uuid, since=mark) == [("updated", {"reason": "api"})]
    client.undefine(uuid)


def test_update_without_live_leaves_the_running_device_alone(
    client: BusClient, sim: RunningSim
) -> None:
    uuid = new_uuid()
    client.define_device(
        "matrix",
        "vfio_ap-passthrough",
        uuid=uuid,
        start=True,
        attributes=[("assign_adapter", "0x31"), ("assign_domain", "0x31")],
    )
    client.update(uuid, {"attributes": [("assign_adapter", "0x32"), ("assign_domain", "0x32")]})
    assert _matrix(sim, uuid) == "31.0031\n"
    assert client.device(uuid)["Attributes"] == [
        ["assign_adapter", "0x32"],
        ["assign_domain", "0x32"],
    ]
    client.stop(uuid)
    client.start(uuid)
    assert _matrix(sim, uuid) == "32.0032\n"
    client.stop(uuid)


def test_update_live_also_writes_the_running_device(client: BusClient, sim: RunningSim) -> None:
    uuid = new_uuid()
    client.define_device(
        "matrix",
        "vfio_ap-passthrough",
        uuid=uuid,
        start=True,
        attributes=[("assign_adapter", "0x41"), ("assign_domain", "0x41")],
    )
    client.update(
        uuid,
        {
            "attributes": [
                ("assign_adapter", "0x41"),
                ("assign_domain", "0x41"),
                ("assign_domain", "0x42"),
            ]
        },
        live=True,
    )
    assert _matrix(sim, uuid) == "41.0041\n41.0042\n"
    assert len(client.device(uuid)["Attributes"]) == 3
    client.stop(uuid)


def test_update_live_of_an_inactive_device_is_not_active(client: BusClient) -> None:
    uuid = new_uuid()
    client.define_device("par-a", "par-a-1", uuid=uuid, attributes=[("setting", "1")])
    with pytest.raises(DaemonError) as raised:
        client.update(uuid, {"attributes": [("setting", "2")]}, live=True)
    assert raised.value.short_name == "NotActive"
    assert uuid in raised.value.message
    # Nothing changed.
    assert client.device(uuid)["Attributes"] == [["setting", "1"]]
    assert _definition(client.device(uuid)["ConfigFile"])["attributes"] == [
        {"name": "setting", "value": "1"}
    ]


def test_update_live_cannot_change_the_type_of_a_running_device(client: BusClient) -> None:
    uuid = new_uuid()
    client.define_device("par-a", "par-a-1", uuid=uuid, start=True)
    with pytest.raises(DaemonError) as raised:
        client.update(uuid, {"type": "par-a-2"}, live=True)
    assert raised.value.short_name == "InvalidArgument"
    assert client.device(uuid)["Type"] == "par-a-1"
    client.stop(uuid)


def test_update_of_a_path_that_is_not_a_device(client: BusClient) -> None:
    with pytest.raises(DaemonError) as raised:
        client.call(device_path(new_uuid()), "org.mdevd.Mdevd1.Device", "Start", "a{sv}", [{}])
    # No object: the bus library's own answer, never a daemon crash.
    assert raised.value.name.startswith("org.freedesktop.DBus.Error.")
