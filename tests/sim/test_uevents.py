# SPDX-License-Identifier: LGPL-2.1-or-later
"""uevents, as a pyudev monitor on udev's netlink group (the daemon's production path) sees them."""

from __future__ import annotations

import errno

import pytest
import pyudev

from tests.sim.helpers import UUID_A, UUID_B, create, receive, remove, type_dir, write, write_errno
from tests.support.sim import RunningSim

pytestmark = pytest.mark.timeout(60, method="thread")

MTTY = "/devices/virtual/mtty/mtty"
#: What udevd adds to every event it passes on; values vary.
UDEV_ADDED = {"SEQNUM", "USEC_INITIALIZED"}


def _quiet(monitor: pyudev.Monitor) -> bool:
    """Nothing more arrives (a short wait: events already sent are queued in the socket)."""
    return receive(monitor, 1, timeout=0.2) == []


def _summary(events: list[pyudev.Device]) -> list[tuple[str, str, str]]:
    return [(e.action, e.device_path, e.subsystem) for e in events]


def _kernel_properties(event: pyudev.Device) -> dict[str, str]:
    return {k: v for k, v in event.properties.items() if k not in UDEV_ADDED}


def test_create_sends_add_vfio_adds_then_bind(monitor: pyudev.Monitor, sim: RunningSim) -> None:
    create(sim.root, "mtty", "mtty-1", UUID_A)
    events = receive(monitor, 4)
    assert _quiet(monitor)
    assert _summary(events) == [
        ("add", f"{MTTY}/{UUID_A}", "mdev"),
        ("add", "/devices/virtual/vfio/0", "vfio"),
        ("add", f"{MTTY}/{UUID_A}/vfio-dev/vfio0", "vfio-dev"),
        ("bind", f"{MTTY}/{UUID_A}", "mdev"),
    ]
    add, group, vfio_dev, bind = events
    # The kernel says nothing about type or parent in the device's add.
    assert _kernel_properties(add) == {
        "ACTION": "add",
        "DEVPATH": f"{MTTY}/{UUID_A}",
        "SUBSYSTEM": "mdev",
    }
    assert group.properties["MAJOR"] == "243"
    assert group.device_node == "/dev/vfio/0"
    assert _kernel_properties(vfio_dev).keys() == {"ACTION", "DEVPATH", "SUBSYSTEM"}
    assert bind.driver == "mtty"
    assert _kernel_properties(bind)["DRIVER"] == "mtty"
    seqnums = [e.sequence_number for e in events]
    assert seqnums == sorted(seqnums) and len(set(seqnums)) == 4
    assert all(int(e.properties["USEC_INITIALIZED"]) > 0 for e in events)


def test_remove_sends_vfio_removes_unbind_remove(monitor: pyudev.Monitor, sim: RunningSim) -> None:
    create(sim.root, "mtty", "mtty-1", UUID_A)
    receive(monitor, 4)
    remove(sim.root, UUID_A)
    events = receive(monitor, 4)
    assert _quiet(monitor)
    assert _summary(events) == [
        ("remove", f"{MTTY}/{UUID_A}/vfio-dev/vfio0", "vfio-dev"),
        ("remove", "/devices/virtual/vfio/0", "vfio"),
        ("unbind", f"{MTTY}/{UUID_A}", "mdev"),
        ("remove", f"{MTTY}/{UUID_A}", "mdev"),
    ]
    assert "DRIVER" not in events[2].properties


def test_a_full_pool_sends_add_and_remove_but_no_bind(
    monitor: pyudev.Monitor, sim: RunningSim
) -> None:
    uuids = [f"00000000-0000-4000-8000-{n:012x}" for n in range(13)]
    for uuid in uuids[:12]:
        create(sim.root, "mtty", "mtty-2", uuid)
    receive(monitor, 48)
    assert write_errno(type_dir(sim.root, "mtty", "mtty-2") / "create", uuids[12]) == errno.ENOSPC
    events = receive(monitor, 2)
    assert _quiet(monitor)
    assert _summary(events) == [
        ("add", f"{MTTY}/{uuids[12]}", "mdev"),
        ("remove", f"{MTTY}/{uuids[12]}", "mdev"),
    ]


