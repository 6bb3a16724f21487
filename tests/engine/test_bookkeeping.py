# SPDX-License-Identifier: LGPL-2.1-or-later
"""The engine's per-UUID bookkeeping does not grow with the number of UUIDs ever used.

A daemon runs for months and managers create devices with fresh UUIDs: locks, records of
operations a concurrent kernel read must not undo, and events awaited from the kernel must
all go once a device is gone, or memory grows with every create (the benchmark's cycles row
shows the daemon's resident memory; this shows where it must not go).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from mdevd.engine import Engine
from mdevd.kernel import Sysfs
from mdevd.store import DefinitionStore
from tests.support.sim import RunningSim, running_sim

CYCLES = 300


@pytest.fixture(scope="module")
def sim() -> Iterator[RunningSim]:
    # No uevents: the events an operation awaits from the kernel never come.
    with running_sim("mtty", uevents="none") as running:
        yield running


def test_create_and_stop_with_fresh_uuids_leaves_nothing_behind(
    sim: RunningSim, tmp_path: Path
) -> None:
    engine = Engine(Sysfs(sim.root), DefinitionStore([tmp_path]))
    engine.ledger.max_expected = 16

    async def cycles() -> None:
        await engine.start()
        for index in range(CYCLES):
            uuid = f"b00c0000-0000-4000-8000-{index:012x}"
            await engine.create_device("mtty", "mtty-1", uuid=uuid)
            await engine.stop_device(uuid)

    try:
        asyncio.run(cycles())
        assert engine.devices() == {}
        assert len(engine.uuid_locks) == 0
        ledger = engine.ledger.size()
        assert ledger.touched == 0 and ledger.touched_parents == 0
        assert ledger.in_flight == 0
        assert ledger.early_events == 0
        # Bounded even though the kernel's events never arrive here.
        assert 0 < ledger.expected_events <= 16
        # No last error, no attributes of a device that is gone.
        assert engine.remembered() == set()
    finally:
        engine.close()
