# SPDX-License-Identifier: LGPL-2.1-or-later
"""A resync racing the engine's own operations never undoes them.

A resync reads the kernel in a worker thread; an API call can create a device while that read
is in progress, and finish before the resync looks at its snapshot. The snapshot then lacks a
device that exists: acting on it would report the new device as removed by someone else (and
fail the call that created it). The interleaving is forced here with a kernel layer whose
device listing waits, after reading the emulated sysfs, until the create has finished.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mdevd.engine import DeviceEvent, Engine
from mdevd.kernel import Sysfs
from mdevd.model import ActiveDevice, DeviceState, Parent
from mdevd.store import DefinitionStore
from tests.support.sim import RunningSim, running_sim

UUID = "5e7c0000-0000-4000-8000-000000000001"


class HeldListing(Sysfs):
    """`list_devices` reads sysfs, then waits for `release` before answering."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.hold = False
        self.read_done = threading.Event()
        self.release = threading.Event()

    def list_devices(self) -> dict[str, ActiveDevice]:
        devices = super().list_devices()
        if self.hold:
            self.read_done.set()
            self.release.wait(timeout=30)
        return devices


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []

    def device_changed(self, state: DeviceState) -> None:
        pass

    def device_removed(self, uuid: str) -> None:
        self.seen.append((uuid, "removed", ""))

    def parent_changed(self, parent: Parent) -> None:
        pass

    def parent_removed(self, name: str) -> None:
        pass

    def device_event(self, state: DeviceState, event: DeviceEvent) -> None:
        self.seen.append((state.uuid, event.kind, event.reason))


@pytest.fixture(scope="module")
def sim() -> Iterator[RunningSim]:
    with running_sim("mtty") as running:
        yield running


def test_a_stale_snapshot_does_not_undo_a_create(sim: RunningSim, tmp_path: Path) -> None:
    kernel = HeldListing(sim.root)
    engine = Engine(kernel, DefinitionStore([tmp_path]))
    events = Events()
    engine.subscribe(events)

    async def scenario() -> None:
        await engine.start()
        kernel.hold = True
        resync = asyncio.create_task(engine.resync())
        await asyncio.to_thread(kernel.read_done.wait, 30)  # the snapshot lacks the device
        kernel.hold = False
        state = await engine.create_device("mtty", "mtty-1", uuid=UUID)
        assert state.active
        kernel.release.set()
        await resync

    try:
        asyncio.run(scenario())
        assert UUID in kernel.device_uuids()
        assert engine.device(UUID).active
        assert events.seen == [(UUID, "started", "api")]
    finally:
        engine.close()
        if UUID in kernel.device_uuids():
            kernel.remove(UUID, check_busy=False)


def test_a_stale_snapshot_does_not_bring_back_a_stopped_device(
    sim: RunningSim, tmp_path: Path
) -> None:
    kernel = HeldListing(sim.root)
    engine = Engine(kernel, DefinitionStore([tmp_path]))
    events = Events()
    engine.subscribe(events)

    async def scenario() -> None:
        await engine.start()
        await engine.create_device("mtty", "mtty-1", uuid=UUID)
        kernel.hold = True
        resync = asyncio.create_task(engine.resync())
        await asyncio.to_thread(kernel.read_done.wait, 30)  # the snapshot still has the device
        kernel.hold = False
        await engine.stop_device(UUID)
        kernel.release.set()
        await resync

    try:
        asyncio.run(scenario())
        assert UUID not in kernel.device_uuids()
        assert UUID not in engine.devices()
        assert events.seen == [
            (UUID, "started", "api"),
            (UUID, "stopped", "api"),
            (UUID, "removed", ""),
        ]
    finally:
        engine.close()
        if UUID in kernel.device_uuids():
            kernel.remove(UUID, check_busy=False)
