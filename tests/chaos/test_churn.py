# SPDX-License-Identifier: LGPL-2.1-or-later
"""Definition files churned by hand while the daemon watches the directory and serves calls.

An admin's editor and scripts do everything to a drop-in directory: write files in place (so
the daemon may read one half-written), replace them by rename, delete them, break them
(invalid TOML, invalid UTF-8), mask them with a symlink to /dev/null, and all of it while
managers define and undefine devices through the API. Whatever the daemon reads meanwhile,
once the directory is quiet its view must be exactly what the files say, every call must
have had a named answer, and no bad file may have cost a good one its definition.

Bounded for CI (ROUNDS); `MDEVD_CHAOS=long` runs many more rounds by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from mdevd.bus import names
from mdevd.bus.paths import device_path
from tests.chaos.support import LONG, devices, managed_objects
from tests.daemon.conftest import SCENARIO
from tests.daemon.harness import new_uuid
from tests.support.bus import PROJECT_POLICY, private_bus
from tests.support.daemon import DaemonProcess, running_daemon
from tests.support.sim import RunningSim, running_sim
from tests.support.waiting import wait_until

ROUNDS = 2000 if LONG else 200
FILES = 12
CONTRACT_ERROR = names.BUS_NAME + ".Error."

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600 if LONG else 600)]


def _definition(uuid: str, type_id: str) -> str:
    return f'[[device]]\nuuid = "{uuid}"\nparent = "par-a"\ntype = "{type_id}"\n'


class Churn:
    def __init__(self, directory: Path, address: str, seed: int) -> None:
        self.directory = directory
        self.address = address
        self.random = random.Random(seed)  # noqa: S311 - a reproducible storm, not a secret
        # Each hand-written file has its own UUID, so the files never compete for one.
        self.by_hand = {f"hand-{i:02}.toml": new_uuid() for i in range(FILES)}
        self.unexpected: list[str] = []
        self.calls = 0

    def _edit(self) -> None:
        name, uuid = self.random.choice(sorted(self.by_hand.items()))
        path = self.directory / name
        type_id = self.random.choice(("par-a-1", "par-a-2"))
        choice = self.random.random()
        with contextlib.suppress(FileNotFoundError):
            if choice < 0.3:  # in place, as an editor without atomic saves writes it
                with path.open("w") as file:
                    text = _definition(uuid, type_id)
                    half = len(text) // 2
                    file.write(text[:half])
                    file.flush()
                    file.write(text[half:])
            elif choice < 0.5:  # atomically, by rename
                temporary = self.directory / f".{name}.edit"
                temporary.write_text(_definition(uuid, type_id))
                temporary.rename(path)
            elif choice < 0.65:
                path.unlink()
            elif choice < 0.75:
                path.write_text('[[device]]\nuuid = "not closed\n')
            elif choice < 0.85:
                path.write_bytes(b'[[device]]\nuuid = "\xff\xfe"\n')
            else:  # masked: nothing from this name may be loaded
                path.unlink(missing_ok=True)
                path.symlink_to(os.devnull)

    async def _api(self, bus: MessageBus) -> None:
        uuid = new_uuid()
        calls = [
            Message(
                destination=names.BUS_NAME,
                path=names.MANAGER_PATH,
                interface=names.MANAGER_INTERFACE,
                member="DefineDevice",
                signature="ssa{sv}",
                body=["par-b", "par-b-1", {"uuid": Variant("s", uuid)}],
            ),
            Message(
                destination=names.BUS_NAME,
                path=device_path(uuid),
                interface=names.DEVICE_INTERFACE,
                member="Undefine",
                signature="a{sv}",
                body=[{}],
            ),
            Message(
                destination=names.BUS_NAME,
                path=names.MANAGER_PATH,
                interface=names.MANAGER_INTERFACE,
                member="Reload",
                signature="a{sv}",
                body=[{}],
            ),
        ]
        for message in calls[: self.random.choice((1, 2, 3))]:
            async with asyncio.timeout(60):
                reply = await bus.call(message)
            self.calls += 1
            assert reply is not None
            if reply.message_type is MessageType.ERROR and not (reply.error_name or "").startswith(
                CONTRACT_ERROR
            ):
                self.unexpected.append(f"{message.member}: {reply.error_name}: {reply.body}")

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        bus = await MessageBus(bus_address=self.address).connect()
        try:
            for _ in range(ROUNDS):
                if self.random.random() < 0.8:
                    await loop.run_in_executor(None, self._edit)
                    await asyncio.sleep(self.random.choice((0, 0, 0.001, 0.02)))
                else:
                    await self._api(bus)
        finally:
            bus.disconnect()


def _what_the_files_say(directory: Path) -> dict[str, str]:
    """UUID -> type of every definition in a readable file, read independently of the daemon."""
    found: dict[str, str] = {}
    for path in directory.glob("*.toml"):
        if path.is_symlink():
            continue  # masked
        try:
            document = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError):
            continue
        for device in document.get("device", []):
            found[device["uuid"]] = device["type"]
    return found


def _defined(address: str) -> dict[str, str]:
    objects = asyncio.run(managed_objects(address))
    return {d["UUID"]: d["Type"] for d in devices(objects) if d["Defined"]}


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[str, RunningSim, DaemonProcess, Path]]:
    directory = tmp_path / "devices.d"
    directory.mkdir()
    with (
        running_sim(SCENARIO) as sim,
        private_bus([PROJECT_POLICY]) as address,
        running_daemon(address, sim.root, [directory]) as daemon,
    ):
        yield address, sim, daemon, directory


@pytest.mark.parametrize("seed", [1, 2])
def test_churn_under_the_watcher_settles_on_what_the_files_say(
    stack: tuple[str, RunningSim, DaemonProcess, Path], seed: int
) -> None:
    address, _, daemon, directory = stack
    churn = Churn(directory, address, seed)
    asyncio.run(churn.run())
    assert churn.unexpected == []
    assert churn.calls > 0
    expected = _what_the_files_say(directory)
    assert any(name.startswith("hand-") for name in os.listdir(directory))

    def settled() -> bool:
        return _defined(address) == _what_the_files_say(directory)

    wait_until(settled, what=f"the daemon to define exactly what the files say: {expected}")
    assert daemon.process.poll() is None
    log = daemon.log()
    for complaint in ("Traceback", "unexpected error", "never retrieved", "Exception in callback"):
        assert complaint not in log
