# SPDX-License-Identifier: LGPL-2.1-or-later
"""A small asyncio client for mdevd's D-Bus API, for `mdevdctl` and for managers to import.

It speaks only the public contract (`dbus/org.mdevd.Mdevd1.xml`): no private channel exists.
Every call has a timeout (dbus-fast has none of its own); running out of it raises
`CallTimeout`, which is the client's own verdict, never the daemon's `Error.Timeout`. Errors
from the daemon arrive as one subclass of `DaemonError` per contract error (`NotFound`,
`Exists`, ...), each keeping the full D-Bus name in `name`, so callers branch on classes or on
names, not on text. `SyncClient` is the same API for programs without an asyncio loop.
docs/client.md is the guide.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Coroutine,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field, replace
from typing import Any, Concatenate, ParamSpec, TypeVar

from dbus_fast import BusType, DBusError, Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from mdevd.bus.names import (
    BUS_NAME,
    DBUS_BUS_NAME,
    DBUS_INTERFACE,
    DBUS_PATH,
    DEVICE_INTERFACE,
    DEVICES_PATH,
    ERROR_PREFIX,
    MANAGER_INTERFACE,
    MANAGER_PATH,
    OBJECT_MANAGER_INTERFACE,
    PARENT_INTERFACE,
    PARENTS_PATH,
    PROPERTIES_INTERFACE,
    ROOT_PATH,
)

DEFAULT_TIMEOUT = 60.0
#: What the bus answers for a method the daemon does not have.
UNKNOWN_METHOD = "org.freedesktop.DBus.Error.UnknownMethod"
#: What dbus-fast answers for a path it exports nothing at (versions differ).
_NO_SUCH_OBJECT = {"org.freedesktop.DBus.Error.UnknownObject", UNKNOWN_METHOD}


class ClientError(Exception):
    """Anything that kept a call from getting the daemon's answer (base of every error here)."""


class CallTimeout(ClientError, TimeoutError):
    """No answer within the client's own timeout. The daemon may still complete the call (a
    create may have happened): retry with the same UUID, which is safe."""

    def __init__(self, member: str, timeout: float) -> None:
        super().__init__(f"{member}: no answer within {timeout:g} s")
        self.member = member
        self.timeout = timeout


class DaemonError(ClientError):
    """An error answer; `name` is the full D-Bus error name.

    Constructing `DaemonError(name, message)` directly still works (older callers do); answers
    from the daemon arrive as the subclass for their name (`error_for`).
    """

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name
        self.message = message

    @property
    def short_name(self) -> str:
        """`NotFound` for `org.mdevd.Mdevd1.Error.NotFound`; the full name for foreign errors."""
        return self.name.removeprefix(ERROR_PREFIX)


class DaemonNotRunning(DaemonError):
    """The bus answered that nobody owns `org.mdevd.Mdevd1` (ServiceUnknown, NameHasNoOwner):
    mdevd is not running, or not yet. A DaemonError for callers written before it existed."""


# One class per error of the contract (docs/dbus-api.md, "Errors"), named as the contract names
# it. The three NotAuthorized* share a base so "was I refused?" is one except clause.
class Failed(DaemonError):
    """The operation failed for a reason the contract has no other name for."""


class NotAuthorized(DaemonError):
    """polkit refused the caller."""


class NotAuthorizedCanObtain(NotAuthorized):
    """Refused, but interactive authentication (`auth.interactive`) could grant it."""


class NotAuthorizedDismissed(NotAuthorized):
    """The user dismissed the authentication dialog."""


class InvalidArgument(DaemonError):
    """A malformed argument or an unknown option key."""


class ParentNotFound(DaemonError):
    """No such parent device (not registered with mdev)."""


class TypeNotSupported(DaemonError):
    """The parent does not support that type."""


class NoInstancesAvailable(DaemonError):
    """The type has no room left on the parent."""


class Exists(DaemonError):
    """The UUID is in use by a different device or definition."""


class NotFound(DaemonError):
    """No device with that UUID."""


class AlreadyActive(DaemonError):
    """Start of a running device."""


class NotActive(DaemonError):
    """Stop of a device that is not running."""


class NotDefined(DaemonError):
    """The operation needs a definition and the device has none."""


