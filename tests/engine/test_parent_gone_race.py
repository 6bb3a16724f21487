# SPDX-License-Identifier: LGPL-2.1-or-later
"""A parent read that started before a rescan never brings back a parent the rescan saw gone.

The engine reads a parent again after its own operations, after autostart, and when a device of
it changed; such a read runs in a worker thread. When it started before the driver unloaded and
is applied while a rescan (the unregistration's event) is reading the kernel, the rescan's
snapshot is the newer look: keeping the older read instead left the parent in view for good
(its object exported, its devices' `ParentObject` set, an autostart device `inactive` instead
of `waiting`). The interleaving is forced with a kernel layer whose reads wait when told to.
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

SCENARIO = """
[[parent]]
name = "gone"
devpath = "devices/virtual/gone/gone"
subsystem = "gone"
driver = "gone"
max_instances = 4

[[parent.type]]
id = "gone-1"
name = "a type"
device_api = "vfio-pci"
"""

OTHERS = "9a7e0000-0000-4000-8000-000000000001"
WAITING = "9a7e0000-0000-4000-8000-000000000002"


class HeldReads(Sysfs):
    """`read_parent` and `parent_names` read sysfs, then wait for their `release` while told
    to hold."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.hold_parent = False
        self.parent_read = threading.Event()
        self.release_parent = threading.Event()
        self.hold_names = False
        self.names_read = threading.Event()
        self.release_names = threading.Event()

    def read_parent(self, parent: str) -> Parent:
        read = super().read_parent(parent)
        if self.hold_parent:
            self.hold_parent = False
            self.parent_read.set()
            self.release_parent.wait(timeout=30)
        return read

    def parent_names(self) -> list[str]:
        names = super().parent_names()
        if self.hold_names:
            self.hold_names = False
            self.names_read.set()
            self.release_names.wait(timeout=30)
        return names


@pytest.fixture(scope="module")
def sim() -> Iterator[RunningSim]:
    with running_sim(scenario_text=SCENARIO) as running:
        yield running


def test_an_older_parent_read_does_not_outlive_the_parent(sim: RunningSim, tmp_path: Path) -> None:
    kernel = HeldReads(sim.root)
    engine = Engine(kernel, DefinitionStore([tmp_path]))

    async def scenario() -> None:
        await engine.start()
        await engine.define_device("gone", "gone-1", uuid=WAITING, autostart=False)
        # Another tool's device: its uevent makes the engine read it, then its parent (held
        # once read, the parent still there).
        kernel.hold_parent = True
        kernel.create("gone", "gone-1", OTHERS)
        engine.handle_uevent("add", "mdev", f"/devices/virtual/gone/gone/{OTHERS}", {})
        await asyncio.to_thread(kernel.parent_read.wait, 30)
        # The driver unloads; the rescan its event asks for reads the kernel (held too).
        sim.control.unregister("gone")
        kernel.hold_names = True
        rescan = asyncio.get_running_loop().create_task(engine.resync())
        await asyncio.to_thread(kernel.names_read.wait, 30)
        # The older read is applied while the rescan is still reading.
        kernel.release_parent.set()
        await asyncio.sleep(0.2)
        kernel.release_names.set()
        await rescan
        await engine.wait_idle()

    try:
        asyncio.run(scenario())
        assert "gone" not in engine.parents()
        assert not engine.device(WAITING).active
        assert OTHERS not in engine.devices()
    finally:
        engine.close()
        sim.control.register("gone")
        for uuid in kernel.device_uuids():
            kernel.remove(uuid, check_busy=False)
