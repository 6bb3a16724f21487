# SPDX-License-Identifier: LGPL-2.1-or-later
"""`org.mdevd.Mdevd1.Device`: one object per UUID that is defined, active, or both.

Every method has one shape: check the arguments, and return the work, which runs once
`mdevd.bus.exported` has authorized the caller; the engine acts, and the reply follows. The
engine decides and publishes; this class only translates.
"""

# No `from __future__ import annotations`: dbus-fast reads `-> None` as a signature only
# when it is the real None, not the string "None".

from typing import Annotated, Any

from dbus_fast.constants import PropertyAccess
from dbus_fast.signature import Variant

from mdevd import validate
from mdevd.bus import options as opts
from mdevd.bus.context import HandlerContext
from mdevd.bus.exported import ExportedInterface, Work, exported_method
from mdevd.bus.introspection import describe
from mdevd.bus.names import DEVICE_INTERFACE, NO_OBJECT_PATH
from mdevd.bus.paths import parent_path
from mdevd.bus.signatures import (
    DBusBool,
    DBusDict,
    DBusInt32,
    DBusObjectPath,
    DBusSignature,
    DBusStr,
    DBusUnixFd,
    dbus_property,
)
from mdevd.errors import InvalidArgument
from mdevd.model import DeviceState, PendingChanges

DBusAttributes = Annotated[list[list[str]], DBusSignature("a(ss)")]

_AUTH_ONLY = {opts.AUTH_INTERACTIVE: "b"}
_OPERATION_OPTIONS = {opts.FORCE: "b", opts.OWNER: "s", opts.AUTH_INTERACTIVE: "b"}
_STOP_OPTIONS = {opts.CALLER_HOLDS_GROUP: "b", **_OPERATION_OPTIONS}
_DEFINE_OPTIONS = {"autostart": "b", **_OPERATION_OPTIONS}
_UPDATE_OPTIONS = {"live": "b", "persist": "b", **_OPERATION_OPTIONS}
_UPDATE_CHANGES = {"type": "s", "autostart": "b", "attributes": "a(ss)"}
_OPEN_OPTIONS = {opts.NODE: "s", opts.AUTH_INTERACTIVE: "b"}


def pending_changes(pending: PendingChanges) -> dict[str, Variant]:
    """`PendingChanges` as the contract spells it: only the parts that differ, and `apply`."""
    changes: dict[str, Variant] = {}
    if pending.parent is not None:
        changes["parent"] = Variant("s", pending.parent)
    if pending.type_id is not None:
        changes["type"] = Variant("s", pending.type_id)
    if pending.attributes is not None:
        changes["attributes"] = Variant("a(ss)", [list(pair) for pair in pending.attributes])
    if changes:
        changes["apply"] = Variant("s", pending.apply)
    return changes


def device_properties(context: HandlerContext, state: DeviceState) -> dict[str, Any]:
    """Every property of the Device object of `state`, as the D-Bus layer sends them."""
    parent_present = state.parent in context.engine.parents()
    return {
        "UUID": state.uuid,
        "Parent": state.parent,
        "ParentObject": parent_path(state.parent) if parent_present else NO_OBJECT_PATH,
        "Type": state.type_id,
        "Active": state.active,
        "Defined": state.defined,
        "Autostart": state.autostart,
        "Attributes": [list(pair) for pair in state.attributes],
        "SysfsPath": state.sysfs_path,
        "IommuGroup": state.iommu_group,
        "ConfigFile": state.config_file,
        "LastError": state.last_error,
        "Status": str(state.status),
        "PendingChanges": pending_changes(state.pending),
        "Backend": state.backend,
        "Placement": state.placement,
        "Owner": state.owner,
        "Lifetime": state.lifetime,
    }


class DeferredDevice:
    """A Device object whose export waits for its first use (`mdevd.bus.deferred`): its state,
    and its properties for the reads (`mdevd.bus.reads`) and its signals meanwhile, without
    dbus-fast's cost of an interface."""

    __slots__ = ("_context", "state")

    name = DEVICE_INTERFACE

    def __init__(self, context: HandlerContext, state: DeviceState) -> None:
        self._context = context
        self.state = state

    def properties(self) -> dict[str, Any]:
        return device_properties(self._context, self.state)


