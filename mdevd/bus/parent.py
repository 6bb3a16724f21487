# SPDX-License-Identifier: LGPL-2.1-or-later
"""`org.mdevd.Mdevd1.Parent`: one object per device registered with the mdev core."""

from __future__ import annotations

from typing import Annotated, Any

from dbus_fast.constants import PropertyAccess
from dbus_fast.signature import Variant

from mdevd.bus.context import HandlerContext
from mdevd.bus.exported import ExportedInterface
from mdevd.bus.introspection import describe
from mdevd.bus.names import PARENT_INTERFACE
from mdevd.bus.signatures import DBusSignature, DBusStr, dbus_property
from mdevd.model import Parent

DBusTypes = Annotated[dict[str, dict[str, Variant]], DBusSignature("a{sa{sv}}")]


def types_value(parent: Parent) -> dict[str, dict[str, Variant]]:
    return {
        type_id: {
            "name": Variant("s", mdev_type.name),
            "description": Variant("s", mdev_type.description),
            "device_api": Variant("s", mdev_type.device_api),
            "available_instances": Variant("u", min(mdev_type.available_instances, 2**32 - 1)),
        }
        for type_id, mdev_type in sorted(parent.types.items())
    }


class ParentInterface(ExportedInterface):
    def __init__(self, context: HandlerContext, parent: Parent) -> None:
        super().__init__(PARENT_INTERFACE, context.authorize)
        self.parent = parent

    def properties(self) -> dict[str, Any]:
        return {
            "Name": self.parent.name,
            "SysfsPath": self.parent.sysfs_path,
            "Subsystem": self.parent.subsystem,
            "Types": types_value(self.parent),
            "Backend": self.parent.backend,
        }

    @dbus_property(access=PropertyAccess.READ)
    def Name(self) -> DBusStr:
        return self.parent.name

    @dbus_property(access=PropertyAccess.READ)
    def SysfsPath(self) -> DBusStr:
        return self.parent.sysfs_path

    @dbus_property(access=PropertyAccess.READ)
    def Subsystem(self) -> DBusStr:
        return self.parent.subsystem

    @dbus_property(access=PropertyAccess.READ)
    def Types(self) -> DBusTypes:
        return types_value(self.parent)

    @dbus_property(access=PropertyAccess.READ)
    def Backend(self) -> DBusStr:
        return self.parent.backend


describe(ParentInterface, const_properties={"Name", "SysfsPath", "Subsystem"})
