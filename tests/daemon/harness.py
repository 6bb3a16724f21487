# SPDX-License-Identifier: LGPL-2.1-or-later
"""A synchronous D-Bus client for the daemon tests, recording every signal the daemon sends.

`BusClient` is a `tests.support.signals.SignalRecorder` that also calls the daemon. Every
signal from `org.mdevd.Mdevd1` is recorded, in the order the bus delivered it, by the same loop
that resolves method replies. So when a call returns here, every signal the daemon sent before
its reply has already been recorded: "the signal came before the reply" is a plain membership
test, no waiting involved.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import uuid as uuid_module
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from mdevd.bus import names
from mdevd.bus.paths import device_path, parent_path
from mdevd.client import DaemonError
from mdevd.owners import unit_of_cgroup
from mdevd.replies import unwrap
from mdevd.sim.control import UeventRecord
from tests.support.signals import SignalRecorder
from tests.support.sim import RunningSim

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
    "placement": "s",
    "owner": "s",
    "lifetime": "s",
    "auth.interactive": "b",
}

__all__ = [
    "CALL_TIMEOUT",
    "BusClient",
    "DaemonError",
    "device_path",
    "new_uuid",
    "options",
    "own_owner",
    "parent_path",
]


def own_owner() -> str:
    """The `Owner` the daemon records for a device this test process makes without naming an
    owner: its systemd unit if it runs in one, else its uid (`mdevd.bus.owners`)."""
    unit = unit_of_cgroup(Path("/proc/self/cgroup").read_text())
    return f"unit:{unit}" if unit else f"uid:{os.getuid()}"


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


class BusClient(SignalRecorder):
    """One connection to the bus, driven from the test's thread: it records every signal of
    the daemon (tests.support.signals) and makes calls."""

    def __init__(self, address: str) -> None:
        super().__init__(address, thread_name="test-bus-client")

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