class Busy(DaemonError):
    """The device is in use (a VM holds its vfio group), or the caller has too many calls
    waiting; in the latter case nothing was done: retry once the earlier calls are answered."""


class AttributeRejected(DaemonError):
    """The kernel refused an attribute write; the device was rolled back."""


class Timeout(DaemonError):
    """The daemon's own deadline (e.g. the kernel did not answer) expired. Not `CallTimeout`."""


class ConfigInvalid(DaemonError):
    """A definition file or the configuration is invalid."""


class ReadOnly(DaemonError):
    """The definition cannot be changed (read-only directory or file)."""


class Vetoed(DaemonError):
    """An mdevctl callout script refused the operation; the message carries its output."""


#: Contract error short name -> its class.
ERRORS: dict[str, type[DaemonError]] = {
    cls.__name__: cls
    for cls in (
        Failed,
        NotAuthorized,
        NotAuthorizedCanObtain,
        NotAuthorizedDismissed,
        InvalidArgument,
        ParentNotFound,
        TypeNotSupported,
        NoInstancesAvailable,
        Exists,
        NotFound,
        AlreadyActive,
        NotActive,
        NotDefined,
        Busy,
        AttributeRejected,
        Timeout,
        ConfigInvalid,
        ReadOnly,
        Vetoed,
    )
}
_NOT_RUNNING = {
    "org.freedesktop.DBus.Error.ServiceUnknown",
    "org.freedesktop.DBus.Error.NameHasNoOwner",
}


def error_for(name: str, message: str) -> DaemonError:
    """The exception for an error answer: its contract class, else a plain DaemonError."""
    if name in _NOT_RUNNING:
        return DaemonNotRunning(name, message)
    cls = (
        ERRORS.get(name.removeprefix(ERROR_PREFIX), DaemonError)
        if name.startswith(ERROR_PREFIX)
        else DaemonError
    )
    return cls(name, message)


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


#: `DeviceInfo.status`, one word for where a device stands (the Device's `Status` property).
STATUS_ACTIVE = "active"
#: Defined with autostart, not active, its parent absent: it starts when the parent comes.
STATUS_WAITING = "waiting"
#: Not active, and its last start failed: `last_error` says why.
STATUS_FAILED = "failed"
#: Anything else: defined and not running, nothing wrong.
STATUS_INACTIVE = "inactive"
_STATUSES = {STATUS_ACTIVE, STATUS_WAITING, STATUS_FAILED, STATUS_INACTIVE}

#: `PendingChanges.apply`: a Stop then a Start makes the device what its definition says.
APPLY_RESTART = "restart"
#: An Update of the attributes with `live=true` does (`mdevdctl modify UUID --live`).
APPLY_UPDATE_LIVE = "update-live"


@dataclass(frozen=True, slots=True)
class PendingChanges:
    """Where a running device's definition differs from the device (its `PendingChanges`):
    the DEFINED values of what differs, None for what does not. False when nothing does."""

    parent: str | None = None
    type_id: str | None = None
    attributes: tuple[tuple[str, str], ...] | None = None
    #: `restart`, `update-live`, or "" when nothing differs.
    apply: str = ""

    def __bool__(self) -> bool:
        return self.parent is not None or self.type_id is not None or self.attributes is not None

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> PendingChanges:
        """From the property's a{sv} (unwrapped); keys added to it later are ignored."""
        parent = values.get("parent")
        type_id = values.get("type")
        attributes = values.get("attributes")
        changes = cls(
            parent=None if parent is None else str(parent),
            type_id=None if type_id is None else str(type_id),
            attributes=(
                None if attributes is None else tuple((str(n), str(v)) for n, v in attributes)
            ),
        )
        apply = str(values.get("apply", ""))
        if not apply and changes:
            # The contract always sends `apply` with a change; derive it the same way if not.
            apply = (
                APPLY_RESTART if parent is not None or type_id is not None else APPLY_UPDATE_LIVE
            )
        return replace(changes, apply=apply) if changes else NO_PENDING_CHANGES


NO_PENDING_CHANGES = PendingChanges()


def _status_word(value: object) -> str:
    """The `Status` as sent; "" (derive it) when absent; a word added to the contract after
    this client was written reads as `inactive`, as the contract says."""
    if value is None or value == "":
        return ""
    return str(value) if value in _STATUSES else STATUS_INACTIVE


