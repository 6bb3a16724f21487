# SPDX-License-Identifier: LGPL-2.1-or-later
"""Every request a client makes of mdevd, written once for both transports.

Each request is a generator: it yields the D-Bus calls it needs (`Call`), receives each reply's
values (or has the daemon's error raised at the `yield`), and returns its result. Nothing here
does I/O. `mdevd.client.Client` runs them over dbus-fast on an asyncio loop;
`mdevd.blocking.BlockingClient` runs them over `mdevd.wire` for the command-line programs, which
then import neither asyncio nor dbus-fast. So a fallback (ListDevices on an older daemon) or a
race (a device gone before it could be read back) is handled in one place for both.

Variants are `mdevd.wire.Variant`s (a signature and a value); the asyncio client converts them
to dbus-fast's.
"""

from __future__ import annotations

from mdevd.bus.names import (
    DEVICE_INTERFACE,
    MANAGER_INTERFACE,
    MANAGER_PATH,
    OBJECT_MANAGER_INTERFACE,
    PROPERTIES_INTERFACE,
    ROOT_PATH,
)
from mdevd.record import Record
from mdevd.replies import (
    LIFETIME_MANUAL,
    NO_SUCH_OBJECT,
    DaemonError,
    DeviceInfo,
    DeviceSummary,
    ManagedObjects,
    ParentInfo,
    devices_from_objects,
    older_than_list_devices,
    parents_from_objects,
    sorted_devices,
    unwrap,
)
from mdevd.wire import Variant

# Annotations only: importing typing costs every command-line program's start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Generator, Sequence
    from typing import Any, TypeVar

    T = TypeVar("T")
    #: A request: yields calls, is sent their replies' values, returns its result.
    Request = Generator["Call", list[Any], T]


class Call(Record):
    """One method call on mdevd's bus name."""

    _fields = ("path", "interface", "member", "signature", "body", "unix_fds")
    __slots__ = _fields
    path: str
    interface: str
    member: str
    signature: str
    body: Sequence[Any]
    #: The reply carries fds (`h` values arrive as fds the request owns): the connection must
    #: have negotiated Unix fd passing, or the bus would refuse to deliver the reply at all.
    unix_fds: bool

    def __init__(
        self,
        path: str,
        interface: str,
        member: str,
        signature: str = "",
        body: Sequence[Any] = (),
        unix_fds: bool = False,
    ) -> None:
        self._init(path, interface, member, signature, body, unix_fds)


def options(**values: Any) -> dict[str, Variant]:
    """`a{sv}` options from keyword arguments; None leaves a key out (the daemon's default).
    `auth_interactive` is spelled `auth.interactive` on the bus."""
    signatures = {bool: "b", str: "s"}
    result: dict[str, Variant] = {}
    for key, value in values.items():
        if value is None:
            continue
        name = key.replace("auth_interactive", "auth.interactive")
        if key == "attributes":
            result[name] = Variant("a(ss)", [list(pair) for pair in value])
        else:
            result[name] = Variant(signatures[type(value)], value)
    return result


def _auth(interactive: bool) -> bool | None:
    return True if interactive else None


# ---- reads -------------------------------------------------------------------------------------


def managed_objects() -> Request[ManagedObjects]:
    (objects,) = yield Call(ROOT_PATH, OBJECT_MANAGER_INTERFACE, "GetManagedObjects")
    result: ManagedObjects = unwrap(objects)
    return result


def list_devices() -> Request[list[DeviceInfo]]:
    """Every device, from one ListDevices call (a third of GetManagedObjects' size), in no
    particular order."""
    (structs,) = yield Call(MANAGER_PATH, MANAGER_INTERFACE, "ListDevices", "a{sv}", [{}])
    return [DeviceInfo.from_struct(struct) for struct in structs]


def list_device_summaries() -> Request[list[DeviceSummary]]:
    """What `mdevctl list` shows of every device, from one ListDeviceSummaries call (a fifth of
    ListDevices' size), in no particular order. A daemon without it (its Features lack
    "device-summaries") answers UnknownMethod: `DaemonError`."""
    (structs,) = yield Call(MANAGER_PATH, MANAGER_INTERFACE, "ListDeviceSummaries", "a{sv}", [{}])
    return DeviceSummary.from_structs(structs)


