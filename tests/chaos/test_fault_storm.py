# SPDX-License-Identifier: LGPL-2.1-or-later
"""Fault storms from the emulated kernel while clients create, start, stop and remove devices.

While clients keep creating, defining, starting and stopping devices, the emulated kernel
refuses creates, removals and attribute writes with errnos drawn at random, holds devices as a
VM would, slows its writes down, and makes the parents' drivers go away and come back. Every
reply must be a success or one of the contract's named errors, never an internal error; the
daemon must stay up and log no traceback; and once the storm is over and the kernel quiet,
the daemon's view must agree with the kernel: Active exactly for the devices in sysfs, a
Parent object exactly for each registered parent.

Bounded for CI (ROUNDS); `MDEVD_CHAOS=long` runs many more rounds by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from mdevd.bus import names
from mdevd.bus.paths import device_path
from mdevd.sim.control import ControlError
from tests.chaos.support import LONG, devices, kernel_devices, managed_objects
from tests.daemon.conftest import SCENARIO
from tests.daemon.harness import new_uuid
from tests.support.bus import PROJECT_POLICY, private_bus
from tests.support.daemon import DaemonProcess, running_daemon
from tests.support.sim import RunningSim, running_sim
from tests.support.waiting import wait_until

ROUNDS = 400 if LONG else 40
CLIENTS = 3
#: (parent, type) the storm uses: plenty of room, no attribute rules in the way.
TARGETS = (("par-a", "par-a-1"), ("par-a", "par-a-2"), ("par-b", "par-b-1"), ("mtty", "mtty-1"))
PARENTS = sorted({parent for parent, _ in TARGETS})
ERRNOS = ("EINVAL", "EIO", "EBUSY", "ENOSPC", "ENODEV", "EPERM", "EAGAIN")
CONTRACT_ERROR = names.BUS_NAME + ".Error."
INTERNAL = "internal error"
NO_OBJECT = ("org.freedesktop.DBus.Error.UnknownMethod", "org.freedesktop.DBus.Error.UnknownObject")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600 if LONG else 600)]


class Storm:
    def __init__(self, address: str, sim: RunningSim, seed: int) -> None:
        self.address = address
        self.sim = sim
        self.random = random.Random(seed)  # noqa: S311 - a reproducible storm, not a secret
        self.replies: Counter[str] = Counter()
        self.unexpected: list[str] = []
        self.uuids: list[str] = []

    async def run(self) -> None:
        clients = [self._client(i) for i in range(CLIENTS)]
        # The kernel's side has threads of its own: an unregistration blocks while a VM holds
        # one of the parent's devices, as the real kernel's does, and must not take the
        # threads the other control commands need.
        with ThreadPoolExecutor(max_workers=16, thread_name_prefix="storm-kernel") as pool:
            await asyncio.gather(self._kernel(pool), *clients)

    async def _kernel(self, pool: ThreadPoolExecutor) -> None:
        """The kernel's side: faults, holds, delays, drivers leaving and coming back.

        A driver that leaves while one of its devices is held waits for the release, which
        only a later round (or the end of the storm) gives: its unregistration goes on in the
        background meanwhile, as a driver's `rmmod` would, so the storm cannot wait on
        itself."""
        loop = asyncio.get_running_loop()
        leaving: list[asyncio.Future[None]] = []
        for _ in range(ROUNDS):
            await asyncio.sleep(self.random.uniform(0, 0.05))
            choice = self.random.random()
            with contextlib.suppress(ControlError):
                if choice < 0.3:
                    parent, type_id = self.random.choice(TARGETS)
                    errno = self.random.choice(ERRNOS)
                    await loop.run_in_executor(
                        pool, self.sim.control.fault_create, parent, type_id, errno
                    )
                elif choice < 0.45 and self.uuids:
                    uuid = self.random.choice(self.uuids)
                    errno = self.random.choice(("EBUSY", "EIO", "EINVAL"))
                    await loop.run_in_executor(pool, self.sim.control.fault_remove, uuid, errno)
                elif choice < 0.55 and self.uuids:
                    uuid = self.random.choice(self.uuids)
                    hold = self.random.choice((self.sim.control.hold, self.sim.control.release))
                    await loop.run_in_executor(pool, hold, uuid)
                elif choice < 0.65:
                    seconds = self.random.choice((0.0, 0.05, 0.2))
                    kind = self.random.choice(("create", "remove"))
                    await loop.run_in_executor(pool, self.sim.control.delay, kind, seconds)
                elif choice < 0.75:
                    parent = self.random.choice(PARENTS)
                    gone = loop.run_in_executor(pool, self._quietly, "unregister", parent)
                    leaving.append(gone)
                    await asyncio.wait([gone], timeout=self.random.uniform(0, 0.2))
                    if gone.done():
                        await loop.run_in_executor(pool, self.sim.control.register, parent)
        # The end of the storm: every VM lets go, so every driver that is leaving can leave.
        for uuid in self.uuids:
            await loop.run_in_executor(pool, self._quietly, "release", uuid)
        await asyncio.gather(*leaving)

    def _quietly(self, command: str, name: str) -> None:
        """A control command whose refusal is part of the storm."""
        with contextlib.suppress(ControlError):
            self.sim.control.command(command, name)

    async def _client(self, index: int) -> None:
        bus = await MessageBus(bus_address=self.address).connect()
        try:
            for _ in range(ROUNDS // CLIENTS * 2):
                await self._operation(bus)
        finally:
            bus.disconnect()

    async def _operation(self, bus: MessageBus) -> None:
        choice = self.random.random()
        if choice < 0.35 or not self.uuids:
            parent, type_id = self.random.choice(TARGETS)
            uuid = new_uuid()
            self.uuids.append(uuid)
            member = self.random.choice(("CreateDevice", "DefineDevice"))
            opts: dict[str, Variant] = {"uuid": Variant("s", uuid)}
            if member == "DefineDevice":
                opts["start"] = Variant("b", self.random.random() < 0.5)
                opts["autostart"] = Variant("b", self.random.random() < 0.5)
            message = Message(
                destination=names.BUS_NAME,
                path=names.MANAGER_PATH,
                interface=names.MANAGER_INTERFACE,
                member=member,
                signature="ssa{sv}",
                body=[parent, type_id, opts],
            )
        else:
            uuid = self.random.choice(self.uuids)
            member = self.random.choice(("Start", "Stop", "Stop", "Undefine"))
            message = Message(
                destination=names.BUS_NAME,
                path=device_path(uuid),
                interface=names.DEVICE_INTERFACE,
                member=member,
                signature="a{sv}",
                body=[{}],
            )
        async with asyncio.timeout(60):
            reply = await bus.call(message)
        assert reply is not None
        if reply.message_type is MessageType.ERROR:
            error = reply.error_name or ""
            text = str(reply.body[0]) if reply.body else ""
            self.replies[error.removeprefix(CONTRACT_ERROR)] += 1
            # A device that is neither defined nor active has no object: the bus library
            # answers a call to it with UnknownMethod (or UnknownObject).
            if INTERNAL in text or not (error.startswith(CONTRACT_ERROR) or error in NO_OBJECT):
                self.unexpected.append(f"{member}: {error}: {text}")
        else:
            self.replies["ok"] += 1


def _view(address: str) -> tuple[set[str], set[str]]:
    """The daemon's active devices and parents."""
    objects = asyncio.run(managed_objects(address))
    active = {d["UUID"] for d in devices(objects) if d["Active"]}
    parents = {
        i[names.PARENT_INTERFACE]["Name"] for i in objects.values() if names.PARENT_INTERFACE in i
    }
    return active, parents