class DeviceInterface(ExportedInterface):
    def __init__(self, context: HandlerContext, state: DeviceState) -> None:
        super().__init__(DEVICE_INTERFACE, context.authorize)
        self._context = context
        self.state = state

    def properties(self) -> dict[str, Any]:
        """Every property's current value, as the D-Bus layer sends them."""
        return device_properties(self._context, self.state)

    # ---- properties ------------------------------------------------------------------------

    @dbus_property(access=PropertyAccess.READ)
    def UUID(self) -> DBusStr:
        return self.state.uuid

    @dbus_property(access=PropertyAccess.READ)
    def Parent(self) -> DBusStr:
        return self.state.parent

    @dbus_property(access=PropertyAccess.READ)
    def ParentObject(self) -> DBusObjectPath:
        value: str = self.properties()["ParentObject"]
        return value

    @dbus_property(access=PropertyAccess.READ)
    def Type(self) -> DBusStr:
        return self.state.type_id

    @dbus_property(access=PropertyAccess.READ)
    def Active(self) -> DBusBool:
        return self.state.active

    @dbus_property(access=PropertyAccess.READ)
    def Defined(self) -> DBusBool:
        return self.state.defined

    @dbus_property(access=PropertyAccess.READ)
    def Autostart(self) -> DBusBool:
        return self.state.autostart

    @dbus_property(access=PropertyAccess.READ)
    def Attributes(self) -> DBusAttributes:
        return [list(pair) for pair in self.state.attributes]

    @dbus_property(access=PropertyAccess.READ)
    def SysfsPath(self) -> DBusStr:
        return self.state.sysfs_path

    @dbus_property(access=PropertyAccess.READ)
    def IommuGroup(self) -> DBusInt32:
        return self.state.iommu_group

    @dbus_property(access=PropertyAccess.READ)
    def ConfigFile(self) -> DBusStr:
        return self.state.config_file

    @dbus_property(access=PropertyAccess.READ)
    def LastError(self) -> DBusStr:
        return self.state.last_error

    @dbus_property(access=PropertyAccess.READ)
    def Status(self) -> DBusStr:
        return str(self.state.status)

    @dbus_property(access=PropertyAccess.READ)
    def PendingChanges(self) -> DBusDict:
        return pending_changes(self.state.pending)

    @dbus_property(access=PropertyAccess.READ)
    def Backend(self) -> DBusStr:
        return self.state.backend

    @dbus_property(access=PropertyAccess.READ)
    def Placement(self) -> DBusStr:
        return self.state.placement

    @dbus_property(access=PropertyAccess.READ)
    def Owner(self) -> DBusStr:
        return self.state.owner

    @dbus_property(access=PropertyAccess.READ)
    def Lifetime(self) -> DBusStr:
        return self.state.lifetime

    # ---- methods ---------------------------------------------------------------------------

    async def _check_owner(self, values: dict[str, Any], method: str) -> None:
        await self._context.check_owner(self.state.uuid, values, method, opts.interactive(values))

    @exported_method()
    def Start(self, options: DBusDict) -> Work[None]:
        values = opts.check_options(options, _OPERATION_OPTIONS, "Start")
        opts.owner_label(values)

        async def start() -> None:
            await self._check_owner(values, "Start")
            await self._context.engine.start_device(self.state.uuid, force=opts.force(values))

        return start

    @exported_method()
    def Stop(self, options: DBusDict) -> Work[None]:
        values = opts.check_options(options, _STOP_OPTIONS, "Stop")
        opts.owner_label(values)

        async def stop() -> None:
            await self._check_owner(values, "Stop")
            await self._context.engine.stop_device(
                self.state.uuid,
                force=opts.force(values),
                caller_holds_group=opts.caller_holds_group(values),
            )

        return stop

    @exported_method()
    def Define(self, options: DBusDict) -> Work[None]:
        values = opts.check_options(options, _DEFINE_OPTIONS, "Define")
        opts.owner_label(values)

        async def define() -> None:
            await self._check_owner(values, "Define")
            await self._context.engine.define_active(
                self.state.uuid,
                autostart=bool(values.get("autostart", False)),
                force=opts.force(values),
            )

        return define

    @exported_method()
    def Undefine(self, options: DBusDict) -> Work[None]:
        values = opts.check_options(options, _OPERATION_OPTIONS, "Undefine")
        opts.owner_label(values)

        async def undefine() -> None:
            await self._check_owner(values, "Undefine")
            await self._context.engine.undefine(self.state.uuid, force=opts.force(values))

        return undefine

    @exported_method()
    def Update(self, changes: DBusDict, options: DBusDict) -> Work[None]:
        change = opts.check_options(changes, _UPDATE_CHANGES, "Update changes")
        values = opts.check_options(options, _UPDATE_OPTIONS, "Update")
        type_id = validate.type_id(change["type"]) if "type" in change else None
        attributes = (
            opts.attributes(change["attributes"], "Update") if "attributes" in change else None
        )
        live = bool(values.get("live", False))
        if not values.get("persist", True):
            if not live or attributes is None or set(change) != {"attributes"}:
                raise InvalidArgument(
                    "Update: persist=false changes only the running device's attributes: "
                    "it needs live=true and no change but attributes"
                )
            running_attributes = attributes
            opts.owner_label(values)

            async def update_running() -> None:
                await self._check_owner(values, "Update")
                await self._context.engine.update_running(self.state.uuid, running_attributes)

            return update_running

        opts.owner_label(values)

        async def update() -> None:
            await self._check_owner(values, "Update")
            await self._context.engine.update(
                self.state.uuid,
                type_id=type_id,
                autostart=change.get("autostart"),
                attributes=attributes,
                live=live,
                force=opts.force(values),
            )

        return update

    @exported_method()
    def QueryAttributes(self, options: DBusDict) -> Work[DBusAttributes]:
        opts.check_options(options, _AUTH_ONLY, "QueryAttributes")

        async def query() -> list[list[str]]:
            attributes = await self._context.engine.query_attributes(self.state.uuid)
            return [list(pair) for pair in attributes]

        return query

    @exported_method()
    def Open(self, options: DBusDict) -> Work[DBusUnixFd]:
        """An open fd to the active device's VFIO group node (or, `node=cdev`, its VFIO device
        node) for the caller; the daemon's own copy is closed once the reply is sent."""
        values = opts.check_options(options, _OPEN_OPTIONS, "Open")
        cdev = opts.node_is_cdev(values, "Open")

        async def open_device() -> int:
            fd = await self._context.engine.open_device(self.state.uuid, cdev=cdev)
            return self._context.hand_over(fd)

        return open_device


describe(
    DeviceInterface,
    out_args={"QueryAttributes": ["attributes"], "Open": ["fd"]},
    const_properties={"UUID"},
)
