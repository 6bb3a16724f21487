"""`org.mdevd.Mdevd1.Manager`: creating and defining devices, resolving UUIDs, reloading."""

# No `from __future__ import annotations`: dbus-fast reads `-> None` as a signature only
# when it is the real None, not the string "None".

from typing import TYPE_CHECKING, Annotated, Any

from dbus_fast.annotations import DBusDict, DBusObjectPath, DBusSignature, DBusStr
from dbus_fast.constants import PropertyAccess
from dbus_fast.service import ServiceInterface, dbus_method, dbus_property, dbus_signal
from dbus_fast.signature import Variant

from mdevd import __version__, validate
from mdevd.bus import options as opts
from mdevd.bus.errors import dbus_errors
from mdevd.bus.names import MANAGER_INTERFACE
from mdevd.bus.paths import device_path

if TYPE_CHECKING:
    from mdevd.bus.tree import ObjectTree

DBusStrList = Annotated[list[str], DBusSignature("as")]
DBusDeviceEvent = Annotated[tuple[str, str, str, dict[str, Variant]], DBusSignature("ossa{sv}")]

#: Capability words clients test instead of probing (the contract's `Features`).
FEATURES = (
    "define",
    "update-live",
    "mdevctl-import",
    "force",
    "update-persist",
    "query-attributes",
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
        values = opts.check_options(options, _CREATE_OPTIONS, "CreateDevice")
        uuid = validate.uuid(values["uuid"]) if "uuid" in values else None
        attributes = opts.attributes(values.get("attributes", []), "CreateDevice")
        validate.parent_name(parent)
        validate.type_id(type)
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
        values = opts.check_options(options, _DEFINE_OPTIONS, "DefineDevice")
        uuid = validate.uuid(values["uuid"]) if "uuid" in values else None
        attributes = opts.attributes(values.get("attributes", []), "DefineDevice")
        validate.parent_name(parent)
        validate.type_id(type)
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
        return device_path(self._tree.engine.device(uuid).uuid)

    @dbus_method()
    @dbus_errors
    async def Reload(self, options: DBusDict) -> None:
        values = opts.check_options(options, _RELOAD_OPTIONS, "Reload")
        await self._tree.authorize("Reload", opts.interactive(values))
        await self._tree.engine.reload()

    @dbus_signal()
    def DeviceEvent(
        self, device: str, uuid: str, event: str, details: dict[str, Variant]
    ) -> DBusDeviceEvent:
        return (device, uuid, event, details)


# dbus-fast names signal arguments only by position; the contract names them.
for _arg, _name in zip(
    ManagerInterface.DeviceEvent.__dict__["__DBUS_SIGNAL"].introspection.args,
    ("device", "uuid", "event", "details"),
    strict=True,
):
    _arg.name = _name