def _registered_parents(sim: RunningSim) -> set[str]:
    return {p.name for p in (sim.root / "class" / "mdev_bus").iterdir()}


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[str, RunningSim, DaemonProcess]]:
    directory = tmp_path / "devices.d"
    directory.mkdir()
    with (
        running_sim(SCENARIO) as sim,
        private_bus([PROJECT_POLICY]) as address,
        running_daemon(address, sim.root, [directory]) as daemon,
    ):
        yield address, sim, daemon


@pytest.mark.parametrize("seed", [1, 2])
def test_a_fault_storm_gets_named_errors_and_leaves_the_daemon_consistent(
    stack: tuple[str, RunningSim, DaemonProcess], seed: int
) -> None:
    address, sim, daemon = stack
    storm = Storm(address, sim, seed)
    asyncio.run(storm.run())
    print("replies:", dict(storm.replies))
    assert storm.unexpected == [], storm.unexpected
    # The storm must have met the faults, or it proves nothing.
    assert storm.replies["ok"] > 0 and sum(storm.replies.values()) > storm.replies["ok"], (
        storm.replies
    )
    # The kernel quiet again: no faults, delays or holds; every parent registered.
    sim.control.clear()
    for parent in PARENTS:
        with contextlib.suppress(ControlError):
            sim.control.register(parent)
    for uuid in storm.uuids:
        with contextlib.suppress(ControlError):
            sim.control.release(uuid)

    def agrees() -> bool:
        active, parents = _view(address)
        return active == kernel_devices(sim) and parents == _registered_parents(sim)

    wait_until(agrees, what="the daemon's view to agree with the kernel's")
    assert daemon.process.poll() is None
    log = daemon.log()
    for complaint in ("Traceback", "unexpected error", "never retrieved", "Exception in callback"):
        assert complaint not in log
