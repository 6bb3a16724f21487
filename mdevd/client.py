# SPDX-License-Identifier: LGPL-2.1-or-later
"""A small asyncio client for mdevd's D-Bus API, for `mdevdctl` and for managers to import.

It speaks only the public contract (`dbus/org.mdevd.Mdevd1.xml`): no private channel exists.
Every call has a timeout (dbus-fast has none of its own). Errors from the daemon arrive as
`DaemonError` carrying the contract's error name, so callers branch on names, not on text.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dbus_fast import BusType, DBusError, Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from mdevd.bus.names import (
    BUS_NAME,
    DEVICE_INTERFACE,
    DEVICES_PATH,
    ERROR_PREFIX,
    MANAGER_INTERFACE,
    MANAGER_PATH,
    OBJECT_MANAGER_INTERFACE,
    PARENT_INTERFACE,
    ROOT_PATH,
)

DEFAULT_TIMEOUT = 60.0
#: What the bus answers for a method the daemon does not have.
UNKNOWN_METHOD = "org.freedesktop.DBus.Error.UnknownMethod"


class ClientError(Exception):
    """Anything that kept a call from getting the daemon's answer."""


class DaemonError(ClientError):
    """The daemon answered with an error; `name` is the full D-Bus error name."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name
        self.message = message

    @property
    def short_name(self) -> str:
        """`NotFound` for `org.mdevd.Mdevd1.Error.NotFound`; the full name for foreign errors."""
        return self.name.removeprefix(ERROR_PREFIX)


@dataclass(frozen=True, slots=True)
class TypeInfo:
    type_id: str
    name: str
    description: str
    device_api: str
    available_instances: int


@dataclass(frozen=True, slots=True)
class ParentInfo:
    path: str
    name: str
    sysfs_path: str
    subsystem: str
    types: dict[str, TypeInfo]


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    path: str
    uuid: str
    parent: str
    type_id: str
    active: bool
    defined: bool
    autostart: bool
    attributes: tuple[tuple[str, str], ...]
    sysfs_path: str
    iommu_group: int
    config_file: str
    last_error: str
    parent_object: str = "/"

    @classmethod
    def from_struct(cls, struct: Sequence[Any]) -> DeviceInfo:
        """From one ListDevices entry: the path, the Device properties in the contract's
        order, then a dictionary of later additions (ignored here)."""
        (
            path,
            uuid,
            parent,
            parent_object,
            type_id,
            active,
            defined,
            autostart,
            attributes,
            sysfs_path,
            iommu_group,
            config_file,
            last_error,
        ) = struct[:13]
        return cls(
            path=path,
            uuid=uuid,
            parent=parent,
            type_id=type_id,
            active=active,
            defined=defined,
            autostart=autostart,
            attributes=tuple((str(n), str(v)) for n, v in attributes),
            sysfs_path=sysfs_path,
            iommu_group=iommu_group,
            config_file=config_file,
            last_error=last_error,
            parent_object=parent_object,
        )

    @classmethod
    def from_properties(cls, path: str, props: Mapping[str, Any]) -> DeviceInfo:
        return cls(
            path=path,
            uuid=props["UUID"],
            parent=props["Parent"],
            type_id=props["Type"],
            active=props["Active"],
            defined=props["Defined"],
            autostart=props["Autostart"],
            attributes=tuple((str(n), str(v)) for n, v in props["Attributes"]),
            sysfs_path=props["SysfsPath"],
            iommu_group=props["IommuGroup"],
            config_file=props["ConfigFile"],
            last_error=props["LastError"],
            parent_object=props.get("ParentObject", "/"),
        )


@dataclass(frozen=True, slots=True)
class Event:
    """One thing the daemon reported: a `DeviceEvent`, or an object added or removed."""

    kind: str  # "device-event", "added", "removed"
    path: str
    uuid: str = ""
    event: str = ""
    details: dict[str, str] = field(default_factory=dict)


def _unwrap(value: Any) -> Any:
    if isinstance(value, Variant):
        return _unwrap(value.value)
    if isinstance(value, dict):
        return {k: _unwrap(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_unwrap(v) for v in value]
    return value


def _options(**values: Any) -> dict[str, Variant]:
    signatures = {bool: "b", str: "s"}
    options: dict[str, Variant] = {}
    for key, value in values.items():
        if value is None:
            continue
        dbus_key = key.replace("auth_interactive", "auth.interactive")
        if key == "attributes":
            options[dbus_key] = Variant("a(ss)", [list(pair) for pair in value])
        else:
            options[dbus_key] = Variant(signatures[type(value)], value)
    return options


class Client:
    def __init__(self, bus: MessageBus, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.bus = bus
        self.timeout = timeout
        self.interactive = False

    @classmethod
    async def connect(cls, address: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> Client:
        """Connect to the system bus (or `address`; `DBUS_SYSTEM_BUS_ADDRESS` is honoured)."""
        try:
            async with asyncio.timeout(timeout):
                if address:
                    bus = await MessageBus(bus_address=address).connect()
                else:
                    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
        except (OSError, TimeoutError, DBusError) as exc:
            where = address or os.environ.get("DBUS_SYSTEM_BUS_ADDRESS", "the system bus")
            raise ClientError(f"cannot connect to {where}: {exc}") from exc
        return cls(bus, timeout)

    def close(self) -> None:
        self.bus.disconnect()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    async def call(
        self, path: str, interface: str, member: str, signature: str = "", body: Sequence[Any] = ()
    ) -> list[Any]:
        message = Message(
            destination=BUS_NAME,
            path=path,
            interface=interface,
            member=member,
            signature=signature,
            body=list(body),
        )
        try:
            async with asyncio.timeout(self.timeout):
                reply = await self.bus.call(message)
        except TimeoutError as exc:
            raise DaemonError(
                ERROR_PREFIX + "Timeout", f"{member}: no answer within {self.timeout:g} s"
            ) from exc
        if reply is None:
            raise ClientError(f"{member}: no reply")
        if reply.message_type == MessageType.ERROR:
            text = reply.body[0] if reply.body else ""
            raise DaemonError(reply.error_name or "", str(text))
        return list(reply.body)

    # ---- reads -------------------------------------------------------------------------------

    async def managed_objects(self) -> dict[str, dict[str, dict[str, Any]]]:
        (objects,) = await self.call(ROOT_PATH, OBJECT_MANAGER_INTERFACE, "GetManagedObjects")
        result: dict[str, dict[str, dict[str, Any]]] = _unwrap(objects)
        return result

    async def list_devices(self) -> list[DeviceInfo]:
        """Every device, from one ListDevices call (a third of GetManagedObjects' size), in no
        particular order."""
        (structs,) = await self.call(
            MANAGER_PATH, MANAGER_INTERFACE, "ListDevices", "a{sv}", [_options()]
        )
        return [DeviceInfo.from_struct(struct) for struct in structs]

    async def devices(self) -> list[DeviceInfo]:
        """Every device, sorted by parent and UUID."""
        try:
            devices = await self.list_devices()
        except DaemonError as error:
            # A daemon older than ListDevices (its Features lack "list-devices").
            if error.name != UNKNOWN_METHOD:
                raise
            objects = await self.managed_objects()
            devices = [
                DeviceInfo.from_properties(path, interfaces[DEVICE_INTERFACE])
                for path, interfaces in objects.items()
                if DEVICE_INTERFACE in interfaces
            ]
        return sorted(devices, key=lambda d: (d.parent, d.uuid))

    async def parents(self) -> list[ParentInfo]:
        objects = await self.managed_objects()
        parents = []
        for path, interfaces in objects.items():
            props = interfaces.get(PARENT_INTERFACE)
            if props is None:
                continue
            types = {
                type_id: TypeInfo(
                    type_id=type_id,
                    name=info.get("name", ""),
                    description=info.get("description", ""),
                    device_api=info.get("device_api", ""),
                    available_instances=int(info.get("available_instances", 0)),
                )
                for type_id, info in props["Types"].items()
            }
            parents.append(
                ParentInfo(path, props["Name"], props["SysfsPath"], props["Subsystem"], types)
            )
        return sorted(parents, key=lambda p: p.name)

    async def device(self, uuid: str) -> DeviceInfo:
        path = await self.get_device(uuid)
        (props,) = await self.call(
            path, "org.freedesktop.DBus.Properties", "GetAll", "s", [DEVICE_INTERFACE]
        )
        return DeviceInfo.from_properties(path, _unwrap(props))

    async def get_device(self, uuid: str) -> str:
        (path,) = await self.call(MANAGER_PATH, MANAGER_INTERFACE, "GetDevice", "s", [uuid])
        return str(path)

    async def manager_properties(self) -> dict[str, Any]:
        (props,) = await self.call(
            MANAGER_PATH, "org.freedesktop.DBus.Properties", "GetAll", "s", [MANAGER_INTERFACE]
        )
        result: dict[str, Any] = _unwrap(props)
        return result

    # ---- mutations ---------------------------------------------------------------------------

    def _auth(self) -> bool | None:
        return True if self.interactive else None

    async def create_device(
        self,
        parent: str,
        type_id: str,
        *,
        uuid: str | None = None,
        attributes: Sequence[tuple[str, str]] = (),
        force: bool | None = None,
    ) -> str:
        options = _options(
            uuid=uuid, attributes=attributes or None, force=force, auth_interactive=self._auth()
        )
        (path,) = await self.call(
            MANAGER_PATH, MANAGER_INTERFACE, "CreateDevice", "ssa{sv}", [parent, type_id, options]
        )
        return str(path)

    async def define_device(
        self,
        parent: str,
        type_id: str,
        *,
        uuid: str | None = None,
        attributes: Sequence[tuple[str, str]] = (),
        autostart: bool | None = None,
        start: bool | None = None,
        force: bool | None = None,
    ) -> str:
        options = _options(
            uuid=uuid,
            attributes=attributes or None,
            autostart=autostart,
            start=start,
            force=force,
            auth_interactive=self._auth(),
        )
        (path,) = await self.call(
            MANAGER_PATH, MANAGER_INTERFACE, "DefineDevice", "ssa{sv}", [parent, type_id, options]
        )
        return str(path)

    async def _device_call(self, uuid: str, member: str, **options: Any) -> None:
        path = await self.get_device(uuid)
        await self.call(
            path,
            DEVICE_INTERFACE,
            member,
            "a{sv}",
            [_options(**options, auth_interactive=self._auth())],
        )

    async def start(self, uuid: str, *, force: bool | None = None) -> None:
        await self._device_call(uuid, "Start", force=force)

    async def stop(
        self, uuid: str, *, force: bool | None = None, caller_holds_group: bool | None = None
    ) -> None:
        await self._device_call(uuid, "Stop", force=force, caller_holds_group=caller_holds_group)

    async def define(
        self, uuid: str, *, autostart: bool | None = None, force: bool | None = None
    ) -> None:
        await self._device_call(uuid, "Define", autostart=autostart, force=force)

    async def undefine(self, uuid: str, *, force: bool | None = None) -> None:
        await self._device_call(uuid, "Undefine", force=force)

    async def query_attributes(self, uuid: str) -> tuple[tuple[str, str], ...]:
        """The running device's attributes as its callout script reports them (mdevctl's
        `get attributes`), else as mdevd wrote them."""
        path = await self.get_device(uuid)
        (pairs,) = await self.call(
            path,
            DEVICE_INTERFACE,
            "QueryAttributes",
            "a{sv}",
            [_options(auth_interactive=self._auth())],
        )
        return tuple((str(name), str(value)) for name, value in pairs)

    async def update(
        self,
        uuid: str,
        *,
        type_id: str | None = None,
        autostart: bool | None = None,
        attributes: Sequence[tuple[str, str]] | None = None,
        live: bool | None = None,
        persist: bool | None = None,
        force: bool | None = None,
    ) -> None:
        changes: dict[str, Variant] = {}
        if type_id is not None:
            changes["type"] = Variant("s", type_id)
        if autostart is not None:
            changes["autostart"] = Variant("b", autostart)
        if attributes is not None:
            changes["attributes"] = Variant("a(ss)", [list(pair) for pair in attributes])
        path = await self.get_device(uuid)
        await self.call(
            path,
            DEVICE_INTERFACE,
            "Update",
            "a{sv}a{sv}",
            [
                changes,
                _options(live=live, persist=persist, force=force, auth_interactive=self._auth()),
            ],
        )

    async def reload(self) -> None:
        await self.call(
            MANAGER_PATH,
            MANAGER_INTERFACE,
            "Reload",
            "a{sv}",
            [_options(auth_interactive=self._auth())],
        )

    # ---- events ------------------------------------------------------------------------------

    async def events(self, ready: Callable[[], None] | None = None) -> AsyncIterator[Event]:
        """Every DeviceEvent and object added/removed, until the caller stops iterating.

        `ready` is called once the subscription is in place: whatever happens after that is
        seen. Losing the bus connection raises ClientError (a monitor must not wait forever).
        """
        queue: asyncio.Queue[Event] = asyncio.Queue()

        def on_message(message: Message) -> None:
            if message.message_type != MessageType.SIGNAL:
                return
            if message.member == "DeviceEvent" and message.interface == MANAGER_INTERFACE:
                device, uuid, event, details = message.body
                queue.put_nowait(Event("device-event", device, uuid, event, _unwrap(details)))
            elif message.interface == OBJECT_MANAGER_INTERFACE and message.path == ROOT_PATH:
                path = message.body[0]
                kind = "added" if message.member == "InterfacesAdded" else "removed"
                uuid = (
                    path.rsplit("/", 1)[-1].replace("_", "-")
                    if path.startswith(DEVICES_PATH + "/")
                    else ""
                )
                queue.put_nowait(Event(kind, path, uuid))

        rules = [
            f"type='signal',sender='{BUS_NAME}',interface='{MANAGER_INTERFACE}',member='DeviceEvent'",
            f"type='signal',sender='{BUS_NAME}',interface='{OBJECT_MANAGER_INTERFACE}'",
        ]
        self.bus.add_message_handler(on_message)
        # dbus-fast leaves wait_for_disconnect unannotated.
        disconnected = asyncio.ensure_future(self.bus.wait_for_disconnect())  # type: ignore[no-untyped-call]
        try:
            for rule in rules:
                await self._add_match(rule)
            if ready is not None:
                ready()
            while True:
                while not queue.empty():
                    yield queue.get_nowait()
                next_event = asyncio.ensure_future(queue.get())
                await asyncio.wait({next_event, disconnected}, return_when=asyncio.FIRST_COMPLETED)
                if next_event.done():
                    yield next_event.result()
                    continue
                next_event.cancel()
                while not queue.empty():
                    yield queue.get_nowait()
                reason = "" if disconnected.cancelled() else disconnected.exception()
                raise ClientError(
                    f"lost the connection to the bus{f': {reason}' if reason else ''}"
                )
        finally:
            disconnected.cancel()
            self.bus.remove_message_handler(on_message)

    async def _add_match(self, rule: str) -> None:
        message = Message(
            destination="org.freedesktop.DBus",
            path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus",
            member="AddMatch",
            signature="s",
            body=[rule],
        )
        async with asyncio.timeout(self.timeout):
            reply = await self.bus.call(message)
        if reply is not None and reply.message_type == MessageType.ERROR:
            raise ClientError(f"AddMatch failed: {reply.error_name}")