def derived_status(
    *, active: bool, defined: bool, autostart: bool, parent_object: str, last_error: str
) -> str:
    """The `Status` a daemon without that property would have given: the contract's rule
    (the first that holds: active, waiting, failed, inactive) from the older properties."""
    if active:
        return STATUS_ACTIVE
    if defined and autostart and parent_object == "/":
        return STATUS_WAITING
    if last_error:
        return STATUS_FAILED
    return STATUS_INACTIVE


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
    #: `active`, `waiting`, `failed` or `inactive` (the STATUS_* words). Left out (""), it is
    #: derived from the other fields, as for a daemon older than the `Status` property.
    status: str = ""
    #: Empty (false) unless the device is defined and active and the two differ.
    pending_changes: PendingChanges = NO_PENDING_CHANGES

    def __post_init__(self) -> None:
        if not self.status:
            # Frozen: the one way to fill in a derived field.
            object.__setattr__(
                self,
                "status",
                derived_status(
                    active=self.active,
                    defined=self.defined,
                    autostart=self.autostart,
                    parent_object=self.parent_object,
                    last_error=self.last_error,
                ),
            )

    @classmethod
    def from_struct(cls, struct: Sequence[Any]) -> DeviceInfo:
        """From one ListDevices entry: the path, the Device properties in the contract's
        order, then a dictionary of later additions (`Status`, `PendingChanges`; a daemon
        without them sends it empty, and both are then derived)."""
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
        more: dict[str, Any] = _unwrap(struct[13]) if len(struct) > 13 else {}
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
            status=_status_word(more.get("Status")),
            pending_changes=PendingChanges.from_dict(more.get("PendingChanges", {})),
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
            status=_status_word(props.get("Status")),
            pending_changes=PendingChanges.from_dict(_unwrap(props.get("PendingChanges", {}))),
        )


@dataclass(frozen=True, slots=True)
class Event:
    """One thing the daemon reported, or the bus reported about the daemon.

    `kind`: "device-event" (a DeviceEvent: `event`, `details`), "added", "removed" (objects),
    and, when asked for, "properties-changed" (`properties`: the new values of a device's or a
    parent's properties) and "daemon-stopped" / "daemon-started" (the bus name lost or got an
    owner: mdevd stopped, crashed or restarted; `details["owner"]` is the new unique name).
    """

    kind: str
    path: str
    uuid: str = ""
    event: str = ""
    details: dict[str, str] = field(default_factory=dict)
    properties: dict[str, Any] = field(default_factory=dict)


