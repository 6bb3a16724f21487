# SPDX-License-Identifier: LGPL-2.1-or-later
"""`kill -9` of the daemon in the middle of define/update/undefine storms; then a restart and a
full consistency check.

Each trial starts the daemon on a fresh definitions directory, lets four clients storm it
(each owns its UUIDs, so every UUID's operations are sequential and its expected state is
well defined), kills the daemon with SIGKILL at a random moment, restarts it and checks:

- **files**: every definition file is whole (the daemon and `mdevd check-config` read every
  one of them without a problem) and no temporary file is left;
- **no lost or torn definition**: each UUID's definition (defined or not, type, attributes) is
  what its last acknowledged operation left, or, if an operation was in flight at the kill,
  what that operation would have left;
- **D-Bus agrees with the files**, and **with the kernel**: Active exactly for the devices in
  sysfs.

Bounded for CI (TRIALS); `MDEVD_CHAOS=long` runs 100 trials by hand.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from mdevd.bus import names
from mdevd.bus.paths import device_path
from tests.chaos.support import (
    LONG,
    devices,
    kernel_devices,
    managed_objects,
    remove_kernel_devices,
)
from tests.daemon.conftest import SCENARIO
from tests.daemon.harness import new_uuid
from tests.support.bus import PROJECT_POLICY, private_bus
from tests.support.daemon import running_daemon
from tests.support.paths import REPO
from tests.support.sim import RunningSim, running_sim

TRIALS = 100 if LONG else 10
WORKERS = 4
UUIDS_PER_WORKER = 6
PARENT = "par-a"
TYPES = ("par-a-1", "par-a-2")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600 if LONG else 600)]


@dataclass(frozen=True)
class Definition:
    """What a UUID's definition is: None for not defined."""

    type_id: str
    setting: str


@dataclass
class History:
    """A UUID's operations: the state its last acknowledged one left, and the one in flight."""

    acknowledged: Definition | None = None
    in_flight: list[Definition | None] = field(default_factory=list)

    def allowed(self) -> list[Definition | None]:
        return [self.acknowledged, *self.in_flight]


class Storm:
    """Clients defining, updating and undefining their own UUIDs until their bus goes away."""

    def __init__(self, address: str, seed: int) -> None:
        self.address = address
        self.random = random.Random(seed)  # noqa: S311 - a reproducible storm, not a secret
        self.histories: dict[str, History] = {}
        self.acknowledged = 0

    async def run(self, stop: asyncio.Event) -> None:
        await asyncio.gather(*(self._worker(stop) for _ in range(WORKERS)))

    async def _worker(self, stop: asyncio.Event) -> None:
        uuids = [new_uuid() for _ in range(UUIDS_PER_WORKER)]
        for uuid in uuids:
            self.histories[uuid] = History()
        bus = await MessageBus(bus_address=self.address).connect()
        try:
            while not stop.is_set():
                uuid = self.random.choice(uuids)
                if not await self._step(bus, uuid):
                    return
        finally:
            bus.disconnect()

    async def _step(self, bus: MessageBus, uuid: str) -> bool:
        """One operation on `uuid`; False once the daemon is gone."""
        history = self.histories[uuid]
        current = history.acknowledged
        setting = str(self.random.randrange(1000))
        if current is None:
            after: Definition | None = Definition(self.random.choice(TYPES), setting)
            assert after is not None
            message = _manager_call(
                "DefineDevice",
                "ssa{sv}",
                [
                    PARENT,
                    after.type_id,
                    {
                        "uuid": Variant("s", uuid),
                        "attributes": Variant("a(ss)", [["setting", after.setting]]),
                        # Some also go to the kernel: the restart must adopt them.
                        "start": Variant("b", self.random.random() < 0.3),
                    },
                ],
            )
        elif self.random.random() < 0.7:
            after = Definition(self.random.choice(TYPES), setting)
            changes = {
                "type": Variant("s", after.type_id),
                "attributes": Variant("a(ss)", [["setting", after.setting]]),
            }
            message = _device_call(uuid, "Update", "a{sv}a{sv}", [changes, {}])
        else:
            after = None
            message = _device_call(uuid, "Undefine", "a{sv}", [{}])
        history.in_flight = [after]
        try:
            async with asyncio.timeout(30):
                reply = await bus.call(message)
        except Exception:
            return False  # the bus connection broke: the daemon was killed
        if reply is None or reply.message_type is MessageType.ERROR:
            # A named error means "not done"; a missing daemon means "unknown".
            error = reply.error_name if reply is not None else ""
            if error and error.startswith(names.BUS_NAME):
                history.in_flight = []
                return True
            return False
        history.acknowledged = after
        history.in_flight = []
        self.acknowledged += 1
        return True


