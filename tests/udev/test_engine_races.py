# SPDX-License-Identifier: LGPL-2.1-or-later
"""Races between method calls and kernel events, forced in-process: the real engine on the
emulated kernel, with one of the kernel layer's functions paused or preceded by another
tool's write at a chosen moment (the clearest way to make the interleaving deterministic).

- A rescan whose snapshot was read before an operation finished must not report the
  operation's own effect as a change made by someone else (method calls never miss an event,
  and events never rewrite what a method call did).
- Another tool creating a device between autostart's decision and its create is no failure.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mdevd.engine import DeviceEvent, Engine, EngineSettings, NullListener
from mdevd.kernel import Sysfs
from mdevd.model import ActiveDevice, DeviceState
from mdevd.store import DefinitionStore
from tests.support.sim import RunningSim, running_sim
from tests.udev.support import SCENARIO, Wanted, uuid_for, write_definitions

pytestmark = pytest.mark.timeout(60, method="thread")


class Recorder(NullListener):
    """An engine listener keeping every DeviceEvent as (uuid, event, reason)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []

    def device_event(self, state: DeviceState, event: DeviceEvent) -> None:
        self.events.append((state.uuid, event.kind, event.reason))

    def of(self, uuid: str) -> list[tuple[str, str]]:
        return [(event, reason) for u, event, reason in self.events if u == uuid]


@pytest.fixture
def sim() -> Iterator[RunningSim]:
    with running_sim(SCENARIO) as running:
        yield running


def _engine(sim: RunningSim, devices_dir: Path) -> tuple[Engine, Recorder]:
    kernel = Sysfs(sim.root, sim.root / ".sim" / "dev")
    engine = Engine(kernel, DefinitionStore([devices_dir]), EngineSettings(io_timeout=20))
    recorder = Recorder()
    engine.subscribe(recorder)
    return engine, recorder


class Paused:
    """Wraps a kernel-layer function: the first call does its work, then waits for `go`."""

    def __init__(self, function: Callable[..., Any]) -> None:
        self.function = function
        self.done = threading.Event()
        self.go = threading.Event()

    def __call__(self, *args: Any) -> Any:
        result = self.function(*args)
        self.done.set()
        if not self.go.wait(20):
            raise TimeoutError("never released")
        return result


async def _wait(event: threading.Event) -> None:
    assert await asyncio.get_running_loop().run_in_executor(None, event.wait, 20)


def test_a_rescan_read_before_a_create_does_not_report_it_stopped(
    sim: RunningSim, tmp_path: Path
) -> None:
    uuid = uuid_for(1)

    async def scenario() -> Recorder:
        engine, recorder = _engine(sim, tmp_path)
        await engine.start()
        paused = Paused(engine.kernel.list_devices)
        engine.kernel.list_devices = paused  # type: ignore[method-assign]
        rescan = asyncio.create_task(engine.resync())
        await _wait(paused.done)  # the rescan has read the kernel: no device yet
        engine.kernel.list_devices = paused.function  # type: ignore[method-assign]
        await engine.create_device("mdpy", "mdpy-vga", uuid=uuid)
        paused.go.set()
        await rescan
        assert engine.device(uuid).active
        await engine.resync()  # a fresh look agrees, and reports nothing either
        assert engine.device(uuid).active
        engine.close()
        return recorder

    recorder = asyncio.run(scenario())
    assert recorder.of(uuid) == [("started", "api")]


def test_a_rescan_read_before_a_stop_does_not_report_it_started(
    sim: RunningSim, tmp_path: Path
) -> None:
    uuid = uuid_for(1)

    async def scenario() -> tuple[Recorder, dict[str, DeviceState]]:
        engine, recorder = _engine(sim, tmp_path)
        await engine.start()
        await engine.create_device("mdpy", "mdpy-vga", uuid=uuid)
        paused = Paused(engine.kernel.list_devices)
        engine.kernel.list_devices = paused  # type: ignore[method-assign]
        rescan = asyncio.create_task(engine.resync())
        await _wait(paused.done)  # the rescan has read the kernel: the device is there
        engine.kernel.list_devices = paused.function  # type: ignore[method-assign]
        await engine.stop_device(uuid)
        paused.go.set()
        await rescan
        devices = engine.devices()
        engine.close()
        return recorder, devices

    recorder, devices = asyncio.run(scenario())
    assert uuid not in devices
    assert recorder.of(uuid) == [("started", "api"), ("stopped", "api")]


def test_a_device_another_tool_creates_just_before_autostart_does_is_adopted(
    sim: RunningSim, tmp_path: Path
) -> None:
    """The other tool's create lands between autostart's check and its own create: the
    kernel answers EEXIST, and the device, which runs, counts as started (by the kernel)."""
    uuid = uuid_for(1)
    write_definitions(tmp_path / "a.toml", [Wanted(uuid, "mtty", "mtty-1")])
    sim.control.unregister("mtty")
    other_tool = sim.root / "class/mdev_bus/mtty/mdev_supported_types/mtty-2/create"

    async def scenario() -> tuple[Recorder, DeviceState]:
        engine, recorder = _engine(sim, tmp_path)
        await engine.start()
        real_create = engine.kernel.create

        def create_after_the_other_tool(
            parent: str, type_id: str, uuid: str, placement: str = ""
        ) -> ActiveDevice:
            other_tool.write_text(uuid)
            return real_create(parent, type_id, uuid, placement)

        engine.kernel.create = create_after_the_other_tool  # type: ignore[method-assign]
        await asyncio.get_running_loop().run_in_executor(None, sim.control.register, "mtty")
        await engine.resync()
        await engine.wait_idle()
        state = engine.device(uuid)
        engine.close()
        return recorder, state

    recorder, state = asyncio.run(scenario())
    assert recorder.of(uuid) == [("started", "kernel")]
    assert (state.active, state.defined, state.type_id, state.last_error) == (
        True,
        True,
        "mtty-2",
        "",
    )