def _unwrap(value: Any) -> Any:
    if isinstance(value, Variant):
        return _unwrap(value.value)
    if isinstance(value, dict):
        return {k: _unwrap(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_unwrap(v) for v in value]
    return value


def _uuid_of(path: str) -> str:
    """The UUID in a device's object path, "" for any other path."""
    if path.startswith(DEVICES_PATH + "/"):
        return path.rsplit("/", 1)[-1].replace("_", "-")
    return ""


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
            raise CallTimeout(member, self.timeout) from exc
        if reply is None:
            raise ClientError(f"{member}: no reply")
        if reply.message_type == MessageType.ERROR:
            text = reply.body[0] if reply.body else ""
            raise error_for(reply.error_name or "", str(text))
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
    ) -> DeviceInfo:
        """Create a transient device; return it as it is once created (one more read).

        Pass `uuid` (uuid4) to make a retry after a `CallTimeout` safe: the same request
        again returns the same device instead of making a second one.
        """
        path = await self.create_device_path(
            parent, type_id, uuid=uuid, attributes=attributes, force=force
        )
        return await self._device_at(path, parent, type_id, attributes)

    async def create_device_path(
        self,
        parent: str,
        type_id: str,
        *,
        uuid: str | None = None,
        attributes: Sequence[tuple[str, str]] = (),
        force: bool | None = None,
    ) -> str:
        """As `create_device`, returning only the object path (what `create_device` returned
        before it returned the device): one round trip, for loops that need no more."""
        options = _options(
            uuid=uuid, attributes=attributes or None, force=force, auth_interactive=self._auth()
        )
        (path,) = await self.call(
            MANAGER_PATH, MANAGER_INTERFACE, "CreateDevice", "ssa{sv}", [parent, type_id, options]
        )
        return str(path)

    async def _device_at(
        self, path: str, parent: str, type_id: str, attributes: Sequence[tuple[str, str]]
    ) -> DeviceInfo:
        try:
            (props,) = await self.call(
                path, PROPERTIES_INTERFACE, "GetAll", "s", [DEVICE_INTERFACE]
            )
        except DaemonError as error:
            if error.name not in _NO_SUCH_OBJECT:
                raise
            # Created, then stopped by someone else before we looked: the create did happen,
            # so report the device as it now is (gone) rather than fail the call.
            return DeviceInfo(
                path=path,
                uuid=path.rsplit("/", 1)[-1].replace("_", "-"),
                parent=parent,
                type_id=type_id,
                active=False,
                defined=False,
                autostart=False,
                attributes=tuple(attributes),
                sysfs_path="",
                iommu_group=-1,
                config_file="",
                last_error="",
            )
        return DeviceInfo.from_properties(path, _unwrap(props))

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

    async def events(
        self,
        ready: Callable[[], None] | None = None,
        *,
        property_changes: bool = False,
        daemon_restarts: bool = False,
    ) -> AsyncGenerator[Event, None]:
        """Every DeviceEvent and object added/removed, until the caller stops iterating.

        `property_changes` adds a "properties-changed" event per PropertiesChanged of a device
        or parent; `daemon_restarts` adds "daemon-stopped"/"daemon-started" when the daemon's
        bus name loses or gains an owner. Both are opt-in so that consumers written before them
        see the stream they expect. The subscription survives a daemon restart (the bus matches
        the name's current owner), so one iteration spans restarts.

        `ready` is called once the subscription is in place: whatever happens after that is
        seen. Losing the bus connection raises ClientError (a monitor must not wait forever).
        """
        queue: asyncio.Queue[Event] = asyncio.Queue()

        def on_message(message: Message) -> None:
            if message.message_type != MessageType.SIGNAL:
                return
            signal_path = message.path or ""
            if message.member == "DeviceEvent" and message.interface == MANAGER_INTERFACE:
                device, uuid, event, details = message.body
                queue.put_nowait(Event("device-event", device, uuid, event, _unwrap(details)))
            elif message.interface == OBJECT_MANAGER_INTERFACE and message.path == ROOT_PATH:
                path = message.body[0]
                kind = "added" if message.member == "InterfacesAdded" else "removed"
                queue.put_nowait(Event(kind, path, _uuid_of(path)))
            elif (
                property_changes
                and message.interface == PROPERTIES_INTERFACE
                and message.member == "PropertiesChanged"
                and signal_path.startswith((DEVICES_PATH + "/", PARENTS_PATH + "/"))
            ):
                _, changed, _ = message.body
                queue.put_nowait(
                    Event(
                        "properties-changed",
                        signal_path,
                        _uuid_of(signal_path),
                        properties=_unwrap(changed),
                    )
                )
            elif (
                daemon_restarts
                and message.sender == DBUS_BUS_NAME
                and message.member == "NameOwnerChanged"
                and message.body[0] == BUS_NAME
            ):
                _, old_owner, new_owner = message.body
                # A replacement (both set) is a stop and a start: report both.
                if old_owner:
                    queue.put_nowait(Event("daemon-stopped", "", details={"owner": ""}))
                if new_owner:
                    queue.put_nowait(Event("daemon-started", "", details={"owner": new_owner}))

        rules = [
            f"type='signal',sender='{BUS_NAME}',interface='{MANAGER_INTERFACE}',member='DeviceEvent'",
            f"type='signal',sender='{BUS_NAME}',interface='{OBJECT_MANAGER_INTERFACE}'",
        ]
        if property_changes:
            rules.append(
                f"type='signal',sender='{BUS_NAME}',interface='{PROPERTIES_INTERFACE}',"
                "member='PropertiesChanged'"
            )
        if daemon_restarts:
            rules.append(
                f"type='signal',sender='{DBUS_BUS_NAME}',interface='{DBUS_INTERFACE}',"
                f"member='NameOwnerChanged',arg0='{BUS_NAME}'"
            )
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
                try:
                    await asyncio.wait(
                        {next_event, disconnected}, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    # Cancelled while waiting (a SyncClient's idle timeout, Ctrl-C): leave no
                    # getter behind on the queue.
                    if not next_event.done():
                        next_event.cancel()
                if next_event.done() and not next_event.cancelled():
                    yield next_event.result()
                    continue
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
            destination=DBUS_BUS_NAME,
            path=DBUS_PATH,
            interface=DBUS_INTERFACE,
            member="AddMatch",
            signature="s",
            body=[rule],
        )
        async with asyncio.timeout(self.timeout):
            reply = await self.bus.call(message)
        if reply is not None and reply.message_type == MessageType.ERROR:
            raise ClientError(f"AddMatch failed: {reply.error_name}")


