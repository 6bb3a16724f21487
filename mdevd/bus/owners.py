# SPDX-License-Identifier: LGPL-2.1-or-later
"""Owners on the bus: who a caller is, as a device's owner, and when a lifetime ends.

- `CallerOwners.identify`: the owner a call records. The caller's `owner` option (a label such
  as `nova`), else its systemd unit (from `/proc/<pid>/cgroup`, the pid as the bus daemon
  knows it), else `uid:<n>`.
- `CallerOwners.check`: whether the caller may change a device someone else owns. Its owner
  may (with the method's usual action). Anyone else needs the configure action. A caller that
  names itself with `owner` is held to that name: it never changes another owner's device, so
  a manager's housekeeping (KubeVirt's, kubevirt #9037) cannot remove what it did not make.
- `LifetimeWatcher`: ends a transient device's lifetime when its owner's connection leaves the
  bus (NameOwnerChanged) or its unit stops (systemd's PropertiesChanged). After a daemon
  restart, owners already gone are found by asking the bus and systemd once.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from mdevd import owners as owning
from mdevd.bus import busdaemon, names
from mdevd.bus.caller import CallerTracker, sender_pid
from mdevd.engine import Engine
from mdevd.errors import MdevdError, NotAuthorized, NotSupported
from mdevd.owners import LIFETIME_CONNECTION, Owner

log = logging.getLogger(__name__)

SYSTEMD = "org.freedesktop.systemd1"
SYSTEMD_PATH = "/org/freedesktop/systemd1"
SYSTEMD_MANAGER = "org.freedesktop.systemd1.Manager"
SYSTEMD_UNIT = "org.freedesktop.systemd1.Unit"
#: A unit in one of these states has stopped: its devices' lifetime ended.
_STOPPED = frozenset({"inactive", "failed"})
#: Callers whose unit is remembered.
MAX_REMEMBERED_UNITS = 1024
#: Units followed at once (each is one match rule on the bus).
MAX_WATCHED_UNITS = 1024
TIMEOUT = 10.0


class CallerOwners:
    """Who the caller of the call being served is, as an owner (see the module's text)."""

    def __init__(self, bus: MessageBus, callers: CallerTracker, proc: Path = Path("/proc")) -> None:
        self.bus = bus
        self.callers = callers
        self.proc = proc
        # A connection's process, so its unit, never changes: asked once per connection
        # (bounded; a connection that left is never asked about again).
        self._units: OrderedDict[str, str] = OrderedDict()

    async def identify(self, label: str | None, lifetime: str = owning.LIFETIME_MANUAL) -> Owner:
        sender = self.callers.current_sender()
        uid = await self.callers.uid(sender)
        if label:
            shown = owning.label(label)
        else:
            unit = await self._unit_of(sender)
            shown = f"unit:{unit}" if unit else f"uid:{uid}"
        return Owner(
            label=shown,
            uid=uid,
            lifetime=lifetime,
            connection=sender if lifetime == LIFETIME_CONNECTION else "",
        )

    async def _unit_of(self, sender: str) -> str:
        unit = self._units.get(sender)
        if unit is None:
            unit = await self._look_up_unit(sender)
            self._units[sender] = unit
            while len(self._units) > MAX_REMEMBERED_UNITS:
                self._units.popitem(last=False)
        return unit

    async def _look_up_unit(self, sender: str) -> str:
        try:
            pid = await sender_pid(self.bus, sender)
            text = await asyncio.to_thread(_read_cgroup, self.proc / str(pid) / "cgroup")
        except (MdevdError, OSError) as error:  # gone, or hidden (ProtectProc=invisible)
            log.debug("the unit of caller %s is not known: %s", sender, error)
            return ""
        return owning.unit_of_cgroup(text)

    async def check(
        self, owner: Owner | None, label: str | None, uuid: str, authorize_other: Any
    ) -> None:
        """Allow the caller to change device `uuid` owned by `owner`, or raise. The caller
        of a device nobody owns, or its owner, passes; `authorize_other()` (the configure
        action) decides for anyone else; a caller that named itself another owner never
        passes."""
        if owner is None:
            return
        caller = await self.identify(label)
        if caller.label == owner.label and caller.uid == owner.uid:
            return
        if label:
            raise NotAuthorized(
                f"device {uuid} belongs to {owner.label}, not to {caller.label}: a caller that"
                " names its owner changes only its own devices"
            )
        await authorize_other()


def _read_cgroup(path: Path) -> str:
    with open(path, encoding="utf-8", errors="replace") as file:
        return file.read(65536)


class LifetimeWatcher:
    """Ends the lifetime of transient devices whose owner left (module text)."""

    def __init__(self, bus: MessageBus, engine: Engine, callers: CallerTracker) -> None:
        self.bus = bus
        self.engine = engine
        self.callers = callers
        #: Unit name -> its object path and match rule, for the units followed now.
        self._units: dict[str, tuple[str, str]] = {}
        self._subscribed = False

    def install(self) -> None:
        self.callers.on_departure(self._connection_left)
        self.bus.add_message_handler(self._on_message)

    def _connection_left(self, name: str) -> None:
        for uuid in self.engine.ownership.owned_by_connection(name):
            self.engine.end_lifetime(uuid)

    async def catch_up(self) -> None:
        """After a start: end the lifetimes whose owners left while the daemon was away."""
        for uuid, owner in sorted(self.engine.ownership.all().items()):
            if owner.lifetime == LIFETIME_CONNECTION:
                if not await self._has_owner(owner.connection):
                    log.info("device %s: its owner's connection %s is gone", uuid, owner.connection)
                    self.engine.end_lifetime(uuid)
            elif owner.ends_with_unit:
                try:
                    await self.follow_unit(owner.unit)
                except MdevdError as error:
                    log.warning("device %s: cannot follow unit %s: %s", uuid, owner.unit, error)

    async def _has_owner(self, name: str) -> bool:
        try:
            async with asyncio.timeout(TIMEOUT):
                reply = await self.bus.call(busdaemon.message("NameHasOwner", "s", [name]))
        except TimeoutError:
            return True  # not known: the safe side keeps the device
        return bool(
            reply is not None and reply.message_type is MessageType.METHOD_RETURN and reply.body[0]
        )

    async def check_now(self, uuid: str, owner: Owner) -> None:
        """Right after a device is made: end its lifetime at once if its owner already left
        (its connection closed, or its unit stopped, while the create ran)."""
        if owner.lifetime == LIFETIME_CONNECTION:
            if not await self._has_owner(owner.connection):
                self.engine.end_lifetime(uuid)
        elif owner.ends_with_unit and owner.unit not in self._units:
            self.engine.end_lifetime(uuid)

    async def follow_unit(self, unit: str) -> None:
        """Follow `unit` until it stops; if it is not running now, its lifetime ends now.
        `NotSupported` when no systemd answers on this bus (the device is refused first)."""
        if unit in self._units:
            return
        if len(self._units) >= MAX_WATCHED_UNITS:
            raise NotSupported(f"more than {MAX_WATCHED_UNITS} units are followed already")
        if not self._subscribed:
            await self._call(SYSTEMD_PATH, SYSTEMD_MANAGER, "Subscribe")
            self._subscribed = True
        reply = await self._call(SYSTEMD_PATH, SYSTEMD_MANAGER, "LoadUnit", "s", [unit])
        path = str(reply.body[0])
        rule = (
            f"type='signal',sender='{SYSTEMD}',path='{path}',"
            f"interface='{names.PROPERTIES_INTERFACE}',member='PropertiesChanged'"
        )
        failure = await busdaemon.add_match(self.bus, rule, TIMEOUT)
        if failure is not None:
            raise NotSupported(f"cannot follow unit {unit}: {failure}")
        self._units[unit] = (path, rule)
        state = await self._call(
            path, names.PROPERTIES_INTERFACE, "Get", "ss", [SYSTEMD_UNIT, "ActiveState"]
        )
        value = state.body[0]
        if isinstance(value, Variant) and value.value in _STOPPED:
            self._unit_stopped(unit)

    async def _call(
        self, path: str, interface: str, member: str, signature: str = "", body: Any = None
    ) -> Message:
        message = Message(
            destination=SYSTEMD,
            path=path,
            interface=interface,
            member=member,
            signature=signature,
            body=body or [],
        )
        try:
            async with asyncio.timeout(TIMEOUT):
                reply = await self.bus.call(message)
        except TimeoutError:
            raise NotSupported("systemd did not answer on the system bus") from None
        if reply is None or reply.message_type is MessageType.ERROR:
            name = reply.error_name if reply is not None else "no reply"
            detail = reply.body[0] if reply is not None and reply.body else ""
            raise NotSupported(f"a unit lifetime needs systemd on the system bus: {name} {detail}")
        return reply

    def _on_message(self, message: Message) -> None:
        # Returns None: other handlers still see the message.
        if (
            message.message_type is not MessageType.SIGNAL
            or message.member != "PropertiesChanged"
            or message.signature != "sa{sv}as"
            or message.body[0] != SYSTEMD_UNIT
        ):
            return
        state = message.body[1].get("ActiveState")
        if not isinstance(state, Variant) or state.value not in _STOPPED:
            return
        for unit, (path, _) in list(self._units.items()):
            if path == message.path:
                self._unit_stopped(unit)

    def _unit_stopped(self, unit: str) -> None:
        followed = self._units.pop(unit, None)  # a new device with this unit follows it anew
        if followed is not None:
            # The bus daemon bounds the match rules of a connection: give this one back.
            self.bus.send(busdaemon.message("RemoveMatch", "s", [followed[1]]))
        for uuid in self.engine.ownership.owned_by_unit(unit):
            log.info("device %s: its unit %s stopped", uuid, unit)
            self.engine.end_lifetime(uuid)
