# SPDX-License-Identifier: LGPL-2.1-or-later
"""GetManagedObjects, ListDevices and ListDeviceSummaries as mdevd.bus.reads serves them,
against dbus-fast's own.

The daemon's object tree runs here in-process (the real engine on the emulated kernel, a private
bus), so that the same GetManagedObjects can be answered twice: by mdevd's handler, and by
dbus-fast's own once that handler is taken off the bus. The answers must be equal, and the work
mdevd's costs is counted: one entry per object for the first read, one per change after.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from mdevd.bus import names, premarshalled
from mdevd.bus.auth import Authorize
from mdevd.bus.caller import CallerTracker
from mdevd.bus.connection import ManagedObjectBus
from mdevd.bus.reads import LATER_DEVICE_PROPERTIES, ReadLimiter
from mdevd.bus.tree import ObjectTree
from mdevd.engine import Engine
from mdevd.errors import Busy, NotAuthorized
from mdevd.kernel import Sysfs
from mdevd.store import DefinitionStore
from tests.daemon.conftest import SCENARIO
from tests.support.sim import RunningSim, running_sim

pytestmark = pytest.mark.timeout(120)

DEFINITIONS = 300
#: Present parents and an absent one, so that the objects differ (ParentObject "/", Active).
TARGETS = (
    ("mtty", "mtty-1"),
    ("par-a", "par-a-1"),
    ("par-b", "par-b-1"),
    ("0000:66:00.0", "nvidia-556"),
)
#: Every Device property, in ListDevices' struct order (after the object path).
DEVICE_FIELDS = (
    "UUID",
    "Parent",
    "ParentObject",
    "Type",
    "Active",
    "Defined",
    "Autostart",
    "Attributes",
    "SysfsPath",
    "IommuGroup",
    "ConfigFile",
    "LastError",
)
#: ListDeviceSummaries' struct: these Device properties, in this order.
SUMMARY_FIELDS = ("UUID", "Parent", "Type", "Active", "Defined", "Autostart", "Attributes")


def unwrap(value: Any) -> Any:
    if isinstance(value, Variant):
        return unwrap(value.value)
    if isinstance(value, dict):
        return {key: unwrap(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [unwrap(item) for item in value]
    return value


@pytest.fixture(scope="module")
def sim() -> Iterator[RunningSim]:
    with running_sim(SCENARIO, uevents="none") as running:
        yield running


@pytest.fixture
def devices_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "devices.d"
    directory.mkdir()
    for index in range(DEFINITIONS):
        uuid = f"7e7e7e7e-0000-4000-8000-{index:012x}"
        parent, type_id = TARGETS[index % len(TARGETS)]
        (directory / f"{uuid}.toml").write_text(
            f'[[device]]\nuuid = "{uuid}"\nparent = "{parent}"\ntype = "{type_id}"\n'
            f"autostart = {'true' if index % 3 == 0 else 'false'}\n"
            f'attributes = [{{ name = "setting", value = "{index}" }}]\n'
        )
    return directory


@dataclass
class Served:
    engine: Engine
    tree: ObjectTree
    client: MessageBus
    destination: str

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

    async def managed_objects(self, path: str = names.ROOT_PATH) -> dict[str, Any]:
        reply = await self.call(path, names.OBJECT_MANAGER_INTERFACE, "GetManagedObjects")
        assert reply.message_type is MessageType.METHOD_RETURN, reply.body
        assert reply.signature == "a{oa{sa{sv}}}"
        result: dict[str, Any] = unwrap(reply.body[0])
        return result

    async def list_devices(self, options: dict[str, Variant] | None = None) -> Message:
        return await self.call(
            names.MANAGER_PATH, names.MANAGER_INTERFACE, "ListDevices", "a{sv}", [options or {}]
        )

    async def device_summaries(self, options: dict[str, Variant] | None = None) -> Message:
        return await self.call(
            names.MANAGER_PATH,
            names.MANAGER_INTERFACE,
            "ListDeviceSummaries",
            "a{sv}",
            [options or {}],
        )

    async def dbus_fasts_own(self, path: str = names.ROOT_PATH) -> dict[str, Any]:
        """The same call answered by dbus-fast's built-in handler."""
        self.tree.reads.uninstall()
        try:
            return await self.managed_objects(path)
        finally:
            self.tree.reads.install()


