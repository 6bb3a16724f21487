# SPDX-License-Identifier: LGPL-2.1-or-later
"""Parents registering and unregistering: autostart, hot-unplug, and what the bus shows.

The daemon runs as a subprocess on a private bus; the emulated kernel sends its uevents on
udev's netlink group, so the daemon's real monitor and event handling see them.
"""

from __future__ import annotations

import itertools
import signal

import pytest

from mdevd.bus.paths import parent_path
from tests.support.waiting import wait_until
from tests.udev.conftest import Setup, StartDaemon
from tests.udev.support import (
    Wanted,
    agreement,
    attempts,
    call,
    mdev_events,
    objects,
    registrations,
    uuid_for,
    write_definitions,
)

pytestmark = pytest.mark.timeout(120, method="thread")

#: (parent, a type it offers, the subsystem its own uevents carry, its devpath)
PARENTS = [
    ("mtty", "mtty-1", "mtty", "/devices/virtual/mtty/mtty"),
    ("0000:65:00.0", "nvidia-558", "pci", "/devices/pci0000:64/0000:64:00.0/0000:65:00.0"),
    ("0.0.0052", "vfio_ccw-io", "css", "/devices/css0/0.0.0052"),
]


def _unregistered(world: Setup, parent: str) -> None:
    if (world.sim.root / "class/mdev_bus" / parent).exists():
        world.sim.control.unregister(parent)


_barriers = itertools.count(1)


def _barrier(world: Setup) -> None:
    """Return once the daemon has handled every kernel event sent before: a device made by
    another tool (a write straight into sysfs) shows up, and is removed again."""
    uuid = uuid_for(next(_barriers), family=0xBA)
    create = world.sim.root / "class/mdev_bus/mdpy/mdev_supported_types/mdpy-vga/create"
    create.write_text(uuid)
    world.recorder.wait_for_events(1, uuid, "started", "kernel")
    (world.sim.root / "bus/mdev/devices" / uuid / "remove").write_text("1")
    world.recorder.wait_for_events(1, uuid, "stopped", "kernel")


@pytest.mark.parametrize(("parent", "type_id", "subsystem", "devpath"), PARENTS)
def test_a_registration_starts_the_autostart_devices_whatever_the_subsystem(
    world: Setup, start_daemon: StartDaemon, parent: str, type_id: str, subsystem: str, devpath: str
) -> None:
    _unregistered(world, parent)
    device = uuid_for(1)
    write_definitions(world.devices_dir / "a.toml", [Wanted(device, parent, type_id)])
    start_daemon(world)
    assert not objects(world.address).devices[device].active

    world.sim.control.register(parent)

    world.recorder.wait_for_events(1, device, "started", "autostart")
    shown = objects(world.address)
    assert shown.devices[device].active
    assert shown.devices[device].parent_object == parent_path(parent)
    assert shown.parents[parent]["Subsystem"] == subsystem
    log = world.sim.control.uevents()
    announced = [r for r in log if r.properties.get("MDEV_STATE") == "registered"]
    assert [(r.devpath, r.subsystem) for r in announced] == [(devpath, subsystem)]
    assert len(mdev_events(log, device, "add")) == 1
    assert agreement(world.sim, world.address) is None


@pytest.mark.parametrize(("parent", "type_id", "subsystem", "devpath"), PARENTS)
def test_on_a_kernel_without_mdev_state_the_parents_add_or_bind_starts_them(
    world: Setup, start_daemon: StartDaemon, parent: str, type_id: str, subsystem: str, devpath: str
) -> None:
    world.sim.control.mdev_state_events(False)
    _unregistered(world, parent)
    device = uuid_for(2)
    write_definitions(world.devices_dir / "a.toml", [Wanted(device, parent, type_id)])
    start_daemon(world)

    world.sim.control.register(parent)

    world.recorder.wait_for_events(1, device, "started", "autostart")
    log = world.sim.control.uevents()
    assert not [r for r in log if "MDEV_STATE" in r.properties]
    # What the kernel said of the parent: only its `add` (mtty's own device) or its driver's
    # `bind` (a PCI or CCW device that was there before).
    said = [r.action for r in log if r.devpath == devpath]
    assert said[-1] == ("add" if subsystem == "mtty" else "bind")
    assert objects(world.address).devices[device].active
    assert agreement(world.sim, world.address) is None