def devices() -> Request[list[DeviceInfo]]:
    """Every device, sorted by parent and UUID."""
    try:
        return sorted_devices((yield from list_devices()))
    except DaemonError as error:
        if not older_than_list_devices(error):
            raise
    return devices_from_objects((yield from managed_objects()))


def parents() -> Request[list[ParentInfo]]:
    return parents_from_objects((yield from managed_objects()))


def get_device(uuid: str) -> Request[str]:
    (path,) = yield Call(MANAGER_PATH, MANAGER_INTERFACE, "GetDevice", "s", [uuid])
    return str(path)


def device(uuid: str) -> Request[DeviceInfo]:
    path = yield from get_device(uuid)
    (props,) = yield Call(path, PROPERTIES_INTERFACE, "GetAll", "s", [DEVICE_INTERFACE])
    return DeviceInfo.from_properties(path, unwrap(props))


def manager_properties() -> Request[dict[str, Any]]:
    (props,) = yield Call(MANAGER_PATH, PROPERTIES_INTERFACE, "GetAll", "s", [MANAGER_INTERFACE])
    result: dict[str, Any] = unwrap(props)
    return result


# ---- changes -----------------------------------------------------------------------------------


def create_device_path(
    parent: str,
    type_id: str,
    *,
    uuid: str | None = None,
    attributes: Sequence[tuple[str, str]] = (),
    force: bool | None = None,
    interactive: bool = False,
    placement: str = "",
    owner: str | None = None,
    lifetime: str | None = None,
) -> Request[str]:
    """CreateDevice; its object path. Pass `uuid` to make a retry after a timeout safe.
    `placement`: where on the parent (an nvidia-vf GPU's virtual function); "" leaves the
    option out (the backend chooses), so a daemon without placements accepts the call.
    `owner`: the caller's label, recorded as the device's owner; `lifetime`: `manual`,
    `connection` (until this connection closes) or `unit:NAME`. Each is sent only when
    given, so a daemon without owners accepts the call without them."""
    given = options(
        uuid=uuid,
        attributes=attributes or None,
        placement=placement or None,
        owner=owner,
        lifetime=lifetime,
        force=force,
        auth_interactive=_auth(interactive),
    )
    (path,) = yield Call(
        MANAGER_PATH, MANAGER_INTERFACE, "CreateDevice", "ssa{sv}", [parent, type_id, given]
    )
    return str(path)


def create_device(
    parent: str,
    type_id: str,
    *,
    uuid: str | None = None,
    attributes: Sequence[tuple[str, str]] = (),
    force: bool | None = None,
    interactive: bool = False,
    placement: str = "",
    owner: str | None = None,
    lifetime: str | None = None,
) -> Request[DeviceInfo]:
    """CreateDevice, then the device as it is once created (one more read)."""
    path = yield from create_device_path(
        parent,
        type_id,
        uuid=uuid,
        attributes=attributes,
        force=force,
        interactive=interactive,
        placement=placement,
        owner=owner,
        lifetime=lifetime,
    )
    try:
        (props,) = yield Call(path, PROPERTIES_INTERFACE, "GetAll", "s", [DEVICE_INTERFACE])
    except DaemonError as error:
        if error.name not in NO_SUCH_OBJECT:
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
            placement=placement,
            owner=owner or "",
            lifetime=(lifetime or LIFETIME_MANUAL) if owner else "",
        )
    return DeviceInfo.from_properties(path, unwrap(props))


def define_device(
    parent: str,
    type_id: str,
    *,
    uuid: str | None = None,
    attributes: Sequence[tuple[str, str]] = (),
    autostart: bool | None = None,
    start: bool | None = None,
    force: bool | None = None,
    interactive: bool = False,
    placement: str = "",
    owner: str | None = None,
) -> Request[str]:
    """DefineDevice; its object path. `placement` pins the device to one place on its parent
    (an nvidia-vf GPU's virtual function, by PCI address); "" leaves the option out. `owner`:
    the caller's label, recorded as the device's owner (sent only when given). A definition
    has no lifetime."""
    given = options(
        uuid=uuid,
        attributes=attributes or None,
        placement=placement or None,
        owner=owner,
        autostart=autostart,
        start=start,
        force=force,
        auth_interactive=_auth(interactive),
    )
    (path,) = yield Call(
        MANAGER_PATH, MANAGER_INTERFACE, "DefineDevice", "ssa{sv}", [parent, type_id, given]
    )
    return str(path)


