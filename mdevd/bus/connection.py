# SPDX-License-Identifier: LGPL-2.1-or-later
"""The daemon's connection to the bus: dbus-fast's MessageBus, as an ObjectManager needs it.

Signals about the object tree go out from the ObjectManager's path as the D-Bus specification
says (dbus-fast would send InterfacesAdded from the object's own path, which
GDBusObjectManagerClient and sd-bus clients ignore).

The connection negotiates Unix fd passing (`Device.Open` answers with an fd); the fds it sends
are closed once sent and those it receives at once (`mdevd.bus.fds`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import Any

from dbus_fast import Message, MessageType
from dbus_fast.introspection import Node
from dbus_fast.service import ServiceInterface

from mdevd.bus import errors, fds
from mdevd.bus.names import OBJECT_MANAGER_INTERFACE, ROOT_PATH
from mdevd.bus.reads import variants
from mdevd.bus.sendfix import PacedMessageBus


class ManagedObjectBus(PacedMessageBus):
    """A MessageBus whose InterfacesAdded/Removed come from the ObjectManager at ROOT_PATH.

    Paced (mdevd.bus.sendfix): a full send buffer never disconnects it.

    GetManagedObjects is answered by the tree's `ReadServer` (dbus-fast's own handler costs the
    square of the number of objects). dbus-fast introspects a path that has no
    exported interface of its own as a bare node; ROOT_PATH has none, so it is introspected
    with the standard interfaces (ObjectManager among them), as the contract places it there.

    Once disconnected, replies and signals are dropped: nobody can receive them, and dbus-fast
    would raise from its reply callback on the closed socket (logged by asyncio as an error).

    Unix fd passing is negotiated (unless `negotiate_unix_fd=False` is passed). An fd handed
    over with `outgoing_fds.hand_over` as a method's result is closed once the reply carrying
    it has been written (or dropped); fds that arrive with any message are closed at once.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("negotiate_unix_fd", True)
        super().__init__(*args, **kwargs)
        #: fds handed over as replies' values, closed here once sent (`mdevd.bus.fds`).
        self.outgoing_fds = fds.OutgoingFds()
        # The first handler, so that it sees every message, whichever later one handles it.
        self.add_message_handler(fds.close_received)

    # dbus-fast's asyncio bus returns a future; its synchronous base class says None.
    def send(self, msg: Message) -> asyncio.Future[None]:  # type: ignore[override]
        owned = self.outgoing_fds.take(msg.unix_fds)
        if self._disconnected and msg.message_type is not MessageType.METHOD_CALL:
            fds.close_all(owned)
            dropped: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            dropped.set_result(None)
            return dropped
        try:
            sent: asyncio.Future[None] = super().send(msg)
        except BaseException:
            fds.close_all(owned)
            raise
        if owned:
            # Written (the receiver has its own copies) or failed: either way ours go.
            sent.add_done_callback(lambda _: fds.close_all(owned))
        return sent

    async def calls_finished(self, timeout: float) -> int:
        """Wait until the method calls being served have ended, at most `timeout` seconds;
        how many still run then."""
        return await errors.calls_finished(timeout)

    #: Paths whose object is served but exported only on first use (`mdevd.bus.deferred`,
    #: which exports a deferred object before dbus-fast looks its path up for a call).
    deferred_paths: Collection[str] = ()

    def _introspect_export_path(self, path: str) -> Node:
        deferred = [other for other in self.deferred_paths if other != path]
        if deferred:
            # dbus-fast lists a path's children from its exports, by a rule that differs
            # between its versions (the paths below it from 2.x on, in 1.84 any path that
            # contains it): for this one call the deferred paths are listed among the exports,
            # so that the rule stays dbus-fast's own. Only their keys are read.
            exports = self._path_exports
            nothing: dict[str, ServiceInterface] = {}
            self._path_exports = {**dict.fromkeys(deferred, nothing), **exports}
            try:
                node: Node = super()._introspect_export_path(path)
            finally:
                self._path_exports = exports
        else:
            node = super()._introspect_export_path(path)
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
        added = {interface.name: variants(properties())}
        self._from_root("InterfacesAdded", "oa{sa{sv}}", [path, added])

    def _emit_interface_removed(self, path: str, removed_interfaces: list[str]) -> None:
        self.interfaces_removed(path, removed_interfaces)

    def interfaces_removed(self, path: str, removed_interfaces: list[str]) -> None:
        """The InterfacesRemoved an unexport of `removed_interfaces` at `path` sends (also
        for objects never exported to dbus-fast: `mdevd.bus.deferred`)."""
        if not path.startswith(ROOT_PATH + "/"):
            super()._emit_interface_removed(path, removed_interfaces)
            return
        self._from_root("InterfacesRemoved", "oas", [path, removed_interfaces])

    def _from_root(self, member: str, signature: str, body: list[Any]) -> None:
        """An ObjectManager signal, sent from the root path (the contract's manager)."""
        if self._disconnected:
            return
        self.send(
            Message.new_signal(
                path=ROOT_PATH,
                interface=OBJECT_MANAGER_INTERFACE,
                member=member,
                signature=signature,
                body=body,
            )
        )