# ---- the synchronous facade ---------------------------------------------------------------------

P = ParamSpec("P")
T = TypeVar("T")


def _blocking(
    method: Callable[Concatenate[Client, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[SyncClient, P], T]:
    """`Client.method` as a blocking method of SyncClient, with the same parameters."""

    def call(self: SyncClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._run(method(self.client, *args, **kwargs))

    call.__name__ = method.__name__
    call.__qualname__ = f"SyncClient.{method.__name__}"
    call.__doc__ = method.__doc__
    return call


class SyncClient:
    """The Client API for programs without an asyncio loop (Nova-style managers, scripts).

    dbus-fast is asyncio only, so the connection lives on a private loop in a daemon thread of
    its own; each method hands its call to that loop and blocks until the answer (or the
    client's timeout). The methods and exceptions are `Client`'s. Safe to use from several
    threads: calls are queued on the one connection. Close it (or use `with`) when done.
    """

    def __init__(self, address: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="mdevd-client", daemon=True
        )
        self._thread.start()
        try:
            self.client: Client = self._run(Client.connect(address, timeout))
        except BaseException:
            self._stop_loop()
            raise

    @property
    def interactive(self) -> bool:
        return self.client.interactive

    @interactive.setter
    def interactive(self, value: bool) -> None:
        self.client.interactive = value

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self._thread:
            coroutine.close()
            raise RuntimeError("SyncClient called from its own loop; use Client there")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def close(self) -> None:
        if self._loop.is_closed():
            return

        async def disconnect() -> None:
            self.client.close()

        self._run(disconnect())
        self._stop_loop()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    list_devices = _blocking(Client.list_devices)
    devices = _blocking(Client.devices)
    parents = _blocking(Client.parents)
    device = _blocking(Client.device)
    get_device = _blocking(Client.get_device)
    manager_properties = _blocking(Client.manager_properties)
    managed_objects = _blocking(Client.managed_objects)
    create_device = _blocking(Client.create_device)
    create_device_path = _blocking(Client.create_device_path)
    define_device = _blocking(Client.define_device)
    start = _blocking(Client.start)
    stop = _blocking(Client.stop)
    define = _blocking(Client.define)
    undefine = _blocking(Client.undefine)
    query_attributes = _blocking(Client.query_attributes)
    update = _blocking(Client.update)
    reload = _blocking(Client.reload)

    def events(
        self,
        ready: Callable[[], None] | None = None,
        *,
        property_changes: bool = False,
        daemon_restarts: bool = False,
        idle_timeout: float | None = None,
    ) -> Iterator[Event]:
        """`Client.events` as a blocking iterator. Events arriving between two `next()` are
        kept, not lost. `idle_timeout`: end the iteration (no exception) after that many
        seconds without an event; None waits for ever. `ready` runs on the client's thread."""
        stream = self.client.events(
            ready, property_changes=property_changes, daemon_restarts=daemon_restarts
        )
        try:
            while True:
                pending = asyncio.run_coroutine_threadsafe(
                    _next_or_idle(stream, idle_timeout), self._loop
                )
                try:
                    event = pending.result()
                except StopAsyncIteration:
                    return
                if event is None:
                    return
                yield event
        finally:
            if not self._loop.is_closed():
                asyncio.run_coroutine_threadsafe(stream.aclose(), self._loop).result()


async def _next_or_idle(stream: AsyncIterator[Event], idle_timeout: float | None) -> Event | None:
    """The next event, or None after `idle_timeout` seconds without one."""
    try:
        async with asyncio.timeout(idle_timeout):
            return await anext(stream)
    except TimeoutError:
        return None
