# SPDX-License-Identifier: LGPL-2.1-or-later
"""A re-read of a parent that a kernel event asked for never undoes an operation's own.

A device's uevent makes the engine read the device back and, when it changed, its parent's
types (their counts). That read runs in a worker thread while an operation on another device of
the same parent may be removing or creating: the read can start before the operation's effect
and finish after the operation has read the parent itself and replied. Applied then, it would
show the counts from before the operation (a client that just stopped the only device of a
type would see `available_instances` 0 for it). The interleaving is forced here with a kernel
layer whose parent read waits, after reading the emulated sysfs, until the operation is done.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mdevd.engine import Engine
from mdevd.kernel import Sysfs
from mdevd.model import Parent
from mdevd.store import DefinitionStore
from tests.support.sim import RunningSim, running_sim

#: One parent, a type with room for one device and another with room for several.
SCENARIO = """
[[parent]]
name = "duo"
devpath = "devices/virtual/duo/duo"
subsystem = "duo"
driver = "duo"
pools = { solo = 1, many = 8 }

[[parent.type]]
id = "duo-solo"
name = "one instance"
device_api = "vfio-pci"
pool = "solo"

[[parent.type]]
id = "duo-many"
name = "several instances"
device_api = "vfio-pci"
pool = "many"
"""

OURS = "7d1e0000-0000-4000-8000-000000000001"
OTHERS = "7d1e0000-0000-4000-8000-000000000002"


class HeldParentRead(Sysfs):
    """`read_parent` reads sysfs, then, while `hold` is set, waits for `release`."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.hold = False
        self.read_done = threading.Event()
        self.release = threading.Event()

    def read_parent(self, parent: str) -> Parent:
        read = super().read_parent(parent)
        if self.hold:
            self.hold = False
            self.read_done.set()
            self.release.wait(timeout=30)
        return read


@pytest.fixture(scope="module")
def sim() -> Iterator[RunningSim]:
    with running_sim(scenario_text=SCENARIO) as running:
        yield running


def test_a_stale_parent_read_does_not_undo_a_stop(sim: RunningSim, tmp_path: Path) -> None:
    kernel = HeldParentRead(sim.root)
    engine = Engine(kernel, DefinitionStore([tmp_path]))

    def solo_available() -> int:
        return engine.parents()["duo"].types["duo-solo"].available_instances

    async def scenario() -> None:
        await engine.start()
        await engine.create_device("duo", "duo-solo", uuid=OURS)
        assert solo_available() == 0
        # Another tool creates a device on the same parent; its uevent makes the engine read
        # the device, then the parent (while ours still exists: duo-solo is full).
        kernel.hold = True
        kernel.create("duo", "duo-many", OTHERS)
        engine.handle_uevent("add", "mdev", f"/devices/virtual/duo/duo/{OTHERS}", {})
        await asyncio.to_thread(kernel.read_done.wait, 30)
        await engine.stop_device(OURS)
        assert solo_available() == 1  # Stop's own read of the parent
        kernel.release.set()
        await engine.wait_idle()

    try:
        asyncio.run(scenario())
        assert kernel.read_type("duo", "duo-solo").available_instances == 1
        assert solo_available() == 1
        assert engine.device(OTHERS).active  # the other tool's device was taken in
    finally:
        engine.close()
        for uuid in kernel.device_uuids():
            kernel.remove(uuid, check_busy=False)


def test_a_stale_parent_read_does_not_undo_a_rescan(sim: RunningSim, tmp_path: Path) -> None:
    kernel = HeldParentRead(sim.root)
    engine = Engine(kernel, DefinitionStore([tmp_path]))

    def solo_available() -> int:
        return engine.parents()["duo"].types["duo-solo"].available_instances

    async def scenario() -> None:
        await engine.start()
        await engine.create_device("duo", "duo-solo", uuid=OURS)
        kernel.hold = True
        kernel.create("duo", "duo-many", OTHERS)
        engine.handle_uevent("add", "mdev", f"/devices/virtual/duo/duo/{OTHERS}", {})
        await asyncio.to_thread(kernel.read_done.wait, 30)
        # Another tool removes our device; a rescan (its uevents, an overflow) sees it gone.
        kernel.remove(OURS, check_busy=False)
        await engine.resync()
        assert solo_available() == 1
        kernel.release.set()
        await engine.wait_idle()

    try:
        asyncio.run(scenario())
        assert solo_available() == 1
        assert OURS not in engine.devices()
    finally:
        engine.close()
        for uuid in kernel.device_uuids():
            kernel.remove(uuid, check_busy=False)