def _device_method(uuid: str, member: str, interactive: bool, **values: Any) -> Request[None]:
    path = yield from get_device(uuid)
    given = options(**values, auth_interactive=_auth(interactive))
    yield Call(path, DEVICE_INTERFACE, member, "a{sv}", [given])


# `owner` on Start, Stop, Define, Undefine and Update says who the caller is: a caller that
# names itself is refused (NotAuthorized) another owner's device, whatever its rights. Sent only
# when given, so a daemon without owners accepts the call.


def start(
    uuid: str,
    *,
    force: bool | None = None,
    interactive: bool = False,
    owner: str | None = None,
) -> Request[None]:
    return _device_method(uuid, "Start", interactive, force=force, owner=owner)


def stop(
    uuid: str,
    *,
    force: bool | None = None,
    caller_holds_group: bool | None = None,
    interactive: bool = False,
    owner: str | None = None,
) -> Request[None]:
    return _device_method(
        uuid, "Stop", interactive, force=force, caller_holds_group=caller_holds_group, owner=owner
    )


def define(
    uuid: str,
    *,
    autostart: bool | None = None,
    force: bool | None = None,
    interactive: bool = False,
    owner: str | None = None,
) -> Request[None]:
    return _device_method(
        uuid, "Define", interactive, autostart=autostart, force=force, owner=owner
    )


def undefine(
    uuid: str,
    *,
    force: bool | None = None,
    interactive: bool = False,
    owner: str | None = None,
) -> Request[None]:
    return _device_method(uuid, "Undefine", interactive, force=force, owner=owner)


def query_attributes(
    uuid: str, *, interactive: bool = False
) -> Request[tuple[tuple[str, str], ...]]:
    """The running device's attributes as its callout script reports them (mdevctl's
    `get attributes`), else as mdevd wrote them."""
    path = yield from get_device(uuid)
    given = options(auth_interactive=_auth(interactive))
    (pairs,) = yield Call(path, DEVICE_INTERFACE, "QueryAttributes", "a{sv}", [given])
    return tuple((str(name), str(value)) for name, value in pairs)


def update(
    uuid: str,
    *,
    type_id: str | None = None,
    autostart: bool | None = None,
    attributes: Sequence[tuple[str, str]] | None = None,
    live: bool | None = None,
    persist: bool | None = None,
    force: bool | None = None,
    interactive: bool = False,
    owner: str | None = None,
) -> Request[None]:
    changes: dict[str, Variant] = {}
    if type_id is not None:
        changes["type"] = Variant("s", type_id)
    if autostart is not None:
        changes["autostart"] = Variant("b", autostart)
    if attributes is not None:
        changes["attributes"] = Variant("a(ss)", [list(pair) for pair in attributes])
    path = yield from get_device(uuid)
    given = options(
        live=live,
        persist=persist,
        force=force,
        owner=owner,
        auth_interactive=_auth(interactive),
    )
    yield Call(path, DEVICE_INTERFACE, "Update", "a{sv}a{sv}", [changes, given])


def open_device(uuid: str, *, cdev: bool = False, interactive: bool = False) -> Request[int]:
    """Device.Open: an open fd to the active device's VFIO group node (or, `cdev`, its VFIO
    device node), the caller's to use and to close. `node` is sent only for `cdev`."""
    path = yield from get_device(uuid)
    given = options(node="cdev" if cdev else None, auth_interactive=_auth(interactive))
    (fd,) = yield Call(path, DEVICE_INTERFACE, "Open", "a{sv}", [given], unix_fds=True)
    return int(fd)


def reload(*, interactive: bool = False) -> Request[None]:
    given = options(auth_interactive=_auth(interactive))
    yield Call(MANAGER_PATH, MANAGER_INTERFACE, "Reload", "a{sv}", [given])