def _manager_call(member: str, signature: str, body: list[Any]) -> Message:
    return Message(
        destination=names.BUS_NAME,
        path=names.MANAGER_PATH,
        interface=names.MANAGER_INTERFACE,
        member=member,
        signature=signature,
        body=body,
    )


def _device_call(uuid: str, member: str, signature: str, body: list[Any]) -> Message:
    return Message(
        destination=names.BUS_NAME,
        path=device_path(uuid),
        interface=names.DEVICE_INTERFACE,
        member=member,
        signature=signature,
        body=body,
    )


async def _storm_then_kill(address: str, pid: int, seed: int) -> Storm:
    storm = Storm(address, seed)
    stop = asyncio.Event()
    task = asyncio.create_task(storm.run(stop))
    # A random moment after the storm got going: some operations acknowledged, some in flight.
    while storm.acknowledged < 10 and not task.done():
        await asyncio.sleep(0.01)
    await asyncio.sleep(storm.random.uniform(0, 0.3))
    os.kill(pid, signal.SIGKILL)
    stop.set()
    await task
    return storm


def _files(directory: Path) -> dict[str, Definition]:
    """Every definition in the directory's files, read independently of the daemon."""
    found: dict[str, Definition] = {}
    for path in sorted(directory.glob("*.toml")):
        with path.open("rb") as file:
            document = tomllib.load(file)
        for device in document.get("device", []):
            attributes = {a["name"]: a["value"] for a in device.get("attributes", [])}
            found[device["uuid"]] = Definition(device["type"], attributes.get("setting", ""))
    return found


def _check_trial(storm: Storm, directory: Path, sim: RunningSim, address: str) -> list[str]:
    problems: list[str] = []
    leftovers = sorted(p.name for p in directory.iterdir() if not p.name.endswith(".toml"))
    if leftovers:
        problems.append(f"files other than definitions left in {directory}: {leftovers}")
    checked = subprocess.run(
        [
            sys.executable,
            "-m",
            "mdevd",
            "check-config",
            "--devices-dir",
            str(directory),
            "--mdevctl-compat",
            "off",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
        timeout=60,
    )
    if checked.returncode != 0:
        problems.append(f"check-config: {checked.stdout}{checked.stderr}")
    files = _files(directory)
    objects = asyncio.run(managed_objects(address))
    on_bus: dict[str, Definition] = {}
    active: set[str] = set()
    for device in devices(objects):
        if device["Defined"]:
            attributes = dict(device["Attributes"])
            on_bus[device["UUID"]] = Definition(device["Type"], attributes.get("setting", ""))
        if device["Active"]:
            active.add(device["UUID"])
    # A running device's Type and Attributes are the running ones (an Update of the
    # definition waits for the next start), so only inactive devices must match their files.
    for uuid in sorted(set(on_bus) | set(files)):
        bus_view, file_view = on_bus.get(uuid), files.get(uuid)
        if (bus_view is None) != (file_view is None) or (
            uuid not in active and bus_view != file_view
        ):
            problems.append(f"{uuid}: D-Bus says {bus_view}, its file {file_view}")
    for uuid, history in storm.histories.items():
        if files.get(uuid) not in history.allowed():
            problems.append(f"{uuid}: {files.get(uuid)} is none of {history.allowed()}")
    in_kernel = kernel_devices(sim)
    if active != in_kernel:
        problems.append(f"Active on D-Bus {sorted(active)}, in sysfs {sorted(in_kernel)}")
    return problems


@pytest.fixture(scope="module")
def world() -> Iterator[tuple[str, RunningSim]]:
    with running_sim(SCENARIO) as sim, private_bus([PROJECT_POLICY]) as address:
        yield address, sim


@pytest.mark.parametrize("trial", range(TRIALS))
def test_kill9_during_a_storm_loses_and_tears_nothing(
    world: tuple[str, RunningSim], tmp_path: Path, trial: int
) -> None:
    address, sim = world
    directory = tmp_path / "devices.d"
    directory.mkdir()
    remove_kernel_devices(sim)
    with running_daemon(address, sim.root, [directory]) as daemon:
        storm = asyncio.run(_storm_then_kill(address, daemon.process.pid, seed=trial))
        assert daemon.process.wait(timeout=30) == -signal.SIGKILL
    assert storm.acknowledged >= 10, "the storm never got going: the trial proves nothing"
    with running_daemon(address, sim.root, [directory]):
        problems = _check_trial(storm, directory, sim, address)
    assert problems == [], "\n".join(problems)
