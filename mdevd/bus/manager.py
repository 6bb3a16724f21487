# SPDX-License-Identifier: LGPL-2.1-or-later
"""`org.mdevd.Mdevd1.Manager`: creating and defining devices, resolving UUIDs, reloading."""

# No `from __future__ import annotations`: dbus-fast reads `-> None` as a signature only
# when it is the real None, not the string "None".

from typing import TYPE_CHECKING, Annotated, Any

from dbus_fast.constants import PropertyAccess
from dbus_fast.service import ServiceInterface
from dbus_fast.signature import Variant

from mdevd import __version__, validate
from mdevd.bus import options as opts
from mdevd.bus.errors import dbus_errors
from mdevd.bus.introspection import describe
from mdevd.bus.names import MANAGER_INTERFACE
from mdevd.bus.paths import device_path
from mdevd.bus.reads import DEVICE_LIST_SIGNATURE
from mdevd.bus.signatures import (
    DBusDict,
    DBusObjectPath,
    DBusSignature,
    DBusStr,
    dbus_method,
    dbus_property,
    dbus_signal,
)

if TYPE_CHECKING:
    from mdevd.bus.tree import ObjectTree

DBusStrList = Annotated[list[str], DBusSignature("as")]
# Several arguments: a list, which every dbus-fast takes (before 2.x, a tuple is refused).
DBusDeviceEvent = Annotated[list[Any], DBusSignature("ossa{sv}")]
DBusDeviceList = Annotated[list[list[Any]], DBusSignature(DEVICE_LIST_SIGNATURE)]

#: Capability words clients test instead of probing (the contract's `Features`).
FEATURES = (
    "define",
    "update-live",
    "auth.interactive",
    "mdevctl-import",
    "force",
    "update-persist",
    "query-attributes",
    "stop-caller-holds-group",
    "list-devices",
    "status",
    "pending-changes",
    "replayed-events",
)

_CREATE_OPTIONS = {
    "uuid": "s",
    "attributes": "a(ss)",
    opts.FORCE: "b",
    opts.AUTH_INTERACTIVE: "b",
}
_DEFINE_OPTIONS = {**_CREATE_OPTIONS, "autostart": "b", "start": "b"}
_RELOAD_OPTIONS = {opts.AUTH_INTERACTIVE: "b"}


class ManagerInterface(ServiceInterface):
    def __init__(self, tree: "ObjectTree") -> None:
        super().__init__(MANAGER_INTERFACE)
        self._tree = tree

    def properties(self) -> dict[str, Any]:
        return {"Version": __version__, "Features": list(self._tree.features)}

    @dbus_property(access=PropertyAccess.READ)
    def Version(self) -> DBusStr:
        return __version__

    @dbus_property(access=PropertyAccess.READ)
    def Features(self) -> DBusStrList:
        return list(self._tree.features)

    @dbus_method()
    @dbus_errors
    async def CreateDevice(
        self, parent: DBusStr, type: DBusStr, options: DBusDict
    ) -> DBusObjectPath:
        validate.parent_name(parent)
        validate.type_id(type)
        values = opts.check_options(options, _CREATE_OPTIONS, "CreateDevice")
        uuid = validate.uuid(values["uuid"]) if "uuid" in values else None
        attributes = opts.attributes(values.get("attributes", []), "CreateDevice")
        await self._tree.authorize("CreateDevice", opts.interactive(values))
        state = await self._tree.engine.create_device(
            parent, type, uuid=uuid, attributes=attributes, force=opts.force(values)
        )
        return device_path(state.uuid)

    @dbus_method()
    @dbus_errors
    async def DefineDevice(
        self, parent: DBusStr, type: DBusStr, options: DBusDict
    ) -> DBusObjectPath:
        validate.parent_name(parent)
        validate.type_id(type)
        values = opts.check_options(options, _DEFINE_OPTIONS, "DefineDevice")
        uuid = validate.uuid(values["uuid"]) if "uuid" in values else None
        attributes = opts.attributes(values.get("attributes", []), "DefineDevice")
        await self._tree.authorize("DefineDevice", opts.interactive(values))
        state = await self._tree.engine.define_device(
            parent,
            type,
            uuid=uuid,
            attributes=attributes,
            autostart=bool(values.get("autostart", False)),
            start=bool(values.get("start", False)),
            force=opts.force(values),
        )
        return device_path(state.uuid)

    @dbus_method()
    @dbus_errors
    def GetDevice(self, uuid: DBusStr) -> DBusObjectPath:
        return device_path(self._tree.engine.device(validate.uuid(uuid)).uuid)

    @dbus_method()
    @dbus_errors
    async def ListDevices(self, options: DBusDict) -> DBusDeviceList:
        # The daemon's ReadServer answers this call before dbus-fast dispatches it (with a
        # per-caller limit and a cache); this member declares it, and serves a bus without it.
        opts.check_options(options, {}, "ListDevices")
        return await self._tree.reads.device_list()

    @dbus_method()
    @dbus_errors
    async def Reload(self, options: DBusDict) -> None:
        values = opts.check_options(options, _RELOAD_OPTIONS, "Reload")
        await self._tree.authorize("Reload", opts.interactive(values))
        await self._tree.reload()

    @dbus_signal()
    def DeviceEvent(
        self, device: str, uuid: str, event: str, details: dict[str, Variant]
    ) -> DBusDeviceEvent:
        return [device, uuid, event, details]


describe(
    ManagerInterface,
    out_args={
        "CreateDevice": ["device"],
        "DefineDevice": ["device"],
        "GetDevice": ["device"],
        "ListDevices": ["devices"],
    },
    signal_args={"DeviceEvent": ["device", "uuid", "event", "details"]},
    const_properties={"Version", "Features"},
)
