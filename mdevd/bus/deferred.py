# SPDX-License-Identifier: LGPL-2.1-or-later
"""Objects served from start-up on, exported to dbus-fast only when first used.

dbus-fast's export costs about 110 us per object: creating a `ServiceInterface` looks its
class's members up again for every instance (`inspect.getmembers`), and `export` builds a
handler per method per object. With 10,000 definitions that was most of the daemon's time to
ready (issue 20, `bench/bench_ready.py` on the emulated kernel: 2.5 s with it, 1.5 s without,
the rest mostly the store reading 10,000 files), for objects most of which no client will
ever address one by one.

So the objects that exist when the daemon starts are *deferred*: they are served from the
first moment, but their dbus-fast export happens in the very step where dbus-fast would first
look them up, and is then the same export as any other (quiet: they were never announced by
InterfacesAdded, and clients learn them from GetManagedObjects). Everything dbus-fast answers
stays its own answer:

- a method call to a deferred object's path (its own interface, Properties, Introspectable,
  Peer; with or without a reply expected): `handle`, a message handler, which dbus-fast runs
  before it looks for the path's handler, exports the object first;
- GetManagedObjects: answered by `mdevd.bus.reads` from the tree's own table, which lists
  deferred objects as it lists exported ones; should a GetManagedObjects reach dbus-fast's own
  handler (mdevd's not installed), every deferred object is exported first;
- Introspect of an ancestor path: dbus-fast lists the children of a path from its exports, so
  the bus (`mdevd.bus.connection.ManagedObjectBus`) lists the deferred paths with them, by
  dbus-fast's own rule (which differs between its versions);
- signals: a deferred object stays deferred when it changes or goes; its PropertiesChanged
  (`properties_changed`) and InterfacesRemoved (`remove`) are the ones dbus-fast's
  `emit_properties_changed` and `unexport` send for an exported object: the same message from
  the same path, its properties in the same order (`mdevd.bus.exported.dbus_properties`).

What this relies on in dbus-fast, in every version from 1.84 on: message handlers
(`add_message_handler`) run, in order, before the handler of a call's path is looked up;
`export`; `Message.new_signal` and `send`; for introspection, that the bus's exports are the
dict `_path_exports` (public in the compiled builds), path first. A dbus-fast without it gets
no deferral (`can_defer`): every object is exported at once, as before.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, Generic, TypeVar

from dbus_fast import Message, MessageType
from dbus_fast.service import ServiceInterface
from dbus_fast.signature import Variant

from mdevd.bus.connection import ManagedObjectBus
from mdevd.bus.names import OBJECT_MANAGER_INTERFACE, PROPERTIES_INTERFACE

T = TypeVar("T")

GET_MANAGED_OBJECTS: Final = "GetManagedObjects"


def can_defer(bus: ManagedObjectBus) -> bool:
    """Whether this dbus-fast keeps its exports where the bus's introspection can list the
    deferred paths with them (`ManagedObjectBus._introspect_export_path`)."""
    return isinstance(getattr(bus, "_path_exports", None), dict)


class DeferredExports(Generic[T]):
    """Paths whose object (with the one interface `interface`, whose properties are
    `properties`: name and signature in dbus-fast's order) is served but not yet exported to
    dbus-fast, each with what its object will be built from (`build(path, data)` returns the
    interface to export).

    `managed_objects_served()` tells whether mdevd's own GetManagedObjects handler is
    installed (else dbus-fast's answers, and it must see every object).
    """

    def __init__(
        self,
        bus: ManagedObjectBus,
        interface: str,
        properties: Sequence[tuple[str, str]],
        build: Callable[[str, T], ServiceInterface],
        *,
        managed_objects_served: Callable[[], bool],
    ) -> None:
        self._bus = bus
        self.interface = interface
        self._properties = tuple(properties)
        self._build = build
        self._managed_objects_served = managed_objects_served
        self._pending: dict[str, T] = {}
        #: Objects exported on first use so far (tests count them).
        self.exported = 0

    def install(self) -> None:
        """Take part in the bus's message handling, and in its introspection."""
        self._bus.deferred_paths = self._pending.keys()
        self._bus.add_message_handler(self.handle)

    def defer(self, path: str, data: T) -> None:
        self._pending[path] = data

    def __contains__(self, path: object) -> bool:
        return path in self._pending

    def get(self, path: str) -> T | None:
        return self._pending.get(path)

    def items(self) -> list[tuple[str, T]]:
        return list(self._pending.items())

    def export(self, path: str) -> ServiceInterface | None:
        """Export the object at `path` now, if it is deferred; the interface exported."""
        if path not in self._pending:
            return None
        data = self._pending.pop(path)
        interface = self._build(path, data)
        quiet = self._bus.quiet_exports
        # Quiet: the object was there all along (GetManagedObjects listed it).
        self._bus.quiet_exports = True
        try:
            self._bus.export(path, interface)
        finally:
            self._bus.quiet_exports = quiet
        self.exported += 1
        return interface

    def remove(self, path: str) -> bool:
        """Stop serving the deferred object at `path`, with the InterfacesRemoved its unexport
        would send; False if it is not deferred."""
        if path not in self._pending:
            return False
        del self._pending[path]
        self._bus.interfaces_removed(path, [self.interface])
        return True

    def export_every(self) -> None:
        for path in list(self._pending):
            self.export(path)

    def handle(self, message: Message) -> bool:
        """dbus-fast's message handler: exports what the call needs, never answers it."""
        if message.message_type is not MessageType.METHOD_CALL or not self._pending:
            return False
        if message.path in self._pending:
            self.export(message.path)
        elif (
            message.member == GET_MANAGED_OBJECTS
            and message.interface == OBJECT_MANAGER_INTERFACE
            and not self._managed_objects_served()
        ):
            self.export_every()
        return False

    def properties_changed(self, path: str, changed: Mapping[str, Any]) -> None:
        """The PropertiesChanged dbus-fast would send for the deferred object at `path`
        (`ServiceInterface.emit_properties_changed`: the same signal from the object's path,
        the properties in their declared order, each with its declared signature)."""
        values = {
            name: Variant(signature, changed[name])
            for name, signature in self._properties
            if name in changed
        }
        body: list[Any] = [self.interface, values, []]
        self._bus.send(
            Message.new_signal(
                path=path,
                interface=PROPERTIES_INTERFACE,
                member="PropertiesChanged",
                signature="sa{sv}as",
                body=body,
            )
        )
