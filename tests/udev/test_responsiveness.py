# SPDX-License-Identifier: LGPL-2.1-or-later
"""Kernel events never hold method calls up for long, and method calls never lose an event.

- While a registration's autostart of 64 slow creates runs, reads answer, a create on another
  parent is done, and a Start on the same parent gets its turn between two of autostart's
  devices: each answers while the kernel still has fewer than the 64 devices.
- Another tool creating and removing devices while clients create and stop theirs: at the
  end the bus shows what the kernel has, each device got exactly its own events, and none of
  the clients' devices was reported as changed by the kernel.
"""

from __future__ import annotations

import threading

import pytest

from tests.support.waiting import wait_until
from tests.udev.conftest import Setup, StartDaemon
from tests.udev.support import (
    Wanted,
    agreement,
    call,
    kernel_devices,
    objects,
    uuid_for,
    write_definitions,
)

pytestmark = pytest.mark.timeout(180, method="thread")

COUNT = 64


def _on_mtty(world: Setup) -> int:
    return sum(1 for parent in kernel_devices(world.sim).values() if parent == "mtty")


def test_method_calls_are_answered_during_a_long_autostart(
    world: Setup, start_daemon: StartDaemon
) -> None:
    world.sim.control.unregister("mtty")
    autostart = [Wanted(uuid_for(i), "mtty", "mtty-1") for i in range(COUNT)]
    manual = uuid_for(1, family=0xC)
    write_definitions(
        world.devices_dir / "a.toml", [*autostart, Wanted(manual, "mtty", "mtty-1", False)]
    )
    start_daemon(world)
    world.sim.control.delay("create", 0.08)  # the autostart takes >= 5 s

    world.sim.control.register("mtty")
    wait_until(lambda: _on_mtty(world) >= 2 or None, what="autostart to be under way")

    shown = objects(world.address)  # GetManagedObjects
    assert _on_mtty(world) < COUNT
    assert "mtty" in shown.parents
    assert call(world.address, "get_device", autostart[-1].uuid).endswith("_00000000003f")
    assert _on_mtty(world) < COUNT

    other = uuid_for(2, family=0xC)
    call(world.address, "create_device", "mdpy", "mdpy-vga", uuid=other)
    assert _on_mtty(world) < COUNT
    assert kernel_devices(world.sim)[other] == "mdpy"

    call(world.address, "start", manual)  # same parent: waits for one create, not all
    assert _on_mtty(world) < COUNT
    assert kernel_devices(world.sim)[manual] == "mtty"

    for wanted in autostart:
        world.recorder.wait_for_events(1, wanted.uuid, "started", "autostart", timeout=120)
    world.sim.control.delay("create", 0)
    wait_until(lambda: agreement(world.sim, world.address) is None or None, what="agreement")


def test_clients_and_another_tool_at_once(world: Setup, start_daemon: StartDaemon) -> None:
    start_daemon(world)
    rounds = 20
    foreign = [uuid_for(i, family=0xF0) for i in range(rounds)]
    ours = [uuid_for(i, family=0xC1) for i in range(rounds)]
    create = world.sim.root / "class/mdev_bus/mtty/mdev_supported_types/mtty-2/create"
    problems: list[BaseException] = []

    def other_tool() -> None:
        try:
            for uuid in foreign:
                create.write_text(uuid)
                (world.sim.root / "bus/mdev/devices" / uuid / "remove").write_text("1")
        except BaseException as exc:
            problems.append(exc)

    thread = threading.Thread(target=other_tool)
    thread.start()
    for uuid in ours:
        call(world.address, "create_device", "mtty", "mtty-1", uuid=uuid)
        call(world.address, "stop", uuid)
    thread.join(60)
    assert not problems

    # A marker made after everything else: once it is reported, so is all before it.
    marker = uuid_for(1, family=0xBA)
    (world.sim.root / "class/mdev_bus/mdpy/mdev_supported_types/mdpy-vga/create").write_text(marker)
    world.recorder.wait_for_events(1, marker, "started", "kernel")
    wait_until(lambda: agreement(world.sim, world.address) is None or None, what="agreement")
    for uuid in ours:
        assert [(s.event, s.details["reason"]) for s in world.recorder.events(uuid)] == [
            ("started", "api"),
            ("stopped", "api"),
        ]
    for uuid in foreign:
        assert [(s.event, s.details["reason"]) for s in world.recorder.events(uuid)] in (
            [("started", "kernel"), ("stopped", "kernel")],
            [],  # created and removed between two looks: nothing to report
        )
    shown = objects(world.address).devices
    assert not any(uuid in shown for uuid in ours + foreign)
