# SPDX-License-Identifier: LGPL-2.1-or-later
"""The devices that exist at start-up are exported to dbus-fast on first use (mdevd.bus.deferred).

Issue 20: with 10,000 definitions, dbus-fast's per-object export (a `ServiceInterface` per
object, whose creation runs `inspect.getmembers` over its class, and a handler per method per
object) was most of the time to ready. Here the object tree runs in-process (the real engine
on the emulated kernel, a private bus), and what a client sees of a device that was deferred
must be what it sees of an exported one: dbus-fast's own answers to calls, introspection of
the paths above it, and the same signals. tests/versions runs this file against each dbus-fast.
"""

from __future__ import annotations

import asyncio
import inspect
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.service import ServiceInterface

from mdevd.bus import names
from mdevd.bus import tree as tree_module
from mdevd.bus.caller import CallerTracker
from mdevd.bus.connection import ManagedObjectBus
from mdevd.bus.deferred import DeferredExports
from mdevd.bus.paths import parent_path
from mdevd.bus.tree import ObjectTree
from mdevd.engine import Engine
from mdevd.kernel import Sysfs
from mdevd.store import DefinitionStore
from tests.daemon.conftest import SCENARIO
from tests.support.sim import RunningSim, running_sim

pytestmark = pytest.mark.timeout(120)

#: A present parent (par-a), one whose objects the tests take away and back (par-b), and an
#: absent one.
TARGETS = (("par-a", "par-a-1"), ("par-b", "par-b-1"), ("0000:66:00.0", "nvidia-556"))
#: Paths whose Introspect lists the devices, or a part of their paths: dbus-fast's rule
#: (which differs between its versions) must see the deferred ones as exported ones.
INTROSPECTED = (
    "/",
    "/org",
    "/org/mdevd",
    names.ROOT_PATH,
    names.DEVICES_PATH,
    "/org/mdevd/Mdevd1/dev",
    "/devices",
    "/Mdevd1",
)


def uuid_of(index: int) -> str:
    return f"defe44ed-0000-4000-8000-{index:012x}"


def path_of(uuid: str) -> str:
    return f"{names.DEVICES_PATH}/{uuid.replace('-', '_')}"


def write_definitions(directory: Path, count: int) -> None:
    directory.mkdir(exist_ok=True)
    for index in range(count):
        uuid = uuid_of(index)
        parent, type_id = TARGETS[index % len(TARGETS)]
        (directory / f"{uuid}.toml").write_text(
            f'[[device]]\nuuid = "{uuid}"\nparent = "{parent}"\ntype = "{type_id}"\n'
            f'attributes = [{{ name = "setting", value = "{index}" }}]\n'
        )


@pytest.fixture(scope="module")
def sim() -> Iterator[RunningSim]:
    with running_sim(SCENARIO, uevents="none") as running:
        yield running


@dataclass
class Served:
    engine: Engine
    tree: ObjectTree
    client: MessageBus
    destination: str
    signals: list[Message] = field(default_factory=list)

    @property
    def deferred(self) -> DeferredExports[Any]:
        assert self.tree.deferred is not None
        return self.tree.deferred

    async def call(
        self, path: str, interface: str, member: str, signature: str = "", body: Any = ()
    ) -> Message:
        message = Message(
            destination=self.destination,
            path=path,
            interface=interface,
            member=member,
            signature=signature,
            body=list(body),
        )
        async with asyncio.timeout(60):
            reply = await self.client.call(message)
        assert reply is not None
        return reply

    async def children(self, path: str) -> set[str]:
        reply = await self.call(path, names.INTROSPECTABLE_INTERFACE, "Introspect")
        assert reply.message_type is MessageType.METHOD_RETURN, reply.body
        root = ET.fromstring(reply.body[0])  # noqa: S314 (our own daemon's answer)
        return {node.attrib["name"] for node in root.findall("node")}

    async def get_all(self, path: str) -> Message:
        return await self.call(
            path, names.PROPERTIES_INTERFACE, "GetAll", "s", [names.DEVICE_INTERFACE]
        )

    async def managed_objects(self) -> dict[str, Any]:
        reply = await self.call(
            names.ROOT_PATH, names.OBJECT_MANAGER_INTERFACE, "GetManagedObjects"
        )
        assert reply.message_type is MessageType.METHOD_RETURN, reply.body
        objects: dict[str, Any] = reply.body[0]
        return objects

    async def signals_until(self, done: Callable[[list[Message]], bool]) -> list[Message]:
        async with asyncio.timeout(30):
            while not done(self.signals):
                await asyncio.sleep(0.01)
        return self.signals


