# SPDX-License-Identifier: LGPL-2.1-or-later
"""The emulated kernel's modes the event tests rely on, checked on their own.

- Without MDEV_STATE events (`mdev-state-events off`, or `mdev_state_events = false` in a
  scenario) registration behaves like kernels before that event existed: a module's own parent
  device is added once registered, a PCI or CCW parent that stays is announced by its driver's
  `bind`; unregistering removes it, or `unbind`s it.
- `delay types SECONDS`: a registration's types directory is empty for that long.
- Each registration's `mdev_supported_types`, and each device directory, has a new inode
  number, as kernfs gives each new node one (what `Sysfs.registration_id` relies on).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
import pyudev

from mdevd.kernel import Sysfs
from mdevd.sim import control
from tests.support.sim import RunningSim, running_sim
from tests.support.waiting import wait_until
from tests.udev.support import SCENARIO, uuid_for

pytestmark = pytest.mark.timeout(60, method="thread")

MTTY = "/devices/virtual/mtty/mtty"
GPU = "/devices/pci0000:64/0000:64:00.0/0000:65:00.0"


@pytest.fixture
def sim() -> Iterator[RunningSim]:
    with running_sim(SCENARIO) as running:
        yield running


def _parent_events(sim: RunningSim, devpath: str, since: int) -> list[tuple[str, str]]:
    return [
        (r.action, r.properties.get("MDEV_STATE", ""))
        for r in sim.control.uevents()
        if r.seqnum > since and r.devpath == devpath
    ]


def _last_seqnum(sim: RunningSim) -> int:
    log = sim.control.uevents()
    return log[-1].seqnum if log else 0


def test_with_mdev_state_events_registration_is_announced_by_change(sim: RunningSim) -> None:
    since = _last_seqnum(sim)
    sim.control.unregister("mtty")
    sim.control.register("mtty")
    sim.control.register("0000:65:00.0")
    sim.control.unregister("0000:65:00.0")
    assert _parent_events(sim, MTTY, since) == [
        ("change", "unregistered"),
        ("remove", ""),
        ("add", ""),
        ("change", "registered"),
    ]
    assert _parent_events(sim, GPU, since) == [("change", "registered"), ("change", "unregistered")]


def test_without_mdev_state_events_only_add_bind_remove_unbind_tell(sim: RunningSim) -> None:
    sim.control.mdev_state_events(False)
    since = _last_seqnum(sim)
    sim.control.unregister("mtty")
    sim.control.register("mtty")
    sim.control.register("0000:65:00.0")
    sim.control.unregister("0000:65:00.0")
    assert _parent_events(sim, MTTY, since) == [("remove", ""), ("add", "")]
    assert _parent_events(sim, GPU, since) == [("bind", ""), ("unbind", "")]
    bind = next(r for r in sim.control.uevents() if r.seqnum > since and r.action == "bind")
    assert bind.properties["DRIVER"] == "nvidia"  # the PCI driver's name, as its bind says
    unbind = next(r for r in sim.control.uevents() if r.seqnum > since and r.action == "unbind")
    assert "DRIVER" not in unbind.properties

    sim.control.mdev_state_events(True)
    since = _last_seqnum(sim)
    sim.control.unregister("mtty")
    assert _parent_events(sim, MTTY, since) == [("change", "unregistered"), ("remove", "")]


def test_a_scenario_can_start_without_mdev_state_events() -> None:
    text = SCENARIO.read_text().replace(
        "[[parent]]", "[sim]\nmdev_state_events = false\n\n[[parent]]", 1
    )
    with running_sim(scenario_text=text) as sim:
        since = _last_seqnum(sim)
        sim.control.unregister("mtty")
        sim.control.register("mtty")
        assert _parent_events(sim, MTTY, since) == [("remove", ""), ("add", "")]


def test_the_legacy_add_arrives_when_the_types_are_already_there(sim: RunningSim) -> None:
    """What a consumer of the `add` can rely on: the device has mdev_supported_types by then."""
    sim.control.mdev_state_events(False)
    sim.control.unregister("mtty")
    monitor = pyudev.Monitor.from_netlink(pyudev.Context(), source="udev")
    monitor.start()
    sim.control.register("mtty")
    deadline = time.monotonic() + 10
    device = None
    while device is None and time.monotonic() < deadline:
        device = monitor.poll(timeout=1)  # None also for a message libudev dropped
    assert device is not None and device.action == "add" and device.device_path == MTTY
    assert "MDEV_STATE" not in device.properties
    assert Sysfs(sim.root).probe_parent(MTTY)
    assert not Sysfs(sim.root).probe_parent("/devices/virtual/vfio")
    assert not Sysfs(sim.root).probe_parent("/devices/../class/mdev_bus/mtty")


def test_delay_types_leaves_the_types_directory_empty_for_a_while(sim: RunningSim) -> None:
    sim.control.delay("types", 0.5)
    sim.control.unregister("mdpy")
    registered_at = time.monotonic()
    sim.control.register("mdpy")
    types = sim.root / "class/mdev_bus/mdpy/mdev_supported_types"
    assert types.is_dir()
    if time.monotonic() - registered_at < 0.4:  # looked in time (the host was not too slow)
        assert os.listdir(types) == []
    wait_until(lambda: os.listdir(types) == ["mdpy-vga"] or None, what="mdpy's types", timeout=10)
    # Registrations after `delay types 0` are populated at once again.
    sim.control.delay("types", 0)
    sim.control.unregister("mdpy")
    sim.control.register("mdpy")
    assert os.listdir(types) == ["mdpy-vga"]


def test_delay_types_is_a_known_command() -> None:
    assert control.parse_line("delay types 2.5") == control.Delay("types", 2.5)
    assert control.parse_line("mdev-state-events off") == control.MdevStateEvents(False)
    with pytest.raises(control.CommandError, match="on or off"):
        control.parse_line("mdev-state-events maybe")


def test_each_registration_and_each_device_has_a_new_inode(sim: RunningSim) -> None:
    kernel = Sysfs(sim.root)
    first = kernel.registration_id("mtty")
    assert kernel.registration_id("mtty") == first  # stable while it lasts
    sim.control.unregister("mtty")
    sim.control.register("mtty")
    second = kernel.registration_id("mtty")
    assert second != first

    uuid = uuid_for(1)
    create = sim.root / "class/mdev_bus/mtty/mdev_supported_types/mtty-1/create"
    create.write_text(uuid)
    device_dir = sim.root / "bus/mdev/devices" / uuid
    before = os.stat(device_dir).st_ino
    (device_dir / "remove").write_text("1")
    create.write_text(uuid)
    assert os.stat(device_dir).st_ino != before
    # Directory listings carry the same numbers (readdir(3) drops entries whose d_ino is 0).
    with os.scandir(sim.root / "bus/mdev/devices") as entries:
        listed = {entry.name: entry.inode() for entry in entries}
    assert listed[uuid] == os.lstat(sim.root / "bus/mdev/devices" / uuid).st_ino
