# SPDX-License-Identifier: LGPL-2.1-or-later
"""`Backend` (parents and devices) and `Placement` (devices) through the real daemon: the same
in every read a client can make, announced by PropertiesChanged; the `placement` option of
DefineDevice and CreateDevice, checked before anything is written; a definition's `placement`
in its TOML file, written by the daemon and read back by a reload (docs/nvidia-vf.md)."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest
from dbus_fast import Variant

from mdevd.bus import names
from tests.daemon.conftest import ClientStack
from tests.daemon.harness import BusClient, DaemonError, device_path, new_uuid, parent_path
from tests.support.daemon import DaemonProcess
from tests.support.waiting import wait_until

#: The GPU of the daemon tests' scenario that is not registered at mount time.
ABSENT_PARENT = "0000:66:00.0"
#: A virtual function's PCI address, as a placement is spelled.
VF = "0000:3d:00.5"


def _listed(client: BusClient, uuid: str) -> dict[str, Any]:
    """The trailing dictionary of the device's ListDevices entry."""
    (entries,) = client.manager_async("ListDevices", "a{sv}", {}).result()
    (entry,) = [e for e in entries if e[1] == uuid]
    later: dict[str, Any] = entry[-1]
    return later


def _seen(client: BusClient, uuid: str) -> tuple[str, str]:
    """Backend and Placement, checked to agree in every read a client can make."""
    properties = client.device(uuid)
    backend, placement = properties["Backend"], properties["Placement"]
    path = device_path(uuid)
    assert client.get_property(path, names.DEVICE_INTERFACE, "Backend") == backend
    assert client.get_property(path, names.DEVICE_INTERFACE, "Placement") == placement
    managed = client.managed_objects()[path][names.DEVICE_INTERFACE]
    assert (managed["Backend"], managed["Placement"]) == (backend, placement)
    listed = _listed(client, uuid)
    assert (listed["Backend"], listed["Placement"]) == (backend, placement)
    return backend, placement


def _changed(client: BusClient, uuid: str, since: int) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for signal in client.signals(since):
        changed = signal.changed(device_path(uuid))
        if changed is not None:
            merged.update(changed)
    return merged


def _error(call: Any) -> DaemonError:
    with pytest.raises(DaemonError) as raised:
        call()
    return raised.value


def test_the_feature_words(client: BusClient) -> None:
    features = client.get_property(names.MANAGER_PATH, names.MANAGER_INTERFACE, "Features")
    assert {"nvidia-vf", "placement"} <= set(features)


def test_an_mdev_parent_says_its_backend_in_every_read(client: BusClient) -> None:
    path = parent_path("mtty")
    assert client.properties(path, names.PARENT_INTERFACE)["Backend"] == "mdev"
    assert client.get_property(path, names.PARENT_INTERFACE, "Backend") == "mdev"
    objects = client.managed_objects()
    parents = [i[names.PARENT_INTERFACE] for i in objects.values() if names.PARENT_INTERFACE in i]
    assert parents and {p["Backend"] for p in parents} == {"mdev"}


def test_an_mdev_device_is_on_mdev_with_no_placement(client: BusClient) -> None:
    transient, defined = new_uuid(), new_uuid()
    client.create_device("mtty", "mtty-1", uuid=transient)
    client.define_device("mtty", "mtty-1", uuid=defined)
    assert _seen(client, transient) == ("mdev", "")
    assert _seen(client, defined) == ("mdev", "")
    client.stop(transient)


def test_a_device_whose_parent_is_absent_has_no_backend_until_the_parent_comes(
    client: BusClient, stack: ClientStack
) -> None:
    uuid = new_uuid()
    client.define_device(ABSENT_PARENT, "nvidia-556", uuid=uuid, autostart=True)
    assert _seen(client, uuid) == ("", "")
    mark = client.mark()
    stack.sim.control.register(ABSENT_PARENT)
    try:
        wait_until(
            lambda: _changed(client, uuid, mark).get("Backend") == "mdev",
            what="PropertiesChanged of Backend",
        )
        wait_until(lambda: client.device(uuid)["Active"], what="autostart")
        assert _seen(client, uuid) == ("mdev", "")
    finally:
        stack.sim.control.unregister(ABSENT_PARENT)
    wait_until(lambda: client.device(uuid)["Backend"] == "", what="the parent to go")
    client.undefine(uuid)


