# SPDX-License-Identifier: LGPL-2.1-or-later
"""The storm: 64 autostart definitions on one parent, and its driver unloaded and loaded 50
times. Every registration starts every device exactly once (counted in the emulated kernel's
uevent log: one create, one bind per device per registration), and at the end the kernel and
the daemon's objects agree. Then the same cycles back to back, without waiting for autostart:
never more than one create per device per registration, and agreement at the end."""

from __future__ import annotations

import os
from collections import Counter

import pytest

from tests.support.waiting import wait_until
from tests.udev.conftest import Setup, StartDaemon
from tests.udev.support import (
    Wanted,
    agreement,
    kernel_devices,
    mdev_events,
    objects,
    registrations,
    uuid_for,
    write_definitions,
)

pytestmark = pytest.mark.timeout(600, method="thread")

DEVICES = 64
CYCLES = 50
RAPID_CYCLES = 10
MTTY = "/devices/virtual/mtty/mtty"


def _all_up(world: Setup, uuids: list[str]) -> bool | None:
    # One readdir while waiting (every lookup costs the emulation time the daemon needs).
    listed = os.listdir(world.sim.root / "class/mdev_bus/mtty/mdev_supported_types/mtty-1/devices")
    if len(listed) < len(uuids):
        return None
    present = kernel_devices(world.sim)
    return all(present.get(uuid) == "mtty" for uuid in uuids) or None


def test_unregister_register_storm(world: Setup, start_daemon: StartDaemon) -> None:
    uuids = [uuid_for(i) for i in range(DEVICES)]
    write_definitions(
        world.devices_dir / "storm.toml", [Wanted(u, "mtty", "mtty-1") for u in uuids]
    )
    start_daemon(world)
    assert _all_up(world, uuids)

    for _ in range(CYCLES):
        world.sim.control.unregister("mtty")
        world.sim.control.register("mtty")
        wait_until(lambda: _all_up(world, uuids), what="all 64 devices", timeout=60, interval=0.1)

    segments = registrations(world.sim.control.uevents(), MTTY)
    assert len(segments) == CYCLES + 1  # the registration at mount time, then one per cycle
    for number, segment in enumerate(segments):
        adds = Counter(
            r.devpath.rsplit("/", 1)[-1]
            for r in segment
            if r.subsystem == "mdev" and r.action == "add"
        )
        binds = Counter(
            r.devpath.rsplit("/", 1)[-1]
            for r in segment
            if r.subsystem == "mdev" and r.action == "bind"
        )
        assert adds == binds == Counter(uuids), f"registration {number}"
    for uuid in uuids:
        world.recorder.wait_for_events(CYCLES, uuid, "started", "autostart")
        world.recorder.wait_for_events(CYCLES, uuid, "stopped", "kernel")
    wait_until(lambda: agreement(world.sim, world.address) is None or None, what="agreement")
    assert all(objects(world.address).devices[u].active for u in uuids)

    # Back to back: the daemon falls behind, registrations end while autostart runs.
    before = len(world.sim.control.uevents())
    for _ in range(RAPID_CYCLES):
        world.sim.control.unregister("mtty")
        world.sim.control.register("mtty")
    wait_until(
        lambda: _all_up(world, uuids), what="all 64 devices after the rapid cycles", timeout=120
    )
    log = world.sim.control.uevents()[before:]
    for segment in registrations(log, MTTY)[1:]:
        for uuid in uuids:
            assert len(mdev_events(segment, uuid, "add")) <= 1
    wait_until(
        lambda: agreement(world.sim, world.address) is None or None, what="agreement", timeout=60
    )
    shown = objects(world.address)
    assert all(shown.devices[u].active and shown.devices[u].defined for u in uuids)
    assert "mtty" in shown.parents
