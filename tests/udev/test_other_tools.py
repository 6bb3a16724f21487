# SPDX-License-Identifier: LGPL-2.1-or-later
"""Devices made and removed by other tools (here: writes straight into the emulated sysfs, as
`echo $uuid > create` or mdevctl would do) are reflected as objects and signals, and never
fought: mdevd does not remove what it did not define, nor recreate what someone removed."""

from __future__ import annotations

import pytest

from mdevd.bus.paths import device_path
from tests.support.waiting import wait_until
from tests.udev.conftest import Setup, StartDaemon
from tests.udev.support import Wanted, agreement, attempts, objects, uuid_for, write_definitions

pytestmark = pytest.mark.timeout(120, method="thread")


def _create(world: Setup, parent: str, type_id: str, uuid: str) -> None:
    (
        world.sim.root / "class/mdev_bus" / parent / "mdev_supported_types" / type_id / "create"
    ).write_text(uuid)


def _remove(world: Setup, uuid: str) -> None:
    (world.sim.root / "bus/mdev/devices" / uuid / "remove").write_text("1")


def _available(world: Setup, parent: str, type_id: str) -> int:
    types = objects(world.address).parents[parent]["Types"]
    return int(types[type_id]["available_instances"])


def test_a_device_made_and_removed_by_another_tool_is_an_object_while_it_exists(
    world: Setup, start_daemon: StartDaemon
) -> None:
    start_daemon(world)
    uuid = uuid_for(1, family=0xF0)
    before = _available(world, "mtty", "mtty-2")

    _create(world, "mtty", "mtty-2", uuid)

    (started,) = world.recorder.wait_for_events(1, uuid, "started")
    assert started.details == {"reason": "kernel"}
    assert started.path == device_path(uuid)
    assert any(e.path == device_path(uuid) for e in world.recorder.events(kind="added"))
    device = objects(world.address).devices[uuid]
    assert (device.active, device.defined, device.parent, device.type_id) == (
        True,
        False,
        "mtty",
        "mtty-2",
    )
    assert device.sysfs_path.endswith(f"/mtty/{uuid}")
    wait_until(
        lambda: _available(world, "mtty", "mtty-2") == before - 1 or None,
        what="the parent's Types to count the new device",
    )

    _remove(world, uuid)

    (stopped,) = world.recorder.wait_for_events(1, uuid, "stopped")
    assert stopped.details == {"reason": "kernel"}
    wait_until(lambda: uuid not in objects(world.address).devices or None, what="the object to go")
    assert any(e.path == device_path(uuid) for e in world.recorder.events(kind="removed"))
    assert agreement(world.sim, world.address) is None
    assert attempts(world.sim, uuid) == 1  # only the other tool's: mdevd did not touch it


def test_a_defined_device_removed_by_another_tool_is_not_recreated(
    world: Setup, start_daemon: StartDaemon
) -> None:
    auto = uuid_for(1)
    write_definitions(world.devices_dir / "a.toml", [Wanted(auto, "mtty", "mtty-1")])
    start_daemon(world)
    assert objects(world.address).devices[auto].active

    _remove(world, auto)

    world.recorder.wait_for_events(1, auto, "stopped", "kernel")
    # More kernel events, of other devices: still nobody recreates it.
    other = uuid_for(2, family=0xF0)
    _create(world, "mdpy", "mdpy-vga", other)
    world.recorder.wait_for_events(1, other, "started", "kernel")
    device = objects(world.address).devices[auto]
    assert (device.defined, device.active) == (True, False)
    assert attempts(world.sim, auto) == 1
    assert agreement(world.sim, world.address) is None


def test_another_tool_starting_a_defined_device_is_taken_as_it_is(
    world: Setup, start_daemon: StartDaemon
) -> None:
    manual = uuid_for(1)
    write_definitions(
        world.devices_dir / "a.toml", [Wanted(manual, "mtty", "mtty-1", autostart=False)]
    )
    start_daemon(world)

    _create(world, "mtty", "mtty-1", manual)

    world.recorder.wait_for_events(1, manual, "started", "kernel")
    device = objects(world.address).devices[manual]
    assert (device.defined, device.active) == (True, True)
    # And another tool stopping a device mdevd started is just as fine.
    _remove(world, manual)
    world.recorder.wait_for_events(1, manual, "stopped", "kernel")
    assert not objects(world.address).devices[manual].active
    assert attempts(world.sim, manual) == 1


def test_another_tool_starting_an_autostart_device_first_is_no_failure(
    world: Setup, start_daemon: StartDaemon
) -> None:
    """mdevctl's udev rule and mdevd both react to a registration: whoever creates the device
    first, it runs, and mdevd reports no failure for it. (Whether mdevd's own create then
    meets EEXIST depends on timing here; test_engine_races forces that case.)"""
    first, raced, last = uuid_for(1), uuid_for(2), uuid_for(3)
    world.sim.control.unregister("mtty")
    write_definitions(
        world.devices_dir / "a.toml",
        [Wanted(uuid, "mtty", "mtty-1") for uuid in (first, raced, last)],
    )
    start_daemon(world)
    # Every create takes a second, so the other tool's create of `raced` (through another
    # type's file) overlaps mdevd's autostart.
    world.sim.control.delay("create", 1.0)

    world.sim.control.register("mtty")
    _create(world, "mtty", "mtty-2", raced)

    # Autostart goes in UUID order: once `last` runs, mdevd's attempt at `raced` is over.
    world.recorder.wait_for_events(1, last, "started", "autostart", timeout=60)
    world.sim.control.delay("create", 0)
    assert world.recorder.events(raced, "start-failed") == []
    (started,) = world.recorder.events(raced, "started")
    assert started.details == {"reason": "kernel"}
    device = objects(world.address).devices[raced]
    assert (device.defined, device.active, device.type_id, device.last_error) == (
        True,
        True,
        "mtty-2",
        "",
    )
    assert agreement(world.sim, world.address) is None
