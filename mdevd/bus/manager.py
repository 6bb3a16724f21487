# SPDX-License-Identifier: LGPL-2.1-or-later
"""`org.mdevd.Mdevd1.Manager`: creating and defining devices, resolving UUIDs, reloading."""

# No `from __future__ import annotations`: dbus-fast reads `-> None` as a signature only
# when it is the real None, not the string "None".

from typing import Annotated, Any

from dbus_fast.constants import PropertyAccess
from dbus_fast.signature import Variant

from mdevd import __version__, validate
from mdevd.bus import options as opts
from mdevd.bus.context import HandlerContext
from mdevd.bus.exported import ExportedInterface, Work, exported_method, exported_read
from mdevd.bus.introspection import describe
from mdevd.bus.names import MANAGER_INTERFACE
from mdevd.bus.paths import device_path
from mdevd.bus.reads import DEVICE_LIST_SIGNATURE, DEVICE_SUMMARIES_SIGNATURE
from mdevd.bus.signatures import (
    DBusDict,
    DBusObjectPath,
    DBusSignature,
    DBusStr,
    dbus_property,
    dbus_signal,
)
from mdevd.errors import NotSupported

DBusStrList = Annotated[list[str], DBusSignature("as")]
# Several arguments: a list, which every dbus-fast takes (before 2.x, a tuple is refused).
DBusDeviceEvent = Annotated[list[Any], DBusSignature("ossa{sv}")]
DBusDeviceList = Annotated[list[list[Any]], DBusSignature(DEVICE_LIST_SIGNATURE)]
DBusDeviceSummaries = Annotated[list[list[Any]], DBusSignature(DEVICE_SUMMARIES_SIGNATURE)]

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
    "nvidia-vf",
    "placement",
    "owners",
    "lifetimes",
    "open",
    "device-summaries",
)

_CREATE_OPTIONS = {
    "uuid": "s",
    "attributes": "a(ss)",
    opts.PLACEMENT: "s",
    opts.OWNER: "s",
    opts.LIFETIME: "s",
    opts.FORCE: "b",
    opts.AUTH_INTERACTIVE: "b",
}
_DEFINE_OPTIONS = {
    **{k: v for k, v in _CREATE_OPTIONS.items() if k != opts.LIFETIME},
    "autostart": "b",
    "start": "b",
}
_RELOAD_OPTIONS = {opts.AUTH_INTERACTIVE: "b"}


class ManagerInterface(ExportedInterface):
    def __init__(self, context: HandlerContext) -> None:
        super().__init__(MANAGER_INTERFACE, context.authorize)
        self._context = context

    def properties(self) -> dict[str, Any]:
        return {"Version": __version__, "Features": list(self._context.features)}

    @dbus_property(access=PropertyAccess.READ)
    def Version(self) -> DBusStr:
        return __version__

    @dbus_property(access=PropertyAccess.READ)
    def Features(self) -> DBusStrList:
        return list(self._context.features)

    @exported_method()
    def CreateDevice(
        self, parent: DBusStr, type: DBusStr, options: DBusDict
    ) -> Work[DBusObjectPath]:
        validate.parent_name(parent)
        validate.type_id(type)
        values = opts.check_options(options, _CREATE_OPTIONS, "CreateDevice")
        uuid = validate.uuid(values["uuid"]) if "uuid" in values else None
        attributes = opts.attributes(values.get("attributes", []), "CreateDevice")
        placement = opts.placement(values, "CreateDevice")
        opts.owner_label(values)  # checked before anything happens
        lifetime = opts.lifetime(values)

        async def create() -> str:
            owner = await self._context.owner(values, lifetime)
            lifetimes = self._context.lifetimes
            if owner is not None and owner.ends_with_unit:
                if lifetimes is None:
                    raise NotSupported("unit lifetimes are not followed here")
                await lifetimes.follow_unit(owner.unit)  # NotSupported without systemd
            state = await self._context.engine.create_device(
                parent,
                type,
                uuid=uuid,
                attributes=attributes,
                placement=placement,
                force=opts.force(values),
                owner=owner,
            )
            if owner is not None and lifetimes is not None:
                # The owner may have left while the device was being made.
                await lifetimes.check_now(state.uuid, owner)
            return device_path(state.uuid)

        return create

    @exported_method()
    def DefineDevice(
        self, parent: DBusStr, type: DBusStr, options: DBusDict
    ) -> Work[DBusObjectPath]:
        validate.parent_name(parent)
        validate.type_id(type)
        values = opts.check_options(options, _DEFINE_OPTIONS, "DefineDevice")
        uuid = validate.uuid(values["uuid"]) if "uuid" in values else None
        attributes = opts.attributes(values.get("attributes", []), "DefineDevice")
        placement = opts.placement(values, "DefineDevice")
        opts.owner_label(values)

        async def define() -> str:
            owner = await self._context.owner(values)
            state = await self._context.engine.define_device(
                parent,
                type,
                uuid=uuid,
                attributes=attributes,
                autostart=bool(values.get("autostart", False)),
                start=bool(values.get("start", False)),
                placement=placement,
                force=opts.force(values),
                owner=owner,
            )
            return device_path(state.uuid)

        return define

    @exported_read()
    def GetDevice(self, uuid: DBusStr) -> DBusObjectPath:
        return device_path(self._context.engine.device(validate.uuid(uuid)).uuid)

    @exported_read()
    async def ListDevices(self, options: DBusDict) -> DBusDeviceList:
        # The daemon's ReadServer answers this call before dbus-fast dispatches it (with a
        # per-caller limit and a cache); this member declares it, and serves a bus without it.
        opts.check_options(options, {}, "ListDevices")
        return await self._context.list_devices()

    @exported_read()
    async def ListDeviceSummaries(self, options: DBusDict) -> DBusDeviceSummaries:
        # Served by the ReadServer as ListDevices is; declared here for the same reasons.
        opts.check_options(options, {}, "ListDeviceSummaries")
        return await self._context.list_device_summaries()

    @exported_method()
    def Reload(self, options: DBusDict) -> Work[None]:
        opts.check_options(options, _RELOAD_OPTIONS, "Reload")

        async def reload() -> None:
            await self._context.reload()

        return reload

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
        "ListDeviceSummaries": ["devices"],
    },
    signal_args={"DeviceEvent": ["device", "uuid", "event", "details"]},
    const_properties={"Version", "Features"},
)
