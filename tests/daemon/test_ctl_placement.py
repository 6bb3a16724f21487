# SPDX-License-Identifier: LGPL-2.1-or-later
"""Backends and placements on the client side: `mdevdctl define/create --placement`, what
`show`, `list`, `types` and `--schema 1` print of them (docs/json.md), and `mdevd.client`'s
reading of them, also from a daemon that predates them."""

from __future__ import annotations

import json

from mdevd.bus import names
from mdevd.cli import mdevdctl
from mdevd.cli.mdevdctl_json import device_v0, parent_v1
from mdevd.client import (
    BACKEND_MDEV,
    BACKEND_NVIDIA_VF,
    DeviceInfo,
    InvalidArgument,
    ParentInfo,
    SyncClient,
    parents_from_objects,
)
from tests.daemon.conftest import ClientStack
from tests.daemon.harness import BusClient, new_uuid
from tests.daemon.test_ctl import fails, ok
from tests.support.daemon import DaemonProcess

#: The GPU of the daemon tests' scenario that is not registered at mount time.
ABSENT_PARENT = "0000:66:00.0"
VF = "0000:3d:00.5"


def _show(daemon: DaemonProcess, uuid: str) -> dict[str, str]:
    fields = {}
    for line in ok(daemon, "show", uuid).splitlines():
        key, sep, value = line.partition(":")
        if sep and not line.startswith(" "):
            fields[key] = value.strip()
    return fields


def test_define_with_a_placement_and_what_show_list_and_json_say(daemon: DaemonProcess) -> None:
    uuid = new_uuid()
    printed = ok(daemon, "define", ABSENT_PARENT, "nvidia-556", "-u", uuid, "--placement", VF)
    assert printed.strip() == uuid
    fields = _show(daemon, uuid)
    assert fields["Placement"] == VF
    assert "Backend" not in fields  # not active, its parent absent: nothing known

    (line,) = [li for li in ok(daemon, "list").splitlines() if li.startswith(uuid)]
    assert line == f"{uuid} {ABSENT_PARENT} nvidia-556 manual (defined) on {VF}"

    (device,) = json.loads(ok(daemon, "list", "-u", uuid, "--schema", "1"))["devices"]
    assert (device["backend"], device["placement"]) == ("", VF)
    shown = json.loads(ok(daemon, "show", uuid, "--schema", "1"))["device"]
    assert (shown["backend"], shown["placement"]) == ("", VF)
    # Schema 0 is frozen: no new keys.
    assert "placement" not in json.loads(ok(daemon, "show", uuid, "--json"))
    ok(daemon, "undefine", uuid)


def test_an_mdev_device_shows_its_backend_and_no_placement(daemon: DaemonProcess) -> None:
    uuid = new_uuid()
    ok(daemon, "create", "mtty", "mtty-1", "-u", uuid)
    fields = _show(daemon, uuid)
    assert fields["Backend"] == "mdev"
    assert "Placement" not in fields
    (line,) = [li for li in ok(daemon, "list").splitlines() if li.startswith(uuid)]
    assert line == f"{uuid} mtty mtty-1 manual (active)"
    shown = json.loads(ok(daemon, "show", uuid, "--schema", "1"))["device"]
    assert (shown["backend"], shown["placement"]) == ("mdev", "")
    ok(daemon, "stop", uuid)


def test_a_bad_placement_is_refused_and_nothing_is_defined(daemon: DaemonProcess) -> None:
    uuid = new_uuid()
    message = fails(
        daemon,
        mdevdctl.EXIT_FAILED,
        *("define", ABSENT_PARENT, "nvidia-556", "-u", uuid, "--placement", "0000:3d:00"),
    )
    assert message.endswith("[InvalidArgument]") and "placement" in message
    fails(daemon, mdevdctl.EXIT_NOT_FOUND, "show", uuid)
    assert not (daemon.devices_dir / f"{uuid}.toml").exists()


def test_types_show_the_backend_in_json_and_leave_mdev_parents_text_as_it_was(
    daemon: DaemonProcess,
) -> None:
    parents = json.loads(ok(daemon, "types", "--schema", "1", "-p", "mtty"))["parents"]
    assert [(p["name"], p["backend"]) for p in parents] == [("mtty", "mdev")]
    assert "backend" not in json.loads(ok(daemon, "types", "--json", "-p", "mtty"))[0]
    assert ok(daemon, "types", "-p", "mtty").splitlines()[0] == "mtty"


def test_the_client_passes_a_placement_and_reads_backend_and_placement(
    stack: ClientStack,
) -> None:
    uuid = new_uuid()
    with SyncClient(stack.address) as client:
        client.define_device(ABSENT_PARENT, "nvidia-556", uuid=uuid, placement=VF.upper())
        try:
            device = client.device(uuid)
            assert (device.backend, device.placement) == ("", VF)
            (listed,) = [d for d in client.devices() if d.uuid == uuid]
            assert listed == device
            try:
                client.define_device(ABSENT_PARENT, "nvidia-556", placement="bad")
            except InvalidArgument as error:
                assert "placement" in error.message
            else:
                raise AssertionError("a bad placement was accepted")
            (mtty,) = [p for p in client.parents() if p.name == "mtty"]
            assert mtty.backend == BACKEND_MDEV
        finally:
            client.undefine(uuid)


def test_a_daemon_without_the_properties_means_mdev_and_no_placement(
    stack: ClientStack, client: BusClient
) -> None:
    uuid = new_uuid()
    client.create_device("mtty", "mtty-1", uuid=uuid)
    try:
        (structs,) = client.call(
            names.MANAGER_PATH, names.MANAGER_INTERFACE, "ListDevices", "a{sv}", [{}]
        )
        (struct,) = [s for s in structs if s[1] == uuid]
        objects = client.managed_objects()
        props = objects[struct[0]][names.DEVICE_INTERFACE]
        older = {k: v for k, v in props.items() if k not in ("Backend", "Placement")}
        for device in (
            DeviceInfo.from_struct([*struct[:13], {}]),
            DeviceInfo.from_properties(struct[0], older),
        ):
            assert (device.backend, device.placement) == (BACKEND_MDEV, "")
        parents = {
            path: {
                names.PARENT_INTERFACE: {
                    k: v for k, v in interfaces[names.PARENT_INTERFACE].items() if k != "Backend"
                }
            }
            for path, interfaces in objects.items()
            if names.PARENT_INTERFACE in interfaces
        }
        assert {p.backend for p in parents_from_objects(parents)} == {BACKEND_MDEV}
    finally:
        client.stop(uuid)


def test_json_shapes_of_an_nvidia_vf_device_and_parent() -> None:
    """What no scenario parent gives yet: the keys for another backend."""
    device = DeviceInfo(
        *("/p", "u", "0000:3d:00.0", "nvidia-1145", True, True, False, (), "/sys/x", 7, "", ""),
        backend=BACKEND_NVIDIA_VF,
        placement=VF,
    )
    assert "backend" not in device_v0(device) and "placement" not in device_v0(device)
    parent = ParentInfo("/p", "0000:3d:00.0", "/sys/x", "pci", {}, BACKEND_NVIDIA_VF)
    assert parent_v1(parent)["backend"] == "nvidia-vf"
    assert mdevdctl._device_line(device).endswith(f"(active, defined) on {VF}")
    assert mdevdctl._parent_header(parent) == "0000:3d:00.0 (nvidia-vf)"
    assert mdevdctl._parent_header(ParentInfo("/p", "mtty", "/sys/m", "mtty", {})) == "mtty"
