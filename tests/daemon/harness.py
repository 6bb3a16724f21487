# SPDX-License-Identifier: LGPL-2.1-or-later
"""A synchronous D-Bus client for the daemon tests, recording every signal the daemon sends.

The tests are plain functions; the connection lives on its own thread with its own asyncio
loop (dbus-fast is asyncio only). Every signal from `org.mdevd.Mdevd1` is recorded, in the order
the bus delivered it, by the same loop that resolves method replies. So when a call returns
here, every signal the daemon sent before its reply has already been recorded: "the signal
came before the reply" is a plain membership test, no waiting involved.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import threading
import uuid as uuid_module
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from mdevd.bus import names
from mdevd.bus.paths import device_path, parent_path
from mdevd.client import DaemonError
from mdevd.sim.control import UeventRecord
from tests.support.sim import RunningSim
from tests.support.waiting import WAIT_TIMEOUT, wait_until

T = TypeVar("T")

#: A generous bound for a call's reply.
CALL_TIMEOUT = 60.0

#: The D-Bus type of each option and change key the contract defines.
OPTION_SIGNATURES = {
    "uuid": "s",
    "attributes": "a(ss)",
    "autostart": "b",
    "start": "b",
    "live": "b",
    "type": "s",
    "auth.interactive": "b",
}

__all__ = [
    "CALL_TIMEOUT",
    "BusClient",
    "DaemonError",
    "Signal",
    "device_path",
    "new_uuid",
    "options",
    "parent_path",
]


def new_uuid() -> str:
    return str(uuid_module.uuid4())


def options(**values: Any) -> dict[str, Variant]:
    """An a{sv} of contract options: `options(uuid=u, autostart=True, auth_interactive=True)`."""
    result: dict[str, Variant] = {}
    for key, value in values.items():
        key = key.replace("auth_interactive", "auth.interactive")
        if isinstance(value, Variant):
            result[key] = value
        elif key == "attributes":
            result[key] = Variant("a(ss)", [list(pair) for pair in value])
        else:
            result[key] = Variant(OPTION_SIGNATURES[key], value)
    return result


def unwrap(value: Any) -> Any:
    """Variants replaced by their values, structs (tuples) by lists, all the way down."""
    if isinstance(value, Variant):
        return unwrap(value.value)
    if isinstance(value, dict):
        return {key: unwrap(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [unwrap(item) for item in value]
    return value


@dataclass(frozen=True)
class Signal:
    """One signal the daemon sent, its body unwrapped."""

    index: int
    path: str
    interface: str
    member: str
    body: list[Any]

    @property
    def object_path(self) -> str:
        """The object it is about: the first argument of ObjectManager signals, else `path`."""
        if self.interface == names.OBJECT_MANAGER_INTERFACE:
            return str(self.body[0])
        if self.member == "DeviceEvent":
            return str(self.body[0])
        return self.path

    def is_added(self, path: str) -> bool:
        return self.member == "InterfacesAdded" and self.body[0] == path

    def is_removed(self, path: str) -> bool:
        return self.member == "InterfacesRemoved" and self.body[0] == path

    def is_event(self, uuid: str, event: str | None = None) -> bool:
        return (
            self.member == "DeviceEvent"
            and self.body[1] == uuid
            and (event is None or self.body[2] == event)
        )

    def changed(self, path: str) -> dict[str, Any] | None:
        """The changed properties if this is PropertiesChanged of `path`."""
        if self.member == "PropertiesChanged" and self.path == path:
            result: dict[str, Any] = self.body[1]
            return result
        return None


class BusClient:
    """One connection to the bus, driven from the test's thread."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="test-bus-client", daemon=True
        )
        self._thread.start()
        self._lock = threading.Lock()
        self._signals: list[Signal] = []
        self._counter = itertools.count()
        self.bus: MessageBus = self.run(self._connect())

    async def _connect(self) -> MessageBus:
        bus = await MessageBus(bus_address=self.address).connect()
        bus.add_message_handler(self._on_message)
        await self._call_on(
            bus,
            Message(
                destination=names.DBUS_BUS_NAME,
                path=names.DBUS_PATH,
                interface=names.DBUS_INTERFACE,
                member="AddMatch",
                signature="s",
                body=[f"type='signal',sender='{names.BUS_NAME}'"],
            ),
        )
        return bus

    def _on_message(self, message: Message) -> None:
        if message.message_type is not MessageType.SIGNAL:
            return
        with self._lock:
            self._signals.append(
                Signal(
                    next(self._counter),
                    message.path or "",
                    message.interface or "",
                    message.member or "",
                    unwrap(message.body),
                )
            )

    def close(self) -> None:
        if self.bus.connected:
            self._loop.call_soon_threadsafe(self.bus.disconnect)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    # ---- running things on the loop ----------------------------------------------------------

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = CALL_TIMEOUT) -> T:
        return self.submit(coroutine).result(timeout)

    # ---- calls -------------------------------------------------------------------------------

    @staticmethod
    async def _call_on(bus: MessageBus, message: Message, timeout: float = CALL_TIMEOUT) -> Any:
        async with asyncio.timeout(timeout):
            reply = await bus.call(message)
        assert reply is not None
        if reply.message_type is MessageType.ERROR:
            text = reply.body[0] if reply.body else ""
            raise DaemonError(reply.error_name or "", str(text))
        return unwrap(reply.body)

    def call_async(
        self,
        path: str,
        interface: str,
        member: str,
        signature: str = "",
        body: Sequence[Any] = (),
        destination: str = names.BUS_NAME,
    ) -> concurrent.futures.Future[list[Any]]:
        """Send a call now; the future has the reply's body or raises DaemonError."""
        message = Message(
            destination=destination,
            path=path,
            interface=interface,
            member=member,
            signature=signature,
            body=list(body),
        )
        return self.submit(self._call_on(self.bus, message))

    def call(
        self,
        path: str,
        interface: str,
        member: str,
        signature: str = "",
        body: Sequence[Any] = (),
    ) -> list[Any]:
        return self.call_async(path, interface, member, signature, body).result(CALL_TIMEOUT)

    # Manager

    def manager_async(
        self, member: str, signature: str, *args: Any
    ) -> concurrent.futures.Future[list[Any]]:
        return self.call_async(names.MANAGER_PATH, names.MANAGER_INTERFACE, member, signature, args)

    def create_device_async(
        self, parent: str, type_id: str, **opts: Any
    ) -> concurrent.futures.Future[list[Any]]:
        return self.manager_async("CreateDevice", "ssa{sv}", parent, type_id, options(**opts))

    def create_device(self, parent: str, type_id: str, **opts: Any) -> str:
        return str(self.create_device_async(parent, type_id, **opts).result(CALL_TIMEOUT)[0])

    def define_device(self, parent: str, type_id: str, **opts: Any) -> str:
        future = self.manager_async("DefineDevice", "ssa{sv}", parent, type_id, options(**opts))
        return str(future.result(CALL_TIMEOUT)[0])

    def get_device(self, uuid: str) -> str:
        return str(self.manager_async("GetDevice", "s", uuid).result(CALL_TIMEOUT)[0])

    def reload(self, **opts: Any) -> None:
        self.manager_async("Reload", "a{sv}", options(**opts)).result(CALL_TIMEOUT)

    # Device

    def device_async(
        self, uuid: str, member: str, signature: str = "a{sv}", *args: Any
    ) -> concurrent.futures.Future[list[Any]]:
        body = args if args else (options(),)
        return self.call_async(device_path(uuid), names.DEVICE_INTERFACE, member, signature, body)

    def start(self, uuid: str) -> None:
        self.device_async(uuid, "Start").result(CALL_TIMEOUT)

    def stop(self, uuid: str) -> None:
        self.device_async(uuid, "Stop").result(CALL_TIMEOUT)

    def define(self, uuid: str, **opts: Any) -> None:
        self.device_async(uuid, "Define", "a{sv}", options(**opts)).result(CALL_TIMEOUT)

    def undefine(self, uuid: str) -> None:
        self.device_async(uuid, "Undefine").result(CALL_TIMEOUT)

    def update(self, uuid: str, changes: Mapping[str, Any], **opts: Any) -> None:
        self.device_async(uuid, "Update", "a{sv}a{sv}", options(**changes), options(**opts)).result(
            CALL_TIMEOUT
        )

    # Properties and objects

    def properties(self, path: str, interface: str) -> dict[str, Any]:
        (values,) = self.call(path, names.PROPERTIES_INTERFACE, "GetAll", "s", [interface])
        result: dict[str, Any] = values
        return result

    def get_property(self, path: str, interface: str, name: str) -> Any:
        (value,) = self.call(path, names.PROPERTIES_INTERFACE, "Get", "ss", [interface, name])
        return value

    def device(self, uuid: str) -> dict[str, Any]:
        return self.properties(device_path(uuid), names.DEVICE_INTERFACE)

    def managed_objects(self) -> dict[str, dict[str, dict[str, Any]]]:
        (objects,) = self.call(names.ROOT_PATH, names.OBJECT_MANAGER_INTERFACE, "GetManagedObjects")
        result: dict[str, dict[str, dict[str, Any]]] = objects
        return result

    def introspect(self, path: str) -> str:
        (xml,) = self.call(path, names.INTROSPECTABLE_INTERFACE, "Introspect")
        return str(xml)

    # ---- signals -----------------------------------------------------------------------------

    def mark(self) -> int:
        """A position in the signal record: `signals(since=mark)` is what came after it."""
        with self._lock:
            return len(self._signals)

    def signals(self, since: int = 0) -> list[Signal]:
        with self._lock:
            return list(self._signals[since:])

    def wait_signal(
        self, predicate: Callable[[Signal], bool], since: int = 0, timeout: float = WAIT_TIMEOUT
    ) -> Signal:
        def found() -> Signal | None:
            return next((s for s in self.signals(since) if predicate(s)), None)

        signal = wait_until(found, timeout, "a signal")
        assert signal is not None
        return signal

    def events(self, uuid: str, since: int = 0) -> list[tuple[str, dict[str, Any]]]:
        """The (event, details) of every DeviceEvent about `uuid` since `since`."""
        return [(s.body[2], s.body[3]) for s in self.signals(since) if s.is_event(uuid)]


