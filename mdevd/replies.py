# SPDX-License-Identifier: LGPL-2.1-or-later
"""What mdevd's replies mean, for every client: devices, parents, events and errors by name.

Plain data and parsing, with no D-Bus library and no dataclasses (`mdevd.record`: these
are read at every start of a command-line program): `mdevd.client` (asyncio, dbus-fast) and
`mdevd.blocking` (the command-line programs' quick reads, `mdevd.wire`) both build these from
the same replies, so a program that only reads imports neither asyncio nor dbus-fast. Managers
import them from `mdevd.client`, which re-exports every name here.
"""

from __future__ import annotations

from collections.abc import Mapping

from mdevd.bus.names import (
    DEVICE_INTERFACE,
    DEVICES_PATH,
    ERROR_PREFIX,
    PARENT_INTERFACE,
)
from mdevd.record import Record

TYPE_CHECKING = False  # not typing's: importing typing is a start-up cost of every client
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

__all__ = [
    "APPLY_RESTART",
    "APPLY_UPDATE_LIVE",
    "BACKEND_MDEV",
    "BACKEND_NVIDIA_VF",
    "DEFAULT_TIMEOUT",
    "ERRORS",
    "LIFETIME_CONNECTION",
    "LIFETIME_MANUAL",
    "LIFETIME_UNIT_PREFIX",
    "NO_PENDING_CHANGES",
    "NO_SUCH_OBJECT",
    "STATUS_ACTIVE",
    "STATUS_FAILED",
    "STATUS_INACTIVE",
    "STATUS_WAITING",
    "UNKNOWN_METHOD",
    "AlreadyActive",
    "AttributeRejected",
    "Busy",
    "CallTimeout",
    "ClientError",
    "ConfigInvalid",
    "DaemonError",
    "DaemonNotRunning",
    "DeviceInfo",
    "DeviceSummary",
    "Event",
    "Exists",
    "Failed",
    "InvalidArgument",
    "ManagedObjects",
    "NoInstancesAvailable",
    "NotActive",
    "NotAuthorized",
    "NotAuthorizedCanObtain",
    "NotAuthorizedDismissed",
    "NotDefined",
    "NotFound",
    "NotSupported",
    "ParentInfo",
    "ParentNotFound",
    "PendingChanges",
    "ReadOnly",
    "Timeout",
    "TypeInfo",
    "TypeNotSupported",
    "Vetoed",
    "derived_status",
    "devices_from_objects",
    "error_for",
    "older_than_list_devices",
    "parents_from_objects",
    "sorted_devices",
    "unwrap",
    "uuid_of",
]

DEFAULT_TIMEOUT = 60.0
#: What the bus answers for a method the daemon does not have.
UNKNOWN_METHOD = "org.freedesktop.DBus.Error.UnknownMethod"
#: What dbus-fast answers for a path it exports nothing at (versions differ).
NO_SUCH_OBJECT = {"org.freedesktop.DBus.Error.UnknownObject", UNKNOWN_METHOD}


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


class NotSupported(DaemonError):
    """The kernel or backend cannot do what was asked (a VFIO cdev on a kernel before 6.6)."""


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
        NotSupported,
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


class TypeInfo(Record):
    _fields = ("type_id", "name", "description", "device_api", "available_instances")
    __slots__ = _fields
    type_id: str
    name: str
    description: str
    device_api: str
    available_instances: int

    def __init__(
        self, type_id: str, name: str, description: str, device_api: str, available_instances: int
    ) -> None:
        self._init(type_id, name, description, device_api, available_instances)


#: `backend` of a parent or device: the mdev core (all a daemon without `Backend` has), and
#: NVIDIA's vGPUs on SR-IOV virtual functions. Other words may come: show them as they are.
BACKEND_MDEV = "mdev"
BACKEND_NVIDIA_VF = "nvidia-vf"


class ParentInfo(Record):
    _fields = ("path", "name", "sysfs_path", "subsystem", "types", "backend")
    __slots__ = _fields
    path: str
    name: str
    sysfs_path: str
    subsystem: str
    types: dict[str, TypeInfo]
    #: Its `Backend` ("mdev" from a daemon that does not send it).
    backend: str

    def __init__(
        self,
        path: str,
        name: str,
        sysfs_path: str,
        subsystem: str,
        types: dict[str, TypeInfo],
        backend: str = BACKEND_MDEV,
    ) -> None:
        self._init(path, name, sysfs_path, subsystem, types, backend)


#: `DeviceInfo.lifetime` (the Device's `Lifetime`): until stopped (every defined device's, and
#: a transient device's unless its creator asked otherwise); until the creator's bus
#: connection closes; until the systemd unit after the prefix stops (`unit:qemu-1.scope`).
LIFETIME_MANUAL = "manual"
LIFETIME_CONNECTION = "connection"
LIFETIME_UNIT_PREFIX = "unit:"


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