async def allow(method: str, interactive: bool) -> None:
    return None


@asynccontextmanager
async def served(
    address: str, sim: RunningSim, devices_dir: Path, authorize: Authorize = allow
) -> AsyncIterator[Served]:
    engine = Engine(Sysfs(sim.root), DefinitionStore([devices_dir]))
    await engine.start()
    bus = await ManagedObjectBus(bus_address=address).connect()
    client = await MessageBus(bus_address=address).connect()
    try:
        CallerTracker(bus).install()
        tree = ObjectTree(bus, engine, authorize)
        tree.export_all()
        assert bus.unique_name is not None
        yield Served(engine, tree, client, bus.unique_name)
    finally:
        client.disconnect()
        bus.disconnect()
        engine.close()


def test_get_managed_objects_is_dbus_fasts_own_answer(
    bus_address: str, sim: RunningSim, devices_dir: Path
) -> None:
    async def check() -> None:
        async with served(bus_address, sim, devices_dir) as daemon:
            uuid = "7e7e7e7e-1111-4000-8000-000000000001"
            await daemon.engine.create_device("par-a", "par-a-1", uuid=uuid)
            ours = await daemon.managed_objects()
            theirs = await daemon.dbus_fasts_own()
            assert len(ours) == 1 + len(daemon.engine.parents()) + DEFINITIONS + 1
            assert ours == theirs
            for path in ("/", "/org", names.DEVICES_PATH, names.MANAGER_PATH, "/elsewhere"):
                assert await daemon.managed_objects(path) == await daemon.dbus_fasts_own(path)
            # A change, then the same again: the reply follows it.
            await daemon.engine.stop_device(uuid)
            await daemon.engine.undefine("7e7e7e7e-0000-4000-8000-000000000001")
            ours = await daemon.managed_objects()
            assert ours == await daemon.dbus_fasts_own()
            assert len(ours) == 1 + len(daemon.engine.parents()) + DEFINITIONS - 1

    asyncio.run(check())


def test_the_work_is_one_entry_per_object_then_one_per_change(
    bus_address: str, sim: RunningSim, devices_dir: Path
) -> None:
    """Linear: the first read builds each object's entry once; later reads only the changed."""

    async def check() -> None:
        async with served(bus_address, sim, devices_dir) as daemon:
            reads = daemon.tree.reads
            objects = len(await daemon.managed_objects())
            assert reads.entries_built == objects
            for _ in range(3):
                await daemon.managed_objects()
                await daemon.list_devices()
            assert reads.entries_built == objects
            uuid = "7e7e7e7e-1111-4000-8000-000000000002"
            await daemon.engine.create_device("par-b", "par-b-1", uuid=uuid)
            await daemon.managed_objects()
            # The new device, and its parent (available_instances changed).
            assert reads.entries_built == objects + 2
            await daemon.engine.stop_device(uuid)

    asyncio.run(check())