def test_a_core_counted_limit_sends_nothing(monitor: pyudev.Monitor, sim: RunningSim) -> None:
    uuids = [f"00000000-0000-4000-8000-{n:012x}" for n in range(5)]
    for uuid in uuids[:4]:
        create(sim.root, "mdpy", "mdpy-vga", uuid)
    receive(monitor, 16)
    assert write_errno(type_dir(sim.root, "mdpy", "mdpy-vga") / "create", uuids[4]) == errno.EUSERS
    assert _quiet(monitor)


def test_parent_events_carry_the_parents_own_subsystem(
    monitor: pyudev.Monitor, sim: RunningSim
) -> None:
    sim.control.unregister("0000:65:00.0")
    sim.control.register("0000:65:00.0")
    sim.control.unregister("mtty")
    sim.control.register("mtty")
    events = receive(monitor, 6)
    assert _quiet(monitor)
    gpu = "/devices/pci0000:64/0000:64:00.0/0000:65:00.0"
    assert _summary(events) == [
        ("change", gpu, "pci"),
        ("change", gpu, "pci"),
        ("change", MTTY, "mtty"),
        ("remove", MTTY, "mtty"),
        ("add", MTTY, "mtty"),
        ("change", MTTY, "mtty"),
    ]
    states = [e.properties.get("MDEV_STATE") for e in events]
    assert states == ["unregistered", "registered", "unregistered", None, None, "registered"]
    assert events[0].properties["PCI_SLOT_NAME"] == "0000:65:00.0"
    assert events[0].driver == "nvidia"


def test_subsystem_filters_work_as_with_udevd(sim: RunningSim) -> None:
    """The header's subsystem hash is right: libudev's socket filter passes exactly the
    matching events, and nothing is ever sent with SUBSYSTEM=mdev_bus (as on Linux)."""
    context = pyudev.Context()
    mdev_only = pyudev.Monitor.from_netlink(context, source="udev")
    mdev_only.filter_by("mdev")
    mdev_only.start()
    mdev_bus = pyudev.Monitor.from_netlink(context, source="udev")
    mdev_bus.filter_by("mdev_bus")
    mdev_bus.start()
    create(sim.root, "mtty", "mtty-1", UUID_A)
    sim.control.unregister("mtty")
    events = receive(mdev_only, 4)
    assert _quiet(mdev_only)
    assert {e.subsystem for e in events} == {"mdev"}
    assert [e.action for e in events] == ["add", "bind", "unbind", "remove"]
    assert _quiet(mdev_bus)


def test_the_log_matches_what_was_sent(monitor: pyudev.Monitor, sim: RunningSim) -> None:
    create(sim.root, "mtty", "mtty-1", UUID_A)
    create(sim.root, "mdpy", "mdpy-xga", UUID_B)
    remove(sim.root, UUID_A)
    sim.control.unregister("mdpy")
    logged = sim.control.uevents()
    sent = receive(monitor, len(logged))
    assert _quiet(monitor)
    assert [(e.sequence_number, e.action, e.device_path) for e in sent] == [
        (e.seqnum, e.action, e.devpath) for e in logged
    ]
    for event, record in zip(sent, logged, strict=True):
        assert _kernel_properties(event) == {
            "ACTION": record.action,
            "DEVPATH": record.devpath,
            **record.properties,
        }


def test_writing_a_uevent_file_synthesizes_an_event(
    monitor: pyudev.Monitor, sim: RunningSim
) -> None:
    create(sim.root, "mtty", "mtty-1", UUID_A)
    receive(monitor, 4)
    device = sim.root / "bus/mdev/devices" / UUID_A
    write(device / "uevent", "change")
    write(sim.root / "class/mdev_bus/mtty/uevent", f"add {UUID_B} A=1")
    events = receive(monitor, 2)
    assert _quiet(monitor)
    assert _summary(events) == [
        ("change", f"{MTTY}/{UUID_A}", "mdev"),
        ("add", MTTY, "mtty"),
    ]
    assert events[0].properties["SYNTH_UUID"] == "0"
    assert events[0].properties["DRIVER"] == "mtty"
    assert events[1].properties["SYNTH_UUID"] == UUID_B
    assert events[1].properties["SYNTH_ARG_A"] == "1"
    assert write_errno(device / "uevent", "explode") == errno.EINVAL