@asynccontextmanager
async def served(address: str, sim: RunningSim, devices_dir: Path) -> AsyncIterator[Served]:
    engine = Engine(Sysfs(sim.root), DefinitionStore([devices_dir]))
    await engine.start()
    bus = await ManagedObjectBus(bus_address=address).connect()
    client = await MessageBus(bus_address=address).connect()
    try:
        CallerTracker(bus).install()

        async def allow(method: str, interactive: bool) -> None:
            return None

        tree = ObjectTree(bus, engine, allow)
        tree.export_all()
        assert bus.unique_name is not None
        daemon = Served(engine, tree, client, bus.unique_name)

        def collect(message: Message) -> bool:
            if message.message_type is MessageType.SIGNAL and message.sender == bus.unique_name:
                daemon.signals.append(message)
            return False

        client.add_message_handler(collect)
        match = Message(
            destination=names.DBUS_BUS_NAME,
            path=names.DBUS_PATH,
            interface=names.DBUS_INTERFACE,
            member="AddMatch",
            signature="s",
            body=[f"type='signal',sender='{bus.unique_name}'"],
        )
        added = await client.call(match)
        assert added is not None and added.message_type is MessageType.METHOD_RETURN
        yield daemon
    finally:
        client.disconnect()
        bus.disconnect()
        engine.close()


# ---- the cost ------------------------------------------------------------------------------