def test_a_read_while_nothing_changed_sends_the_bytes_written_before(
    bus_address: str, sim: RunningSim, devices_dir: Path
) -> None:
    """Each whole reply is marshalled once per state of the table, not once per read."""

    async def check() -> None:
        async with served(bus_address, sim, devices_dir) as daemon:
            reads = daemon.tree.reads
            first = await daemon.list_devices()
            objects = await daemon.managed_objects()
            assert reads.bodies_marshalled == 2
            for _ in range(3):
                assert (await daemon.list_devices()).body == first.body
                assert await daemon.managed_objects() == objects
                assert await daemon.managed_objects("/") == objects
            assert reads.bodies_marshalled == 2
            # A change: the next replies are written afresh, and show it.
            uuid = "7e7e7e7e-1111-4000-8000-000000000004"
            path = f"{names.DEVICES_PATH}/{uuid.replace('-', '_')}"
            await daemon.engine.create_device("par-a", "par-a-1", uuid=uuid)
            listed = (await daemon.list_devices()).body[0]
            assert path in {entry[0] for entry in listed}
            assert len(listed) == len(first.body[0]) + 1
            assert path in await daemon.managed_objects()
            assert reads.bodies_marshalled == 4
            # A part of the table is not kept: written per read.
            assert path in await daemon.managed_objects(names.DEVICES_PATH)
            assert reads.bodies_marshalled == 5
            await daemon.engine.stop_device(uuid)
            assert path not in await daemon.managed_objects()
            assert reads.bodies_marshalled == 6

    asyncio.run(check())


