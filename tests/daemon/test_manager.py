# SPDX-License-Identifier: LGPL-2.1-or-later
"""The Manager interface and the read-only state the daemon exports (Manager, Parent, Device).

Each method against the real daemon: what its reply says, what the kernel (the emulator's
sysfs) and the definition directory show afterwards, and what every property says about it.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

import pytest

from mdevd import __version__
from mdevd.bus import names
from tests.daemon.conftest import ClientStack
from tests.daemon.harness import (
    BusClient,
    DaemonError,
    device_path,
    in_sysfs,
    new_uuid,
    options,
    own_owner,
    parent_path,
)
from tests.support.daemon import DaemonProcess
from tests.support.sim import RunningSim
from tests.support.waiting import wait_until

UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def _kernel_path(sim: RunningSim, uuid: str) -> str:
    return os.path.realpath(sim.root / "bus" / "mdev" / "devices" / uuid)


def _kernel_group(sim: RunningSim, uuid: str) -> int:
    return int(os.path.basename(os.readlink(Path(_kernel_path(sim, uuid)) / "iommu_group")))


def _matrix(sim: RunningSim, uuid: str) -> str:
    return (Path(_kernel_path(sim, uuid)) / "matrix").read_text()


# ---- Manager properties -----------------------------------------------------------------------


def test_version_and_features(client: BusClient) -> None:
    properties = client.properties(names.MANAGER_PATH, names.MANAGER_INTERFACE)
    assert properties["Version"] == __version__
    assert {"define", "update-live"} <= set(properties["Features"])
    assert client.get_property(names.MANAGER_PATH, names.MANAGER_INTERFACE, "Version") == (
        __version__
    )


# ---- CreateDevice -----------------------------------------------------------------------------


def test_create_device_makes_a_transient_device_with_every_property(
    client: BusClient, sim: RunningSim
) -> None:
    uuid = new_uuid()
    path = client.create_device("mtty", "mtty-2", uuid=uuid)
    assert path == device_path(uuid)
    assert in_sysfs(sim, uuid)
    assert client.device(uuid) == {
        "UUID": uuid,
        "Parent": "mtty",
        "ParentObject": parent_path("mtty"),
        "Type": "mtty-2",
        "Active": True,
        "Defined": False,
        "Autostart": False,
        "Attributes": [],
        "SysfsPath": _kernel_path(sim, uuid),
        "IommuGroup": _kernel_group(sim, uuid),
        "ConfigFile": "",
        "LastError": "",
        "Status": "active",
        "PendingChanges": {},
        "Backend": "mdev",
        "Placement": "",
        "Owner": own_owner(),
        "Lifetime": "manual",
    }


def test_every_mutation_accepts_auth_interactive(client: BusClient, sim: RunningSim) -> None:
    # Root needs no authentication; the option is accepted everywhere all the same.
    uuid = new_uuid()
    client.define_device("mtty", "mtty-1", uuid=uuid, auth_interactive=True)
    client.device_async(uuid, "Start", "a{sv}", options(auth_interactive=True)).result()
    client.update(uuid, {"autostart": True}, auth_interactive=True)
    client.device_async(uuid, "Stop", "a{sv}", options(auth_interactive=True)).result()
    client.device_async(uuid, "Undefine", "a{sv}", options(auth_interactive=True)).result()
    client.create_device("mtty", "mtty-1", uuid=uuid, auth_interactive=True)
    client.device_async(uuid, "Define", "a{sv}", options(auth_interactive=False)).result()
    client.reload(auth_interactive=True)
    assert in_sysfs(sim, uuid)
    client.stop(uuid)


def test_create_device_without_a_uuid_generates_one(client: BusClient, sim: RunningSim) -> None:
    path = client.create_device("mtty", "mtty-1")
    uuid = client.get_property(path, names.DEVICE_INTERFACE, "UUID")
    assert UUID4.fullmatch(uuid)
    assert path == device_path(uuid)
    assert in_sysfs(sim, uuid)


def test_create_device_accepts_an_upper_case_uuid_and_names_it_in_lower_case(
    client: BusClient, sim: RunningSim
) -> None:
    uuid = new_uuid()
    assert client.create_device("mtty", "mtty-1", uuid=uuid.upper()) == device_path(uuid)
    assert client.get_device(uuid.upper()) == device_path(uuid)
    assert in_sysfs(sim, uuid)


def test_create_device_writes_the_attributes_in_their_order(
    client: BusClient, sim: RunningSim
) -> None:
    # vfio-ap shows the result; assign-then-unassign and unassign-then-assign differ.
    first, second = new_uuid(), new_uuid()
    client.create_device(
        "matrix",
        "vfio_ap-passthrough",
        uuid=first,
        attributes=[("assign_adapter", "0x11"), ("unassign_adapter", "0x11")],
    )
    client.create_device(
        "matrix",
        "vfio_ap-passthrough",
        uuid=second,
        attributes=[
            ("unassign_adapter", "0x12"),
            ("assign_adapter", "0x12"),
            ("assign_domain", "7"),
        ],
    )
    assert _matrix(sim, first) == ""
    assert _matrix(sim, second) == "12.0007\n"
    assert client.device(second)["Attributes"] == [
        ["unassign_adapter", "0x12"],
        ["assign_adapter", "0x12"],
        ["assign_domain", "7"],
    ]


# ---- DefineDevice -----------------------------------------------------------------------------


def _definitions(path: str) -> list[dict[str, object]]:
    with open(path, "rb") as file:
        devices: list[dict[str, object]] = tomllib.load(file)["device"]
    return devices


def test_define_device_persists_a_definition(
    client: BusClient, sim: RunningSim, daemon: DaemonProcess
) -> None:
    uuid = new_uuid()
    path = client.define_device(
        "par-a", "par-a-1", uuid=uuid, attributes=[("setting", "3")], autostart=True
    )
    assert path == device_path(uuid)
    assert not in_sysfs(sim, uuid)
    config_file = str(daemon.devices_dir / f"{uuid}.toml")
    assert client.device(uuid) == {
        "UUID": uuid,
        "Parent": "par-a",
        "ParentObject": parent_path("par-a"),
        "Type": "par-a-1",
        "Active": False,
        "Defined": True,
        "Autostart": True,
        "Attributes": [["setting", "3"]],
        "SysfsPath": "",
        "IommuGroup": -1,
        "ConfigFile": config_file,
        "LastError": "",
        "Status": "inactive",
        "PendingChanges": {},
        "Backend": "mdev",
        "Placement": "",
        "Owner": own_owner(),
        "Lifetime": "manual",
    }
    assert _definitions(config_file) == [
        {
            "uuid": uuid,
            "parent": "par-a",
            "type": "par-a-1",
            "autostart": True,
            "attributes": [{"name": "setting", "value": "3"}],
        }
    ]


def test_define_device_with_start_also_starts_it(client: BusClient, sim: RunningSim) -> None:
    uuid = new_uuid()
    client.define_device("mtty", "mtty-1", uuid=uuid, start=True)
    device = client.device(uuid)
    assert (device["Active"], device["Defined"], device["Autostart"]) == (True, True, False)
    assert device["SysfsPath"] == _kernel_path(sim, uuid)
    assert in_sysfs(sim, uuid)


def test_define_device_on_an_absent_parent_has_no_parent_object(client: BusClient) -> None:
    uuid = new_uuid()
    client.define_device("0000:66:00.0", "nvidia-556", uuid=uuid)
    device = client.device(uuid)
    assert device["ParentObject"] == "/"
    assert device["Active"] is False


def test_an_autostart_definition_starts_when_its_parent_registers(
    client: BusClient, sim: RunningSim
) -> None:
    uuid, manual = new_uuid(), new_uuid()
    client.define_device("0000:66:00.0", "nvidia-556", uuid=uuid, autostart=True)
    client.define_device("0000:66:00.0", "nvidia-556", uuid=manual)
    mark = client.mark()
    sim.control.register("0000:66:00.0")
    try:
        client.wait_signal(lambda s: s.is_event(uuid, "started"), since=mark)
        assert ("started", {"reason": "autostart"}) in client.event_details(uuid, since=mark)
        assert in_sysfs(sim, uuid)
        device = client.device(uuid)
        assert device["Active"] is True
        assert device["ParentObject"] == parent_path("0000:66:00.0")
        assert client.device(manual)["Active"] is False
        assert client.device(manual)["ParentObject"] == parent_path("0000:66:00.0")
    finally:
        sim.control.unregister("0000:66:00.0")
    # The devices go first, then the parent unregisters: two steps, each with its events.
    wait_until(lambda: client.device(uuid)["ParentObject"] == "/", what="the parent to go")
    assert client.device(uuid)["Active"] is False
    assert parent_path("0000:66:00.0") not in client.managed_objects()


# ---- GetDevice --------------------------------------------------------------------------------


def test_get_device_resolves_defined_and_active_devices(client: BusClient) -> None:
    defined, active = new_uuid(), new_uuid()
    client.define_device("mtty", "mtty-1", uuid=defined)
    client.create_device("mtty", "mtty-1", uuid=active)
    assert client.get_device(defined) == device_path(defined)
    assert client.get_device(active.upper()) == device_path(active)


def test_get_device_of_an_unknown_uuid_is_not_found(client: BusClient) -> None:
    uuid = new_uuid()
    with pytest.raises(DaemonError) as raised:
        client.get_device(uuid)
    assert raised.value.name == "org.mdevd.Mdevd1.Error.NotFound"
    assert uuid in raised.value.message


def test_get_device_of_a_malformed_uuid_is_invalid_argument(client: BusClient) -> None:
    with pytest.raises(DaemonError) as raised:
        client.get_device("not-a-uuid")
    assert raised.value.name == "org.mdevd.Mdevd1.Error.InvalidArgument"
    assert "not-a-uuid" in raised.value.message


# ---- Reload -----------------------------------------------------------------------------------


def _write_definition(directory: Path, name: str, uuid: str, parent: str, type_id: str) -> Path:
    path = directory / name
    path.write_text(
        f'# written by hand\n[[device]]\nuuid = "{uuid}"\nparent = "{parent}"\n'
        f'type = "{type_id}"\nautostart = true\n'
    )
    return path


def test_reload_picks_up_added_changed_and_removed_files(
    client: BusClient, sim: RunningSim, daemon: DaemonProcess
) -> None:
    uuid = new_uuid()
    path = _write_definition(daemon.devices_dir, f"hand-{uuid}.toml", uuid, "par-b", "par-b-1")
    mark = client.mark()
    client.reload()
    # Added: defined, and (autostart, parent present) started.
    assert any(s.is_added(device_path(uuid)) for s in client.signals(mark))
    assert client.event_details(uuid, since=mark) == [
        ("defined", {"reason": "config"}),
        ("started", {"reason": "autostart"}),
    ]
    device = client.device(uuid)
    assert (device["Defined"], device["Active"], device["ConfigFile"]) == (True, True, str(path))
    assert in_sysfs(sim, uuid)

    mark = client.mark()
    path.write_text(path.read_text().replace("autostart = true", "autostart = false"))
    client.reload()
    assert client.event_details(uuid, since=mark) == [("updated", {"reason": "config"})]
    assert client.device(uuid)["Autostart"] is False

    mark = client.mark()
    path.unlink()
    client.reload()
    assert client.event_details(uuid, since=mark) == [("undefined", {"reason": "config"})]
    device = client.device(uuid)
    # A removed definition leaves its running device alone.
    assert (device["Defined"], device["Active"], device["ConfigFile"]) == (False, True, "")
    assert in_sysfs(sim, uuid)


def test_reload_of_an_inactive_definition_removes_its_object(
    client: BusClient, daemon: DaemonProcess
) -> None:
    uuid = new_uuid()
    path = _write_definition(
        daemon.devices_dir, f"hand-{uuid}.toml", uuid, "0000:66:00.0", "nvidia-556"
    )
    client.reload()
    assert client.device(uuid)["Active"] is False
    mark = client.mark()
    path.unlink()
    client.reload()
    assert any(s.is_removed(device_path(uuid)) for s in client.signals(mark))
    with pytest.raises(DaemonError) as raised:
        client.get_device(uuid)
    assert raised.value.short_name == "NotFound"


def test_reload_skips_a_bad_file_and_loads_the_rest(
    client: BusClient, daemon: DaemonProcess
) -> None:
    good = new_uuid()
    bad = daemon.devices_dir / f"bad-{good}.toml"
    bad.write_text("[[device]\nthis is not TOML\n")
    _write_definition(daemon.devices_dir, f"good-{good}.toml", good, "0000:66:00.0", "nvidia-556")
    try:
        client.reload()
        assert client.device(good)["Defined"] is True
    finally:
        bad.unlink()


# ---- Parent properties ------------------------------------------------------------------------


def test_parent_properties(client: BusClient, sim: RunningSim) -> None:
    properties = client.properties(parent_path("0000:65:00.0"), names.PARENT_INTERFACE)
    assert properties["Name"] == "0000:65:00.0"
    assert properties["SysfsPath"] == os.path.realpath(
        sim.root / "class" / "mdev_bus" / "0000:65:00.0"
    )
    assert properties["Subsystem"] == "pci"
    assert set(properties["Types"]) == {"nvidia-556", "nvidia-558"}
    type_info = properties["Types"]["nvidia-558"]
    assert set(type_info) == {"name", "description", "device_api", "available_instances"}
    assert type_info["name"] == "GRID T4-4Q"
    assert type_info["device_api"] == "vfio-pci"
    assert type_info["description"].startswith("num_heads=4")
    type_dir = sim.root / "class/mdev_bus/0000:65:00.0/mdev_supported_types/nvidia-558"
    assert type_info["available_instances"] == int((type_dir / "available_instances").read_text())


def test_every_registered_parent_has_an_object(client: BusClient, sim: RunningSim) -> None:
    registered = {p.name for p in (sim.root / "class" / "mdev_bus").iterdir()}
    objects = client.managed_objects()
    exported = {
        interfaces[names.PARENT_INTERFACE]["Name"]
        for interfaces in objects.values()
        if names.PARENT_INTERFACE in interfaces
    }
    assert exported == registered
    assert "0000:66:00.0" not in exported
    for name in registered:
        assert names.PARENT_INTERFACE in objects[parent_path(name)]


def test_types_change_signals_available_instances(client: BusClient, stack: ClientStack) -> None:
    path = parent_path("mdpy")
    before = client.get_property(path, names.PARENT_INTERFACE, "Types")
    mark = client.mark()
    uuid = new_uuid()
    client.create_device("mdpy", "mdpy-vga", uuid=uuid)
    changes = [c for s in client.signals(mark) if (c := s.changed(path)) is not None]
    assert changes, "no PropertiesChanged for the parent"
    expected = before["mdpy-vga"]["available_instances"] - 1
    assert changes[-1]["Types"]["mdpy-vga"]["available_instances"] == expected
    assert client.get_property(path, names.PARENT_INTERFACE, "Types") == changes[-1]["Types"]
    client.stop(uuid)