def test_the_start_up_export_costs_nothing_per_object(
    bus_address: str, sim: RunningSim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What dbus-fast spends per exported object happens no more often for 1,000 devices
    than for 10: no `inspect.getmembers` (dbus-fast's `ServiceInterface.__init__`), no
    export (its handlers per method)."""
    getmembers = inspect.getmembers
    exports = ManagedObjectBus.export
    counted = {"getmembers": 0, "export": 0}

    def counting_getmembers(*args: Any, **kwargs: Any) -> Any:
        counted["getmembers"] += 1
        return getmembers(*args, **kwargs)

    def counting_export(self: ManagedObjectBus, path: str, interface: Any) -> None:
        counted["export"] += 1
        exports(self, path, interface)

    async def export_all(count: int) -> dict[str, int]:
        devices_dir = tmp_path / f"devices-{count}"
        write_definitions(devices_dir, count)
        engine = Engine(Sysfs(sim.root), DefinitionStore([devices_dir]))
        await engine.start()
        bus = await ManagedObjectBus(bus_address=bus_address).connect()
        try:

            async def allow(method: str, interactive: bool) -> None:
                return None

            tree = ObjectTree(bus, engine, allow)
            counted.update(getmembers=0, export=0)
            with monkeypatch.context() as patch:
                patch.setattr(inspect, "getmembers", counting_getmembers)
                patch.setattr(ManagedObjectBus, "export", counting_export)
                tree.export_all()
            assert len(await tree.reads.device_list()) == count
            return dict(counted)
        finally:
            bus.disconnect()
            engine.close()

    async def check() -> None:
        few = await export_all(10)
        many = await export_all(1_000)
        # The manager and the parents, whatever the number of devices.
        assert many == few
        assert few["export"] >= 1

    # The count sees dbus-fast's own calls, compiled or not: else `many == few` proves nothing.
    with monkeypatch.context() as patch:
        patch.setattr(inspect, "getmembers", counting_getmembers)
        ServiceInterface("org.mdevd.Test.Probe")
        assert counted["getmembers"] == 1
    asyncio.run(check())


# ---- what clients see ----------------------------------------------------------------------

DEFINITIONS = 30


@pytest.fixture
def devices_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "devices.d"
    write_definitions(directory, DEFINITIONS)
    return directory


def test_introspection_lists_deferred_objects_as_dbus_fast_lists_exported_ones(
    bus_address: str, sim: RunningSim, devices_dir: Path
) -> None:
    async def check() -> None:
        async with served(bus_address, sim, devices_dir) as daemon:
            every_device = {path_of(uuid_of(i)) for i in range(DEFINITIONS)}
            assert all(path in daemon.deferred for path in every_device)
            deferred = {path: await daemon.children(path) for path in INTROSPECTED}
            assert deferred[names.DEVICES_PATH] == {p.rsplit("/", 1)[1] for p in every_device}
            assert "devices" in deferred[names.ROOT_PATH]
            # Introspecting a parent path exports nothing.
            assert daemon.deferred.exported == 0
            # dbus-fast's own GetManagedObjects (ours taken off) needs every object exported.
            daemon.tree.reads.uninstall()
            try:
                theirs = await daemon.managed_objects()
            finally:
                daemon.tree.reads.install()
            assert daemon.deferred.exported == DEFINITIONS
            assert not any(path in daemon.deferred for path in every_device)
            assert every_device <= set(theirs)
            assert await daemon.managed_objects() == theirs
            # Now that dbus-fast has them all, it lists the same children by itself.
            assert {path: await daemon.children(path) for path in INTROSPECTED} == deferred

    asyncio.run(check())


def test_a_call_to_a_deferred_object_is_answered_by_its_export(
    bus_address: str, sim: RunningSim, devices_dir: Path
) -> None:
    async def check() -> None:
        async with served(bus_address, sim, devices_dir) as daemon:
            listed = await daemon.managed_objects()
            path = path_of(uuid_of(0))  # on par-a, present
            assert path in daemon.deferred
            reply = await daemon.get_all(path)
            assert reply.message_type is MessageType.METHOD_RETURN, reply.body
            assert reply.body[0] == listed[path][names.DEVICE_INTERFACE]
            assert path not in daemon.deferred and daemon.deferred.exported == 1
            # Introspect and a method of its own, each on another deferred device.
            introspected = path_of(uuid_of(3))
            reply = await daemon.call(introspected, names.INTROSPECTABLE_INTERFACE, "Introspect")
            assert names.DEVICE_INTERFACE in reply.body[0]
            started = path_of(uuid_of(6))
            assert started in daemon.deferred
            reply = await daemon.call(started, names.DEVICE_INTERFACE, "Start", "a{sv}", [{}])
            assert reply.message_type is MessageType.METHOD_RETURN, reply.body
            # Its changes come from dbus-fast, as any exported object's.
            changes = await daemon.signals_until(
                lambda signals: any(s.path == started and s.member == "PropertiesChanged"
                                    for s in signals)
            )  # fmt: skip
            change = next(s for s in changes if s.path == started)
            assert change.interface == names.PROPERTIES_INTERFACE
            assert change.body[0] == names.DEVICE_INTERFACE
            assert change.body[1]["Active"] == Variant("b", True)
            reply = await daemon.call(started, names.DEVICE_INTERFACE, "Stop", "a{sv}", [{}])
            assert reply.message_type is MessageType.METHOD_RETURN, reply.body
            assert daemon.deferred.exported == 3

    asyncio.run(check())


def test_a_deferred_object_removed_is_announced_and_gone(
    bus_address: str, sim: RunningSim, devices_dir: Path
) -> None:
    async def check() -> None:
        async with served(bus_address, sim, devices_dir) as daemon:
            uuid = uuid_of(9)
            path = path_of(uuid)
            assert path in daemon.deferred
            await daemon.engine.undefine(uuid)
            removed = await daemon.signals_until(
                lambda signals: any(s.member == "InterfacesRemoved" for s in signals)
            )
            (signal,) = [s for s in removed if s.member == "InterfacesRemoved"]
            assert signal.path == names.ROOT_PATH
            assert signal.interface == names.OBJECT_MANAGER_INTERFACE
            assert signal.body == [path, [names.DEVICE_INTERFACE]]
            assert path not in daemon.deferred and daemon.deferred.exported == 0
            assert path not in await daemon.managed_objects()
            assert path.rsplit("/", 1)[1] not in await daemon.children(names.DEVICES_PATH)
            # Its path is now as unknown as one that never was.
            gone = await daemon.get_all(path)
            never = await daemon.get_all(path_of("defe44ed-ffff-4000-8000-000000000000"))
            assert gone.message_type is never.message_type is MessageType.ERROR
            assert gone.error_name == never.error_name

    asyncio.run(check())


def test_a_parents_change_reaches_deferred_and_exported_devices_alike(
    bus_address: str, sim: RunningSim, devices_dir: Path
) -> None:
    """A parent that goes or comes changes its devices (`Backend`, `ParentObject`...): a
    deferred device's PropertiesChanged are the ones dbus-fast sends for an exported device,
    the same messages with the properties in the same order; and it stays deferred."""

    def sent(signals: list[Message], path: str) -> list[tuple[Any, ...]]:
        return [
            (s.interface, s.member, s.signature, s.body, list(s.body[1]))
            for s in signals
            if s.path == path
        ]

    async def check() -> None:
        async with served(bus_address, sim, devices_dir) as daemon:
            on_par_b = [path_of(uuid_of(i)) for i in range(DEFINITIONS) if i % 3 == 1]
            exported = on_par_b[0]
            await daemon.get_all(exported)  # exported by its first use
            assert exported not in daemon.deferred
            assert all(path in daemon.deferred for path in on_par_b[1:])
            registered = True
            try:
                # After each change, a device on par-a is removed: its InterfacesRemoved comes
                # after every signal of the change.
                for change, object_path, marker in (
                    (sim.control.unregister, "/", uuid_of(0)),
                    (sim.control.register, parent_path("par-b"), uuid_of(3)),
                ):
                    daemon.signals.clear()
                    change("par-b")
                    registered = not registered
                    await daemon.engine.resync()
                    await daemon.engine.undefine(marker)
                    signals = await daemon.signals_until(
                        lambda signals: any(s.member == "InterfacesRemoved" for s in signals)
                    )
                    expected = sent(signals, exported)
                    assert any(
                        body[1].get("ParentObject") == Variant("o", object_path)
                        for _, _, _, body, _ in expected
                    )
                    for path in on_par_b[1:]:
                        assert sent(signals, path) == expected, path
                    listed = await daemon.managed_objects()
                    assert all(
                        listed[path][names.DEVICE_INTERFACE]["ParentObject"].value == object_path
                        for path in on_par_b
                    )
            finally:
                if not registered:
                    sim.control.register("par-b")
            assert daemon.deferred.exported == 1
            assert all(path in daemon.deferred for path in on_par_b[1:])

    asyncio.run(check())


def test_without_deferral_every_object_is_exported_at_once(
    bus_address: str, sim: RunningSim, devices_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plain path, for a dbus-fast that would keep its exports elsewhere (`can_defer`)."""
    monkeypatch.setattr(tree_module, "can_defer", lambda bus: False)

    async def check() -> None:
        async with served(bus_address, sim, devices_dir) as daemon:
            assert daemon.tree.deferred is None
            every_device = {path_of(uuid_of(i)) for i in range(DEFINITIONS)}
            assert await daemon.children(names.DEVICES_PATH) == {
                path.rsplit("/", 1)[1] for path in every_device
            }
            ours = await daemon.managed_objects()
            daemon.tree.reads.uninstall()
            try:
                assert await daemon.managed_objects() == ours
            finally:
                daemon.tree.reads.install()
            assert every_device <= set(ours)

    asyncio.run(check())