def test_an_inactive_manual_device_takes_its_parents_backend_when_the_parent_comes(
    client: BusClient, stack: ClientStack
) -> None:
    uuid = new_uuid()
    client.define_device(ABSENT_PARENT, "nvidia-556", uuid=uuid)
    assert _seen(client, uuid) == ("", "")
    stack.sim.control.register(ABSENT_PARENT)
    try:
        wait_until(lambda: client.device(uuid)["ParentObject"] != "/", what="the parent to come")
        assert _seen(client, uuid) == ("mdev", "")
    finally:
        stack.sim.control.unregister(ABSENT_PARENT)
        wait_until(lambda: client.device(uuid)["ParentObject"] == "/", what="the parent to go")
        client.undefine(uuid)


def test_a_placement_goes_from_define_device_to_the_property_and_the_file_and_back(
    client: BusClient, daemon: DaemonProcess
) -> None:
    uuid = new_uuid()
    # Any case on the way in; the kernel's lower case everywhere after.
    client.define_device(ABSENT_PARENT, "nvidia-556", uuid=uuid, placement=VF.upper())
    assert _seen(client, uuid) == ("", VF)

    config_file = client.device(uuid)["ConfigFile"]
    assert config_file == str(daemon.devices_dir / f"{uuid}.toml")
    with open(config_file, "rb") as file:
        (table,) = tomllib.load(file)["device"]
    assert table["placement"] == VF

    # A retry of the same definition is no conflict; another placement is.
    client.define_device(ABSENT_PARENT, "nvidia-556", uuid=uuid, placement=VF)
    other = "0000:3d:00.6"
    error = _error(
        lambda: client.define_device(ABSENT_PARENT, "nvidia-556", uuid=uuid, placement=other)
    )
    assert error.short_name == "Exists"

    # What the file says is what a reload reads: an edit by hand shows in the property.
    with open(config_file) as file:
        text = file.read()
    with open(config_file, "w") as file:
        file.write(text.replace(VF, other))
    mark = client.mark()
    client.reload()
    assert _seen(client, uuid) == ("", other)
    assert _changed(client, uuid, mark)["Placement"] == other
    client.undefine(uuid)


def test_a_definition_file_with_a_placement_loads_and_a_bad_one_costs_its_entry_only(
    client: BusClient, daemon: DaemonProcess
) -> None:
    good, bad = new_uuid(), new_uuid()
    path = daemon.devices_dir / f"hand-{good}.toml"
    path.write_text(
        f'[[device]]\nuuid = "{good}"\nparent = "{ABSENT_PARENT}"\ntype = "nvidia-556"\n'
        f'placement = "{VF}"\n\n'
        f'[[device]]\nuuid = "{bad}"\nparent = "{ABSENT_PARENT}"\ntype = "nvidia-556"\n'
        'placement = "../../remove"\n'
    )
    try:
        client.reload()
        assert _seen(client, good) == ("", VF)
        assert _error(lambda: client.get_device(bad)).short_name == "NotFound"
    finally:
        path.unlink()
        client.reload()


@pytest.mark.parametrize("member", ["DefineDevice", "CreateDevice"])
@pytest.mark.parametrize(
    "placement",
    [
        Variant("s", "0000:3d:00"),  # no function
        Variant("s", "../../../remove"),  # a path
        Variant("s", "0000:3d:00.5 "),
        Variant("b", True),  # not a string
    ],
)
def test_a_bad_placement_is_refused_and_nothing_is_written(
    client: BusClient, daemon: DaemonProcess, member: str, placement: Variant
) -> None:
    uuid = new_uuid()
    error = _error(
        lambda: client.manager_async(
            member,
            "ssa{sv}",
            "mtty",
            "mtty-1",
            {"uuid": Variant("s", uuid), "placement": placement},
        ).result()
    )
    assert error.name == "org.mdevd.Mdevd1.Error.InvalidArgument"
    assert "placement" in error.message
    assert _error(lambda: client.get_device(uuid)).short_name == "NotFound"
    assert not (daemon.devices_dir / f"{uuid}.toml").exists()
