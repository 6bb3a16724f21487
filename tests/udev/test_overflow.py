# SPDX-License-Identifier: LGPL-2.1-or-later
"""When the uevent socket overflows (ENOBUFS), the daemon rescans everything.

The daemon is given a tiny receive buffer and frozen (SIGSTOP); the buffer is filled with
events it has no use for (synthetic `change` events of a vfio group), so that what happens next
is lost: the parent re-registers and another tool creates a device. Once thawed, the daemon
reads a few useless events and the overflow: only a full rescan can tell it what happened.
"""

from __future__ import annotations

import signal

import pytest

from tests.support.waiting import wait_until
from tests.udev.conftest import Setup, StartDaemon
from tests.udev.support import Wanted, agreement, attempts, objects, uuid_for, write_definitions

pytestmark = pytest.mark.timeout(120, method="thread")


def test_lost_events_are_made_up_for_by_a_full_rescan(
    world: Setup, start_daemon: StartDaemon
) -> None:
    auto, foreign = uuid_for(1), uuid_for(2, family=0xF0)
    write_definitions(world.devices_dir / "a.toml", [Wanted(auto, "mtty", "mtty-1")])
    daemon = start_daemon(world, uevent_receive_buffer=4096)
    group = objects(world.address).devices[auto].iommu_group
    filler = world.sim.root / "devices/virtual/vfio" / str(group) / "uevent"

    daemon.process.send_signal(signal.SIGSTOP)
    try:
        for _ in range(300):
            filler.write_text("change")
        world.sim.control.unregister("mtty")
        world.sim.control.register("mtty")
        create = world.sim.root / "class/mdev_bus/mdpy/mdev_supported_types/mdpy-vga/create"
        create.write_text(foreign)
    finally:
        daemon.process.send_signal(signal.SIGCONT)

    world.recorder.wait_for_events(1, auto, "started", "autostart")
    world.recorder.wait_for_events(1, foreign, "started", "kernel")
    assert "receive buffer overflow" in daemon.log()
    wait_until(lambda: agreement(world.sim, world.address) is None or None, what="agreement")
    assert attempts(world.sim, auto) == 2  # once with the daemon, once for the new registration
    shown = objects(world.address).devices
    assert shown[auto].active and shown[foreign].active and not shown[foreign].defined
