# SPDX-License-Identifier: LGPL-2.1-or-later
"""The exported object tree: the engine's listener, mirroring its state as D-Bus objects.

Every engine change arrives here synchronously, before the operation that caused it replies,
so a client that gets a reply has already been sent InterfacesAdded / PropertiesChanged /
DeviceEvent (contract rule 1). The tree creates the interface objects and hands them a
`HandlerContext`; they never call back into it. It also tells the reads' cache
(`mdevd.bus.reads`) which paths changed, and where each path's object is.

The devices that exist when the daemon starts are served at once but exported to dbus-fast on
their first use (`mdevd.bus.deferred`: dbus-fast's per-object export was most of the start-up
time with many definitions); devices that come later are exported as they come.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dbus_fast.aio import MessageBus
from dbus_fast.signature import Variant

from mdevd.bus import fds
from mdevd.bus.auth import Authorize, AuthorizeFor
from mdevd.bus.connection import ManagedObjectBus
from mdevd.bus.context import HandlerContext, Reload
from mdevd.bus.deferred import DeferredExports, can_defer
from mdevd.bus.device import DeferredDevice, DeviceInterface
from mdevd.bus.exported import dbus_properties
from mdevd.bus.manager import FEATURES, ManagerInterface
from mdevd.bus.names import (
    DEVICE_INTERFACE,
    DEVICES_PATH,
    MANAGER_PATH,
    PARENTS_PATH,
    error_name,
)
from mdevd.bus.owners import CallerOwners, LifetimeWatcher
from mdevd.bus.parent import ParentInterface
from mdevd.bus.paths import (
    device_path,
    parent_name_from_path,
    parent_path,
    uuid_from_device_path,
)
from mdevd.bus.reads import ReadServer
from mdevd.engine import DeviceEvent, Engine
from mdevd.model import DeviceState, Parent


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
        owners: CallerOwners | None = None,
        lifetimes: LifetimeWatcher | None = None,
        authorize_for: AuthorizeFor | None = None,
    ) -> None:
        self.bus = bus
        self.engine = engine
        #: GetManagedObjects and the device lists, from a cache this tree keeps current.
        self.reads = ReadServer(bus, self.interface_at)
        self.context = HandlerContext(
            engine=engine,
            authorize=authorize,
            reload=reload or engine.reload,
            list_devices=self.reads.device_list,
            list_device_summaries=self.reads.device_summaries,
            features=tuple(features),
            hand_over=self._outgoing_fds(bus).hand_over,
            owners=owners,
            lifetimes=lifetimes,
            authorize_for=authorize_for,
        )
        self.manager = ManagerInterface(self.context)
        self._devices: dict[str, DeviceInterface] = {}
        self._parents: dict[str, ParentInterface] = {}
        #: Devices served since start-up but not yet exported to dbus-fast, by path; None on
        #: a bus that is not ours (tests) or a dbus-fast that cannot have them
        #: (`deferred.can_defer`), where every object is exported at once.
        self.deferred: DeferredExports[DeferredDevice] | None = None
        if isinstance(bus, ManagedObjectBus) and can_defer(bus):
            self.deferred = DeferredExports(
                bus,
                DEVICE_INTERFACE,
                dbus_properties(DeviceInterface),
                self._export_deferred,
                managed_objects_served=lambda: self.reads.installed,
            )
        #: True while `export_all` runs: the devices met then are deferred.
        self._starting = False

    @staticmethod
    def _outgoing_fds(bus: MessageBus) -> fds.OutgoingFds:
        """The bus's register of fds to close once sent; on any other bus (tests) one that
        closes them after its grace period, sent or not."""
        if isinstance(bus, ManagedObjectBus):
            return bus.outgoing_fds
        return fds.OutgoingFds()

    def export_all(self) -> None:
        """Export the manager and every object the engine knows; then follow its changes.

        Called before the bus name is requested: the objects are exported without
        InterfacesAdded (clients learn them from GetManagedObjects once the name appears).
        """
        bus = self.bus if isinstance(self.bus, ManagedObjectBus) else None
        if bus is not None:
            bus.quiet_exports = True
        if self.deferred is not None:
            self.deferred.install()
        self._starting = True
        try:
            self.bus.export(MANAGER_PATH, self.manager)
            self.reads.changed(MANAGER_PATH)
            for parent in self.engine.parents().values():
                self.parent_changed(parent)
            for state in self.engine.devices().values():
                self.device_changed(state)
        finally:
            self._starting = False
            if bus is not None:
                bus.quiet_exports = False
        self.reads.install()
        self.engine.subscribe(self)

    def interface_at(
        self, path: str
    ) -> ManagerInterface | ParentInterface | DeviceInterface | DeferredDevice | None:
        """Our interface served at `path`, if any (each object has exactly one)."""
        if path == MANAGER_PATH:
            return self.manager
        if path.startswith(DEVICES_PATH + "/"):
            device = self._devices.get(uuid_from_device_path(path))
            if device is None and self.deferred is not None:
                return self.deferred.get(path)
            return device
        if path.startswith(PARENTS_PATH + "/"):
            return self._parents.get(parent_name_from_path(path))
        return None

    # ---- engine.Listener -------------------------------------------------------------------

    def device_changed(self, state: DeviceState) -> None:
        interface = self._devices.get(state.uuid)
        if interface is None and self.deferred is not None:
            path = device_path(state.uuid)
            deferred = self.deferred.get(path)
            if deferred is not None:
                before = deferred.properties()
                deferred.state = state
                self.reads.changed(path)
                changed = _changes(before, deferred.properties())
                if changed:
                    self.deferred.properties_changed(path, changed)
                return
            if self._starting:
                self.deferred.defer(path, DeferredDevice(self.context, state))
                self.reads.changed(path)
                return
        if interface is None:
            interface = DeviceInterface(self.context, state)
            self._devices[state.uuid] = interface
            self.bus.export(device_path(state.uuid), interface)
            self.reads.changed(device_path(state.uuid))
            return
        before = interface.properties()
        interface.state = state
        self.reads.changed(device_path(state.uuid))
        _emit_changes(interface, before)

    def device_removed(self, uuid: str) -> None:
        if self.deferred is not None and self.deferred.remove(device_path(uuid)):
            self.reads.changed(device_path(uuid))
            return
        interface = self._devices.pop(uuid, None)
        if interface is not None:
            self.bus.unexport(device_path(uuid), interface)
            self.reads.changed(device_path(uuid))

    def parent_changed(self, parent: Parent) -> None:
        interface = self._parents.get(parent.name)
        if interface is None:
            self._parents[parent.name] = ParentInterface(self.context, parent)
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

    def device_event(
        self, state: DeviceState, event: DeviceEvent, *, replayed: bool = False
    ) -> None:
        """`DeviceEvent`; `replayed`: sent again, once the name is owned (`mdevd.daemon`)."""
        self.manager.DeviceEvent(
            device_path(state.uuid),
            state.uuid,
            event.kind.value,
            _event_details(event, replayed=replayed),
        )

    def _refresh_parent_objects(self, parent: str) -> None:
        """A parent came or went: its devices' `ParentObject` changes."""
        for interface in self._devices.values():
            if interface.state.parent == parent:
                self.reads.changed(device_path(interface.state.uuid))
                interface.emit_properties_changed(
                    {"ParentObject": interface.properties()["ParentObject"]}
                )
        if self.deferred is not None:
            for path, device in self.deferred.items():
                if device.state.parent == parent:
                    self.reads.changed(path)
                    self.deferred.properties_changed(
                        path, {"ParentObject": device.properties()["ParentObject"]}
                    )

    def _export_deferred(self, path: str, device: DeferredDevice) -> DeviceInterface:
        """The interface of a deferred device, now that it is exported (`DeferredExports`)."""
        interface = DeviceInterface(self.context, device.state)
        self._devices[device.state.uuid] = interface
        return interface


def _event_details(event: DeviceEvent, *, replayed: bool) -> dict[str, Variant]:
    """The signal's details: `reason`; for a failed start `error_name` (the full D-Bus name of
    the engine's short one), `error_message` and, when autostart retries, `retry_in`;
    `replayed` for an event sent again."""
    details = {"reason": Variant("s", event.reason.value)}
    if event.error_name:
        details["error_name"] = Variant("s", error_name(event.error_name))
        details["error_message"] = Variant("s", event.error_message)
    if event.retry_in is not None:
        details["retry_in"] = Variant("s", f"{event.retry_in:g}")
    if replayed:
        details["replayed"] = Variant("b", True)
    return details


def _emit_changes(interface: DeviceInterface | ParentInterface, before: dict[str, Any]) -> None:
    """PropertiesChanged with the properties whose values differ from `before`, if any."""
    changed = _changes(before, interface.properties())
    if changed:
        interface.emit_properties_changed(changed)


def _changes(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in after.items() if before[name] != value}