class PendingChanges(Record):
    """Where a running device's definition differs from the device (its `PendingChanges`):
    the DEFINED values of what differs, None for what does not. False when nothing does."""

    _fields = ("parent", "type_id", "attributes", "apply")
    __slots__ = _fields
    parent: str | None
    type_id: str | None
    attributes: tuple[tuple[str, str], ...] | None
    #: `restart`, `update-live`, or "" when nothing differs.
    apply: str

    def __init__(
        self,
        parent: str | None = None,
        type_id: str | None = None,
        attributes: tuple[tuple[str, str], ...] | None = None,
        apply: str = "",
    ) -> None:
        self._init(parent, type_id, attributes, apply)

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
        return changes.replace(apply=apply) if changes else NO_PENDING_CHANGES


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


class DeviceInfo(Record):
    _fields = (
        "path", "uuid", "parent", "type_id", "active", "defined", "autostart", "attributes",
        "sysfs_path", "iommu_group", "config_file", "last_error", "parent_object", "status",
        "pending_changes", "backend", "placement", "owner", "lifetime",
    )  # fmt: skip
    __slots__ = _fields
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
    parent_object: str
    #: `active`, `waiting`, `failed` or `inactive` (the STATUS_* words). Left out (""), it is
    #: derived from the other fields, as for a daemon older than the `Status` property.
    status: str
    #: Empty (false) unless the device is defined and active and the two differ.
    pending_changes: PendingChanges
    #: Its `Backend`: the running device's, else its parent's; "" when neither is known. A
    #: daemon without the property has only mdev devices: "mdev".
    backend: str
    #: Its `Placement` (an nvidia-vf device's virtual function), "" when none.
    placement: str
    #: Its `Owner`: the label its creator gave (`nova`), else that caller's systemd unit
    #: (`unit:virtqemud.service`) or uid (`uid:1000`); "" for a device another tool made, and
    #: from a daemon without the property.
    owner: str
    #: Its `Lifetime`: `manual`, `connection` or `unit:NAME` (the LIFETIME_* words); "" for a
    #: device without owner, and from a daemon without the property.
    lifetime: str

    def __init__(
        self,
        path: str,
        uuid: str,
        parent: str,
        type_id: str,
        active: bool,
        defined: bool,
        autostart: bool,
        attributes: tuple[tuple[str, str], ...],
        sysfs_path: str,
        iommu_group: int,
        config_file: str,
        last_error: str,
        parent_object: str = "/",
        status: str = "",
        pending_changes: PendingChanges = NO_PENDING_CHANGES,
        backend: str = BACKEND_MDEV,
        placement: str = "",
        owner: str = "",
        lifetime: str = "",
    ) -> None:
        if not status:
            status = derived_status(
                active=active,
                defined=defined,
                autostart=autostart,
                parent_object=parent_object,
                last_error=last_error,
            )
        self._init(
            path, uuid, parent, type_id, active, defined, autostart, attributes, sysfs_path,
            iommu_group, config_file, last_error, parent_object, status, pending_changes,
            backend, placement, owner, lifetime,
        )  # fmt: skip

    @classmethod
    def from_struct(cls, struct: Sequence[Any]) -> DeviceInfo:
        """From one ListDevices entry: the path, the Device properties in the contract's
        order, then a dictionary of later additions (`Status`, `PendingChanges`, `Backend`,
        `Placement`, `Owner`, `Lifetime`; a daemon without them sends it empty: the status is
        then derived, the backend is "mdev", and placement, owner and lifetime are "")."""
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
        # Only the dictionary's own variants are unwrapped here (a client reads a thousand
        # entries at a time): the strings need nothing more, PendingChanges only when set.
        more: dict[str, Any] = (
            {key: getattr(value, "value", value) for key, value in struct[13].items()}
            if len(struct) > 13
            else {}
        )
        pending = more.get("PendingChanges")
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
            pending_changes=(
                PendingChanges.from_dict(unwrap(pending)) if pending else NO_PENDING_CHANGES
            ),
            backend=str(more.get("Backend", BACKEND_MDEV)),
            placement=str(more.get("Placement", "")),
            owner=str(more.get("Owner", "")),
            lifetime=str(more.get("Lifetime", "")),
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
            pending_changes=PendingChanges.from_dict(unwrap(props.get("PendingChanges", {}))),
            backend=str(props.get("Backend", BACKEND_MDEV)),
            placement=str(props.get("Placement", "")),
            owner=str(props.get("Owner", "")),
            lifetime=str(props.get("Lifetime", "")),
        )