@contextmanager
def bus_client(address: str) -> Iterator[BusClient]:
    client = BusClient(address)
    try:
        yield client
    finally:
        client.close()


# ---- the emulated kernel's side -----------------------------------------------------------------


def in_sysfs(sim: RunningSim, uuid: str) -> bool:
    """Whether the kernel has the device (`/sys/bus/mdev/devices/<uuid>` resolves)."""
    return (sim.root / "bus" / "mdev" / "devices" / uuid).exists()


def device_uevents(sim: RunningSim, uuid: str) -> list[UeventRecord]:
    """The mdev-subsystem uevents of one device, oldest first."""
    return [
        record
        for record in sim.control.uevents()
        if record.subsystem == "mdev" and record.devpath.endswith("/" + uuid)
    ]


def create_file(sim: RunningSim, parent: str, type_id: str) -> Path:
    return sim.root / "class" / "mdev_bus" / parent / "mdev_supported_types" / type_id / "create"


def create_behind_the_daemons_back(sim: RunningSim, parent: str, type_id: str, uuid: str) -> None:
    """What another tool (mdevctl, a script) does: write the UUID into `create` itself."""
    create_file(sim, parent, type_id).write_text(uuid)


def remove_behind_the_daemons_back(sim: RunningSim, uuid: str) -> None:
    (sim.root / "bus" / "mdev" / "devices" / uuid / "remove").write_text("1")