def test_add_and_change_of_one_registration_start_each_device_once(
    world: Setup, start_daemon: StartDaemon
) -> None:
    """mdevctl starts twice when both events arrive (its issue #53); mdevd once, including
    the device that cannot start (one start-failed, not two)."""
    world.sim.control.unregister("mtty")
    good = [uuid_for(i) for i in (1, 2, 3)]
    bad = uuid_for(9)
    wanted = [Wanted(u, "mtty", "mtty-2") for u in good] + [Wanted(bad, "mtty", "mtty-9")]
    write_definitions(world.devices_dir / "a.toml", wanted)
    start_daemon(world)

    world.sim.control.register("mtty")
    for uuid in good:
        world.recorder.wait_for_events(1, uuid, "started", "autostart")
    world.recorder.wait_for_events(1, bad, "start-failed", "autostart")
    _barrier(world)  # every event of the registration handled, and more after it

    last = registrations(world.sim.control.uevents(), "/devices/virtual/mtty/mtty")[-1]
    assert [r.action for r in last if r.devpath == "/devices/virtual/mtty/mtty"] == ["change"]
    parent_events = [r.action for r in world.sim.control.uevents() if r.subsystem == "mtty"]
    assert parent_events[-2:] == ["add", "change"]  # both arrived
    for uuid in good:
        assert len(mdev_events(last, uuid, "add")) == 1
        assert len(mdev_events(last, uuid, "bind")) == 1
    (failure,) = world.recorder.events(bad, "start-failed")
    assert failure.details["error_name"] == "org.mdevd.Mdevd1.Error.TypeNotSupported"
    assert "mtty-9" in failure.details["error_message"]
    assert "retry_in" not in failure.details  # permanent: not retried
    assert objects(world.address).devices[bad].last_error.startswith("TypeNotSupported: ")
    assert len(world.recorder.events(None, "started", "autostart")) == len(good)


def test_autostart_goes_in_uuid_order_whatever_the_files_say(
    world: Setup, start_daemon: StartDaemon
) -> None:
    world.sim.control.unregister("mtty")
    uuids = [uuid_for(i) for i in range(1, 9)]
    shuffled = [uuids[i] for i in (5, 2, 7, 0, 3, 6, 1, 4)]
    write_definitions(
        world.devices_dir / "b.toml", [Wanted(u, "mtty", "mtty-1") for u in shuffled[:4]]
    )
    write_definitions(
        world.devices_dir / "a.toml", [Wanted(u, "mtty", "mtty-1") for u in shuffled[4:]]
    )
    start_daemon(world)

    for round_number in (1, 2):
        world.sim.control.register("mtty")
        for uuid in uuids:
            world.recorder.wait_for_events(round_number, uuid, "started", "autostart")
        last = registrations(world.sim.control.uevents(), "/devices/virtual/mtty/mtty")[-1]
        created = [
            r.devpath.rsplit("/", 1)[-1]
            for r in last
            if r.subsystem == "mdev" and r.action == "add"
        ]
        assert created == uuids
        world.sim.control.unregister("mtty")
        for uuid in uuids:
            world.recorder.wait_for_events(round_number, uuid, "stopped", "kernel")


def test_unregister_makes_devices_inactive_and_reregistration_autostarts_again(
    world: Setup, start_daemon: StartDaemon
) -> None:
    auto, manual, transient = uuid_for(1), uuid_for(2), uuid_for(3)
    write_definitions(
        world.devices_dir / "a.toml",
        [Wanted(auto, "mtty", "mtty-1"), Wanted(manual, "mtty", "mtty-2", autostart=False)],
    )
    start_daemon(world)
    assert objects(world.address).devices[auto].active  # started at daemon start
    call(world.address, "start", manual)
    call(world.address, "create_device", "mtty", "mtty-1", uuid=transient)

    world.sim.control.unregister("mtty")

    for uuid in (auto, manual, transient):
        world.recorder.wait_for_events(1, uuid, "stopped", "kernel")
    wait_until(lambda: "mtty" not in objects(world.address).parents, what="the Parent object to go")
    shown = objects(world.address)
    assert transient not in shown.devices  # a transient device has nothing left to show
    for uuid in (auto, manual):
        device = shown.devices[uuid]
        assert (device.defined, device.active, device.sysfs_path) == (True, False, "")
        assert device.parent_object == "/"
    removed = {e.path for e in world.recorder.events(kind="removed")}
    assert parent_path("mtty") in removed
    assert agreement(world.sim, world.address) is None

    world.sim.control.register("mtty")

    # (Its start with the daemon was before the daemon was on the bus: no signal then.)
    world.recorder.wait_for_events(1, auto, "started", "autostart")
    _barrier(world)
    shown = objects(world.address)
    assert shown.devices[auto].active and shown.devices[auto].parent_object == parent_path("mtty")
    assert not shown.devices[manual].active  # not autostart: stays stopped
    assert transient not in shown.devices  # transient: gone for good
    assert "mtty" in shown.parents
    assert agreement(world.sim, world.address) is None


def test_a_reregistration_the_daemon_never_saw_the_gap_of_still_autostarts(
    world: Setup, start_daemon: StartDaemon
) -> None:
    """Unregister and register while the daemon is frozen: when it looks again the parent is
    there as before (it never sees it gone), but it is a new registration: autostart runs."""
    auto = uuid_for(1)
    write_definitions(world.devices_dir / "a.toml", [Wanted(auto, "mtty", "mtty-1")])
    daemon = start_daemon(world)
    assert objects(world.address).devices[auto].active

    daemon.process.send_signal(signal.SIGSTOP)
    try:
        world.sim.control.unregister("mtty")
        world.sim.control.register("mtty")
    finally:
        daemon.process.send_signal(signal.SIGCONT)

    world.recorder.wait_for_events(1, auto, "started", "autostart")
    assert attempts(world.sim, auto) == 2
    assert agreement(world.sim, world.address) is None
