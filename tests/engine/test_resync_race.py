"""A resync whose kernel snapshot predates an operation's effect must not undo that effect.

A resync reads the kernel in a worker thread while the loop goes on serving calls. If a create
or a stop completes meanwhile, the snapshot is stale for that UUID: taking it for a change made
by someone else would report a just-created device as gone (and fail the create's own reply
with an internal error) or a just-removed one as running again.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from mdevd.engine import Engine
from mdevd.kernel import Sysfs
from mdevd.store import DefinitionStore
from tests.support.sim import running_sim

pytestmark = pytest.mark.timeout(60)


async def _with_stale_resync(engine: Engine, operation: str, uuid: str) -> None:
    """Start a resync that reads the kernel, then waits; run `operation`; let the resync end."""
    read, release = threading.Event(), threading.Event()
    real_snapshot = engine._snapshot_kernel

    def stale_snapshot() -> tuple[object, object]:
        snapshot = real_snapshot()
        read.set()
        release.wait(30)
        return snapshot

    engine._snapshot_kernel = stale_snapshot  # type: ignore[assignment,method-assign]
    engine.request_resync()
    await asyncio.get_running_loop().run_in_executor(None, read.wait, 30)
    engine._snapshot_kernel = real_snapshot  # type: ignore[method-assign]
    if operation == "create":
        await engine.create_device("mtty", "mtty-1", uuid=uuid)
    else:
        await engine.stop_device(uuid)
    release.set()
    await engine.wait_idle()


@pytest.mark.parametrize("operation", ["create", "stop"])
def test_a_stale_snapshot_does_not_undo_an_operation(tmp_path: Path, operation: str) -> None:
    uuid = "5b2f7e4c-1c0a-4d3e-9f8b-2a6c4e1d0b7a"
    with running_sim("mtty", uevents="none") as sim:

        async def main() -> tuple[bool, bool]:
            engine = Engine(Sysfs(sim.root), DefinitionStore([tmp_path], write_dir=tmp_path))
            await engine.start()
            try:
                if operation == "stop":
                    await engine.create_device("mtty", "mtty-1", uuid=uuid)
                await _with_stale_resync(engine, operation, uuid)
                in_kernel = (sim.root / "bus/mdev/devices" / uuid).exists()
                state = engine.devices().get(uuid)
                return in_kernel, state is not None and state.active
            finally:
                engine.close()

        in_kernel, active = asyncio.run(main())
    assert in_kernel == (operation == "create")
    assert active == in_kernel
