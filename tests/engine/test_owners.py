# SPDX-License-Identifier: LGPL-2.1-or-later
"""Owners and lifetimes in the engine (mdevd.owners): recorded with each device made or defined
through mdevd, kept across a daemon restart within one boot, dropped with the device; a device
whose lifetime ended is removed (`owner-gone`), but not while a VM holds it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from mdevd.engine import DeviceEvent, Engine, EngineSettings, NullListener, Reason
from mdevd.errors import InvalidArgument
from mdevd.kernel import Sysfs
from mdevd.model import DeviceState
from mdevd.owners import Owner, OwnerRecord, unit_of_cgroup
from mdevd.store import DefinitionStore
from tests.support.sim import RunningSim, running_sim

NOVA = Owner("nova", 0)
BY_CONNECTION = Owner("uid:1000", 1000, "connection", ":1.42")


class Events(NullListener):
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []

    def device_event(self, state: DeviceState, event: DeviceEvent) -> None:
        self.seen.append((state.uuid, event.kind, event.reason))


@pytest.fixture(scope="module")
def sim() -> Iterator[RunningSim]:
    with running_sim("mtty") as running:
        yield running


def _engine(
    sim: RunningSim, tmp_path: Path, boot: str = "boot-1", release_poll: float = 1.0
) -> Engine:
    return Engine(
        Sysfs(sim.root, sim.root / ".sim" / "dev"),
        DefinitionStore([tmp_path / "devices.d"]),
        EngineSettings(release_poll=release_poll),
        owners=OwnerRecord(tmp_path / "owners.json", boot=boot),
    )


def test_an_owner_is_kept_across_a_restart_and_dropped_with_its_device(
    sim: RunningSim, tmp_path: Path
) -> None:
    async def scenario() -> None:
        engine = _engine(sim, tmp_path)
        await engine.start()
        made = await engine.create_device("mtty", "mtty-1", owner=NOVA)
        defined = await engine.define_device("mtty", "mtty-1", owner=Owner("kubevirt", 0))
        assert (made.owner, made.lifetime) == ("nova", "manual")
        assert engine.device(defined.uuid).owner == "kubevirt"
        await engine.ownership.flush()  # as the daemon does when it stops
        engine.close()
        again = _engine(sim, tmp_path)
        await again.start()
        assert again.ownership.get(made.uuid) == NOVA
        assert again.device(defined.uuid).owner == "kubevirt"
        await again.stop_device(made.uuid)
        await again.undefine(defined.uuid)
        assert again.ownership.all() == {}
        await again.ownership.flush()
        again.close()
        assert json.loads((tmp_path / "owners.json").read_text())["devices"] == {}

    asyncio.run(scenario())


def test_owners_from_an_earlier_boot_are_dropped(sim: RunningSim, tmp_path: Path) -> None:
    async def scenario() -> None:
        engine = _engine(sim, tmp_path, boot="boot-1")
        await engine.start()
        made = await engine.create_device("mtty", "mtty-1", owner=NOVA)
        await engine.ownership.flush()
        engine.close()
        # The device still runs (the emulated kernel did not reboot), but the record says
        # another boot: its owner is not believed.
        later = _engine(sim, tmp_path, boot="boot-2")
        await later.start()
        assert later.ownership.get(made.uuid) is None
        await later.stop_device(made.uuid)
        later.close()

    asyncio.run(scenario())


def test_a_lifetime_is_for_transient_devices(sim: RunningSim, tmp_path: Path) -> None:
    async def scenario() -> None:
        engine = _engine(sim, tmp_path)
        await engine.start()
        with pytest.raises(InvalidArgument):
            await engine.define_device("mtty", "mtty-1", owner=BY_CONNECTION)
        engine.close()

    asyncio.run(scenario())


def test_an_ended_lifetime_removes_the_device_once_released(
    sim: RunningSim, tmp_path: Path
) -> None:
    async def scenario() -> None:
        engine = _engine(sim, tmp_path, release_poll=0.05)
        events = Events()
        engine.subscribe(events)
        await engine.start()
        kept = await engine.create_device("mtty", "mtty-1", owner=NOVA)
        ending = await engine.create_device("mtty", "mtty-1", owner=BY_CONNECTION)
        assert engine.ownership.owned_by_connection(":1.42") == [ending.uuid]
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sim.control.hold, ending.uuid)
        engine.end_lifetime(ending.uuid)
        engine.end_lifetime(kept.uuid)  # a manual lifetime never ends
        await asyncio.sleep(0.5)
        assert engine.device(ending.uuid).active  # a VM holds it: not yanked
        await loop.run_in_executor(None, sim.control.release, ending.uuid)
        for _ in range(100):
            if ending.uuid not in engine.devices():
                break
            await asyncio.sleep(0.05)
        assert ending.uuid not in engine.devices()
        assert (ending.uuid, "stopped", Reason.OWNER_GONE) in events.seen
        assert engine.device(kept.uuid).active
        await engine.stop_device(kept.uuid)
        engine.close()

    asyncio.run(scenario())


def test_a_unit_is_read_from_a_processs_cgroup() -> None:
    assert unit_of_cgroup("0::/system.slice/libvirtd.service\n") == "libvirtd.service"
    assert (
        unit_of_cgroup("0::/machine.slice/machine-qemu\\x2d1\\x2dvm.scope/libvirt/emulator\n")
        == "machine-qemu\\x2d1\\x2dvm.scope"
    )
    assert unit_of_cgroup("0::/user.slice/user-1000.slice/session-3.scope\n") == "session-3.scope"
    assert unit_of_cgroup("0::/\n") == ""
    assert unit_of_cgroup("12:pids:/system.slice/x.service\n") == ""  # cgroup v1 lines


def test_defining_a_transient_device_ends_its_lifetime(sim: RunningSim, tmp_path: Path) -> None:
    async def scenario() -> None:
        engine = _engine(sim, tmp_path, release_poll=0.05)
        await engine.start()
        made = await engine.create_device("mtty", "mtty-1", owner=BY_CONNECTION)
        await engine.define_active(made.uuid)
        assert engine.device(made.uuid).lifetime == "manual"
        await engine.undefine(made.uuid)
        # The connection it once lived by is gone: nothing ends the device now.
        assert engine.ownership.owned_by_connection(":1.42") == []
        engine.end_lifetime(made.uuid)
        await asyncio.sleep(0.3)
        assert engine.device(made.uuid).active
        await engine.stop_device(made.uuid)
        engine.close()

    asyncio.run(scenario())