def test_reads_without_premarshalled_replies(
    bus_address: str, sim: RunningSim, devices_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dbus-fast that cannot send them gets ordinary replies, with the same content."""
    monkeypatch.setattr(premarshalled, "supported", lambda: False)

    async def check() -> None:
        async with served(bus_address, sim, devices_dir) as daemon:
            reply = await daemon.list_devices()
            assert reply.message_type is MessageType.METHOD_RETURN, reply.body
            assert len(reply.body[0]) == DEFINITIONS
            summaries = await daemon.device_summaries()
            assert summaries.message_type is MessageType.METHOD_RETURN, summaries.body
            # UUID, Parent, Type, Active, Defined, Autostart, Attributes of each ListDevices entry.
            expected = [[e[1], e[2], *e[4:9]] for e in reply.body[0]]
            assert sorted(unwrap(summaries.body[0])) == sorted(unwrap(expected))
            assert await daemon.managed_objects() == await daemon.dbus_fasts_own()
            assert daemon.tree.reads.bodies_marshalled == 0

    asyncio.run(check())


def test_list_devices_is_every_device_objects_properties(
    bus_address: str, sim: RunningSim, devices_dir: Path
) -> None:
    async def check() -> None:
        async with served(bus_address, sim, devices_dir) as daemon:
            uuid = "7e7e7e7e-1111-4000-8000-000000000003"
            await daemon.engine.create_device(
                "par-a", "par-a-1", uuid=uuid, attributes=(("setting", "42"),)
            )
            reply = await daemon.list_devices()
            assert reply.message_type is MessageType.METHOD_RETURN, reply.body
            assert reply.signature == "a(ossosbbba(ss)sissa{sv})"
            # The struct's fields, then the properties added later, by name, in its last one.
            listed = {
                entry[0]: {**dict(zip(DEVICE_FIELDS, entry[1:-1], strict=True)), **entry[-1]}
                for entry in unwrap(reply.body[0])
            }
            assert all(set(entry[-1]) == set(LATER_DEVICE_PROPERTIES) for entry in reply.body[0])
            devices = {
                path: interfaces[names.DEVICE_INTERFACE]
                for path, interfaces in (await daemon.dbus_fasts_own()).items()
                if names.DEVICE_INTERFACE in interfaces
            }
            assert len(listed) == len(daemon.engine.devices()) == DEFINITIONS + 1
            assert listed == devices
            assert listed[f"{names.DEVICES_PATH}/{uuid.replace('-', '_')}"]["Active"] is True
            await daemon.engine.stop_device(uuid)

    asyncio.run(check())


def test_list_devices_refuses_unknown_options(
    bus_address: str, sim: RunningSim, devices_dir: Path
) -> None:
    async def check() -> None:
        async with served(bus_address, sim, devices_dir) as daemon:
            reply = await daemon.list_devices({"frobnicate": Variant("b", True)})
            assert reply.message_type is MessageType.ERROR
            assert reply.error_name == names.error_name("InvalidArgument")
            assert "frobnicate" in reply.body[0]

    asyncio.run(check())


async def _summaries_and_objects(daemon: Served) -> tuple[dict[str, Any], dict[str, Any]]:
    """ListDeviceSummaries' answer by UUID, its fields named, and the same fields of every
    Device object as dbus-fast's own GetManagedObjects says them."""
    reply = await daemon.device_summaries()
    assert reply.message_type is MessageType.METHOD_RETURN, reply.body
    assert reply.signature == "a(sssbbba(ss))"
    summaries = [dict(zip(SUMMARY_FIELDS, entry, strict=True)) for entry in unwrap(reply.body[0])]
    listed = {summary["UUID"]: summary for summary in summaries}
    assert len(listed) == len(summaries)  # one entry per device
    devices = {
        properties["UUID"]: {name: properties[name] for name in SUMMARY_FIELDS}
        for properties in (
            interfaces[names.DEVICE_INTERFACE]
            for interfaces in (await daemon.dbus_fasts_own()).values()
            if names.DEVICE_INTERFACE in interfaces
        )
    }
    return listed, devices


def test_device_summaries_are_every_device_objects_properties(
    bus_address: str, sim: RunningSim, devices_dir: Path
) -> None:
    async def check() -> None:
        async with served(bus_address, sim, devices_dir) as daemon:
            transient = "7e7e7e7e-1111-4000-8000-000000000005"
            await daemon.engine.create_device(
                "par-a", "par-a-1", uuid=transient, attributes=(("setting", "42"),)
            )
            listed, devices = await _summaries_and_objects(daemon)
            assert len(listed) == len(daemon.engine.devices()) == DEFINITIONS + 1
            assert listed == devices
            # Every kind of device is among them: active only, defined only, both.
            kinds = {(s["Active"], s["Defined"]) for s in listed.values()}
            assert kinds == {(True, False), (False, True), (True, True)}
            assert listed[transient]["Attributes"] == [["setting", "42"]]
            assert any(s["Autostart"] for s in listed.values())

            # After changes: an update, a stop, an undefine, a start.
            defined = "7e7e7e7e-0000-4000-8000-000000000001"  # par-a, not autostart
            await daemon.engine.update(
                defined, autostart=True, attributes=(("setting", "8"), ("other", "9"))
            )
            await daemon.engine.stop_device(transient)
            await daemon.engine.undefine("7e7e7e7e-0000-4000-8000-000000000002")
            await daemon.engine.start_device(defined)
            listed, devices = await _summaries_and_objects(daemon)
            assert listed == devices
            assert transient not in listed
            assert "7e7e7e7e-0000-4000-8000-000000000002" not in listed
            assert listed[defined] == {
                "UUID": defined,
                "Parent": "par-a",
                "Type": "par-a-1",
                "Active": True,
                "Defined": True,
                "Autostart": True,
                "Attributes": [["setting", "8"], ["other", "9"]],
            }
            await daemon.engine.stop_device(defined)

    asyncio.run(check())


def test_device_summaries_refuse_unknown_options(
    bus_address: str, sim: RunningSim, devices_dir: Path
) -> None:
    async def check() -> None:
        async with served(bus_address, sim, devices_dir) as daemon:
            reply = await daemon.device_summaries({"frobnicate": Variant("b", True)})
            assert reply.message_type is MessageType.ERROR
            assert reply.error_name == names.error_name("InvalidArgument")
            assert "ListDeviceSummaries" in reply.body[0]
            assert "frobnicate" in reply.body[0]

    asyncio.run(check())


def test_device_summaries_are_answered_without_authorization(
    bus_address: str, sim: RunningSim, devices_dir: Path
) -> None:
    """Whether the read server answers or dbus-fast dispatches to the Manager's member, no
    caller is authorized (here every authorization would be refused)."""
    asked: list[str] = []

    async def refuse(method: str, interactive: bool) -> None:
        asked.append(method)
        raise NotAuthorized(f"{method}: refused")

    async def check() -> None:
        async with served(bus_address, sim, devices_dir, refuse) as daemon:
            served_here = await daemon.device_summaries()
            assert served_here.message_type is MessageType.METHOD_RETURN, served_here.body
            daemon.tree.reads.uninstall()
            try:
                dispatched = await daemon.device_summaries()
            finally:
                daemon.tree.reads.install()
            assert dispatched.message_type is MessageType.METHOD_RETURN, dispatched.body
            assert sorted(unwrap(dispatched.body[0])) == sorted(unwrap(served_here.body[0]))
            assert len(served_here.body[0]) == DEFINITIONS
            # The guard works: a method that needs authorization is refused here.
            refused = await daemon.call(
                names.MANAGER_PATH, names.MANAGER_INTERFACE, "Reload", "a{sv}", [{}]
            )
            assert refused.error_name == names.error_name("NotAuthorized")
        assert asked == ["Reload"]

    asyncio.run(check())


def test_device_summaries_reuse_the_cache_and_their_bytes(
    bus_address: str, sim: RunningSim, devices_dir: Path
) -> None:
    """Built with the other entries, one per changed device; marshalled once per state."""

    async def check() -> None:
        async with served(bus_address, sim, devices_dir) as daemon:
            reads = daemon.tree.reads
            objects = len(await daemon.managed_objects())
            assert reads.entries_built == objects
            assert reads.bodies_marshalled == 1
            first = await daemon.device_summaries()
            assert len(first.body[0]) == DEFINITIONS
            assert reads.bodies_marshalled == 2
            for _ in range(3):
                assert (await daemon.device_summaries()).body == first.body
                await daemon.list_devices()
            # ListDevices' body once, the summaries' kept; no entry rebuilt.
            assert reads.bodies_marshalled == 3
            assert reads.entries_built == objects
            uuid = "7e7e7e7e-1111-4000-8000-000000000006"
            await daemon.engine.create_device("par-b", "par-b-1", uuid=uuid)
            listed = (await daemon.device_summaries()).body[0]
            assert uuid in {entry[0] for entry in listed}
            assert len(listed) == DEFINITIONS + 1
            assert reads.bodies_marshalled == 4
            # The new device and its parent, nothing else.
            assert reads.entries_built == objects + 2
            assert (await daemon.device_summaries()).body[0] == listed
            assert reads.bodies_marshalled == 4
            await daemon.engine.stop_device(uuid)
            assert uuid not in {entry[0] for entry in (await daemon.device_summaries()).body[0]}
            assert reads.bodies_marshalled == 5

    asyncio.run(check())


def test_turns_are_fair_between_callers_and_a_flood_is_busy() -> None:
    async def check() -> None:
        limiter = ReadLimiter(max_in_flight=1, per_caller=1, per_caller_waiting=3)
        order: list[str] = []

        everyone_waits = asyncio.Event()

        async def read(caller: str) -> None:
            await limiter.acquire(caller, "GetManagedObjects")
            order.append(caller)
            await everyone_waits.wait()
            limiter.release(caller)

        flood = [asyncio.create_task(read(":1.flood")) for _ in range(4)]
        await asyncio.sleep(0)
        with pytest.raises(Busy, match=r"caller :1\.flood already has 3 such calls waiting"):
            await limiter.acquire(":1.flood", "GetManagedObjects")
        others = [asyncio.create_task(read(caller)) for caller in (":1.a", ":1.b")]
        await asyncio.sleep(0)
        assert order == [":1.flood"]
        everyone_waits.set()
        await asyncio.gather(*flood, *others)
        # The flood's queued calls take turns with the others, not before them.
        assert order == [":1.flood", ":1.flood", ":1.a", ":1.b", ":1.flood", ":1.flood"]
        assert limiter.in_flight == 0

    asyncio.run(check())
