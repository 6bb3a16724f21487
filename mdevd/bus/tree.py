# SPDX-License-Identifier: LGPL-2.1-or-later
"""The exported object tree: the engine's listener, mirroring its state as D-Bus objects.

Every engine change arrives here synchronously, before the operation that caused it replies,
so a client that gets a reply has already been sent InterfacesAdded / PropertiesChanged /
DeviceEvent (contract rule 1). Signals go out from the ObjectManager's path as the D-Bus
specification says (dbus-fast would send InterfacesAdded from the object's own path, which
GDBusObjectManagerClient and sd-bus clients ignore).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus
from dbus_fast.introspection import Node
from dbus_fast.service import ServiceInterface
from dbus_fast.signature import Variant

from mdevd.bus import errors
from mdevd.bus.device import DeviceInterface
from mdevd.bus.manager import FEATURES, ManagerInterface
from mdevd.bus.names import (
    DEVICES_PATH,
    MANAGER_PATH,
    OBJECT_MANAGER_INTERFACE,
    PARENTS_PATH,
    ROOT_PATH,
)
from mdevd.bus.parent import ParentInterface
from mdevd.bus.paths import (
    device_path,
    parent_name_from_path,
    parent_path,
    uuid_from_device_path,
)
from mdevd.bus.reads import ReadServer, variants
from mdevd.bus.sendfix import PacedMessageBus
from mdevd.engine import Engine
from mdevd.model import DeviceState, Parent

#: `authorize(method, interactive)`: returns when allowed, raises a NotAuthorized* otherwise.
Authorize = Callable[[str, bool], Awaitable[None]]
#: `reload()`: an explicit reload of the definitions (the daemon's tells the service manager).
Reload = Callable[[], Awaitable[object]]


class ManagedObjectBus(PacedMessageBus):
    """A MessageBus whose InterfacesAdded/Removed come from the ObjectManager at ROOT_PATH.

    Paced (mdevd.bus.sendfix): a full send buffer never disconnects it.

    GetManagedObjects is answered by the tree's `ReadServer` (dbus-fast's own handler costs the
    square of the number of objects). dbus-fast introspects a path that has no
    exported interface of its own as a bare node; ROOT_PATH has none, so it is introspected
    with the standard interfaces (ObjectManager among them), as the contract places it there.

    Once disconnected, replies and signals are dropped: nobody can receive them, and dbus-fast
    would raise from its reply callback on the closed socket (logged by asyncio as an error).
    """

    # dbus-fast's asyncio bus returns a future; its synchronous base class says None.
    def send(self, msg: Message) -> asyncio.Future[None]:  # type: ignore[override]
        if self._disconnected and msg.message_type is not MessageType.METHOD_CALL:
            dropped: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            dropped.set_result(None)
            return dropped
        sent: asyncio.Future[None] = super().send(msg)
        return sent

    async def calls_finished(self, timeout: float) -> int:
        """Wait until the method calls being served have ended, at most `timeout` seconds;
        how many still run then."""
        return await errors.calls_finished(timeout)

    def _introspect_export_path(self, path: str) -> Node:
        node: Node = super()._introspect_export_path(path)
        if path == ROOT_PATH and not node.interfaces:
            children = node.nodes
            node = Node.default(path)
            node.nodes = children
        return node

    #: While True, exports announce nothing: the first export of the whole tree happens before
    #: the daemon owns its name, when no client can be matching its signals, and announcing
    #: 10,000 devices then would cost start-up time and memory for nobody.
    quiet_exports = False

    def _emit_interface_added(self, path: str, interface: ServiceInterface) -> None:
        if self.quiet_exports:
            return
        properties = getattr(interface, "properties", None)
        if properties is None or not path.startswith(ROOT_PATH + "/"):
            super()._emit_interface_added(path, interface)
            return
        if self._disconnected:
            return
        self.send(
            Message.new_signal(
                path=ROOT_PATH,
                interface=OBJECT_MANAGER_INTERFACE,
                member="InterfacesAdded",
                signature="oa{sa{sv}}",
                body=[path, {interface.name: variants(properties())}],
            )
        )

    def _emit_interface_removed(self, path: str, removed_interfaces: list[str]) -> None:
        if not path.startswith(ROOT_PATH + "/"):
            super()._emit_interface_removed(path, removed_interfaces)
            return
        if self._disconnected:
            return
        self.send(
            Message.new_signal(
                path=ROOT_PATH,
                interface=OBJECT_MANAGER_INTERFACE,
                member="InterfacesRemoved",
                signature="oas",
                body=[path, removed_interfaces],
            )
        )


class ObjectTree:
    """Implements `mdevd.engine.Listener` by exporting, updating and removing objects."""

    def __init__(
        self,
        bus: MessageBus,
        engine: Engine,
        authorize: Authorize,
        features: Sequence[str] = FEATURES,
        *,
        reload: Reload | None = None,
    ) -> None:
        self.bus = bus
        self.engine = engine
        self.authorize = authorize
        self.reload: Reload = reload or engine.reload
        self.features = tuple(features)
        self.manager = ManagerInterface(self)
        self._devices: dict[str, DeviceInterface] = {}
        self._parents: dict[str, ParentInterface] = {}
        #: GetManagedObjects and ListDevices, from a cache this tree keeps current.
        self.reads = ReadServer(bus, self.interface_at)

    def export_all(self) -> None:
        """Export the manager and every object the engine knows; then follow its changes.

        Called before the bus name is requested: the objects are exported without
        InterfacesAdded (clients learn them from GetManagedObjects once the name appears).
        """
        bus = self.bus if isinstance(self.bus, ManagedObjectBus) else None
        if bus is not None:
            bus.quiet_exports = True
        try:
            self.bus.export(MANAGER_PATH, self.manager)
            self.reads.changed(MANAGER_PATH)
            for parent in self.engine.parents().values():
                self.parent_changed(parent)
            for state in self.engine.devices().values():
                self.device_changed(state)
        finally:
            if bus is not None:
                bus.quiet_exports = False
        self.reads.install()
        self.engine.attach(self)

    def interface_at(
        self, path: str
    ) -> ManagerInterface | ParentInterface | DeviceInterface | None:
        """Our interface exported at `path`, if any (each object has exactly one)."""
        if path == MANAGER_PATH:
            return self.manager
        if path.startswith(DEVICES_PATH + "/"):
            return self._devices.get(uuid_from_device_path(path))
        if path.startswith(PARENTS_PATH + "/"):
            return self._parents.get(parent_name_from_path(path))
        return None

    # ---- engine.Listener -------------------------------------------------------------------

    def device_changed(self, state: DeviceState) -> None:
        interface = self._devices.get(state.uuid)
        if interface is None:
            interface = DeviceInterface(self, state)
            self._devices[state.uuid] = interface
            self.bus.export(device_path(state.uuid), interface)
            self.reads.changed(device_path(state.uuid))
            return
        before = interface.properties()
        interface.state = state
        self.reads.changed(device_path(state.uuid))
        _emit_changes(interface, before)

    def device_removed(self, uuid: str) -> None:
        interface = self._devices.pop(uuid, None)
        if interface is not None:
            self.bus.unexport(device_path(uuid), interface)
            self.reads.changed(device_path(uuid))

    def parent_changed(self, parent: Parent) -> None:
        interface = self._parents.get(parent.name)
        if interface is None:
            self._parents[parent.name] = ParentInterface(parent)
            self.bus.export(parent_path(parent.name), self._parents[parent.name])
            self.reads.changed(parent_path(parent.name))
            self._refresh_parent_objects(parent.name)
            return
        before = interface.properties()
        interface.parent = parent
        self.reads.changed(parent_path(parent.name))
        _emit_changes(interface, before)

    def parent_removed(self, name: str) -> None:
        interface = self._parents.pop(name, None)
        if interface is not None:
            self.bus.unexport(parent_path(name), interface)
            self.reads.changed(parent_path(name))
            self._refresh_parent_objects(name)

    def device_event(self, state: DeviceState, event: str, details: dict[str, str]) -> None:
        self.manager.DeviceEvent(
            device_path(state.uuid),
            state.uuid,
            event,
            {key: Variant("s", value) for key, value in details.items()},
        )

    def _refresh_parent_objects(self, parent: str) -> None:
        """A parent came or went: its devices' `ParentObject` changes."""
        for interface in self._devices.values():
            if interface.state.parent == parent:
                self.reads.changed(device_path(interface.state.uuid))
                interface.emit_properties_changed(
                    {"ParentObject": interface.properties()["ParentObject"]}
                )


def _emit_changes(interface: DeviceInterface | ParentInterface, before: dict[str, Any]) -> None:
    """PropertiesChanged with the properties whose values differ from `before`, if any."""
    after = interface.properties()
    changed = {name: value for name, value in after.items() if before[name] != value}
    if changed:
        interface.emit_properties_changed(changed)