class DeviceSummary(Record):
    """One device as ListDeviceSummaries tells it: what `mdevctl list` shows (the fields of
    `DeviceInfo` of the same names, with the same values)."""

    _fields = ("uuid", "parent", "type_id", "active", "defined", "autostart", "attributes")
    __slots__ = _fields
    uuid: str
    parent: str
    type_id: str
    active: bool
    defined: bool
    autostart: bool
    attributes: tuple[tuple[str, str], ...]

    def __init__(
        self,
        uuid: str,
        parent: str,
        type_id: str,
        active: bool,
        defined: bool,
        autostart: bool,
        attributes: tuple[tuple[str, str], ...],
    ) -> None:
        self._init(uuid, parent, type_id, active, defined, autostart, attributes)

    @classmethod
    def from_struct(cls, struct: Sequence[Any]) -> DeviceSummary:
        """From one ListDeviceSummaries entry: (UUID, Parent, Type, Active, Defined, Autostart,
        Attributes)."""
        [summary] = cls.from_structs([struct])
        return summary

    @classmethod
    def from_structs(cls, structs: Sequence[Sequence[Any]]) -> list[DeviceSummary]:
        """`from_struct` of each of a whole reply's entries.

        Built by the slots' own setters rather than through `__init__`: a client reads a
        thousand at a time, and storing fields through `Record._init` cost it 2 ms of the 4 a
        whole ListDeviceSummaries took (issue 20), these 0.5.
        """
        set_uuid, set_parent, set_type, set_active, set_defined, set_autostart, set_attributes = (
            _SUMMARY_SETTERS
        )
        new = object.__new__
        summaries = []
        for uuid, parent, type_id, active, defined, autostart, attributes in structs:
            summary = new(cls)
            set_uuid(summary, uuid)
            set_parent(summary, parent)
            set_type(summary, type_id)
            set_active(summary, active)
            set_defined(summary, defined)
            set_autostart(summary, autostart)
            # Pairs of strings already (the signature says so); most devices have none.
            set_attributes(summary, tuple(map(tuple, attributes)) if attributes else ())
            summaries.append(summary)
        return summaries


#: The setters of DeviceSummary's slots, in `_fields` order (`DeviceSummary.from_structs`).
_SUMMARY_SETTERS: tuple[Any, ...] = tuple(
    getattr(DeviceSummary, name).__set__ for name in DeviceSummary._fields
)


class Event(Record):
    """One thing the daemon reported, or the bus reported about the daemon.

    `kind`: "device-event" (a DeviceEvent: `event`, `details`), "added", "removed" (objects),
    and, when asked for, "properties-changed" (`properties`: the new values of a device's or a
    parent's properties) and "daemon-stopped" / "daemon-started" (the bus name lost or got an
    owner: mdevd stopped, crashed or restarted; `details["owner"]` is the new unique name).
    """

    _fields = ("kind", "path", "uuid", "event", "details", "properties")
    __slots__ = _fields
    kind: str
    path: str
    uuid: str
    event: str
    details: dict[str, str]
    properties: dict[str, Any]

    def __init__(
        self,
        kind: str,
        path: str,
        uuid: str = "",
        event: str = "",
        details: dict[str, str] | None = None,
        properties: dict[str, Any] | None = None,
    ) -> None:
        # None: a new empty dict for each event (a shared default would be one for all).
        self._init(
            kind, path, uuid, event, {} if details is None else details,
            {} if properties is None else properties,
        )  # fmt: skip


def unwrap(value: Any) -> Any:
    # dbus-fast's Variant or mdevd.wire's: both have `signature` and `value`.
    if hasattr(value, "signature") and hasattr(value, "value"):
        return unwrap(value.value)
    if isinstance(value, dict):
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [unwrap(v) for v in value]
    return value


def uuid_of(path: str) -> str:
    """The UUID in a device's object path, "" for any other path."""
    if path.startswith(DEVICES_PATH + "/"):
        return path.rsplit("/", 1)[-1].replace("_", "-")
    return ""


#: GetManagedObjects' reply, unwrapped: path -> interface -> property -> value.
if TYPE_CHECKING:
    ManagedObjects = Mapping[str, Mapping[str, Mapping[str, Any]]]
else:
    ManagedObjects = Mapping  # the name, for importers; its parameters would need typing.Any


# ---- replies that more than one call reads --------------------------------------------------


def sorted_devices(devices: Sequence[DeviceInfo]) -> list[DeviceInfo]:
    """The order every listing uses: by parent, then UUID."""
    return sorted(devices, key=lambda d: (d.parent, d.uuid))


def older_than_list_devices(error: DaemonError) -> bool:
    """ListDevices was refused because the daemon predates it (its Features lack
    "list-devices"): read the objects instead."""
    return error.name == UNKNOWN_METHOD


def devices_from_objects(
    objects: Mapping[str, Mapping[str, Mapping[str, Any]]],
) -> list[DeviceInfo]:
    """Every device in an (unwrapped) GetManagedObjects reply, sorted."""
    return sorted_devices(
        [
            DeviceInfo.from_properties(path, interfaces[DEVICE_INTERFACE])
            for path, interfaces in objects.items()
            if DEVICE_INTERFACE in interfaces
        ]
    )


def parents_from_objects(
    objects: Mapping[str, Mapping[str, Mapping[str, Any]]],
) -> list[ParentInfo]:
    """Every parent in an (unwrapped) GetManagedObjects reply, sorted by name."""
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
            ParentInfo(
                path,
                props["Name"],
                props["SysfsPath"],
                props["Subsystem"],
                types,
                str(props.get("Backend", BACKEND_MDEV)),
            )
        )
    return sorted(parents, key=lambda p: p.name)
