# SPDX-License-Identifier: LGPL-2.1-or-later
"""The reads whose reply grows with the number of objects: GetManagedObjects, ListDevices and
ListDeviceSummaries.

dbus-fast's own GetManagedObjects handler checks, after each object's properties arrive,
whether every object has arrived yet, scanning the whole reply each time: its cost grows with
the square of the number of objects (7.6 s for 10,000 devices, all of it without returning to
the event loop, so every other call waited as long). Here these reads are answered by a message
handler (`bus.add_message_handler`, public in every dbus-fast from 1.84 on) from a cache:

- every object's reply entry (its properties as variants) and, for devices, its ListDevices
  and ListDeviceSummaries structs, kept per object path. The object tree marks a path dirty
  whenever it exports, changes or removes it (the same moments it signals the change); a read
  first rebuilds the dirty entries, in slices that return to the event loop in between, so a
  read after one change costs one entry, and the first read after start-up costs one pass;
- the reply is taken in the same turn of the loop in which no entry is dirty any more, and
  sent at once: it is the state at that moment, ordered after every signal of an earlier
  change and before every signal of a later one, as dbus-fast's synchronous handler's was.
  Entries are replaced, never changed in place, and the table is copied before a change once
  a reply holds it, so a queued reply never changes under its message.

The whole reply's body (each device list's, and GetManagedObjects' for the root or "/") is
marshalled once and kept with the table it was written from: a reply while nothing changed
sends those bytes again behind a header of its own (`mdevd.bus.premarshalled`; a dbus-fast
client's ListDevices of 1,000 devices: 13 -> 6 ms, GetManagedObjects 23 -> 11 ms, on a host
whose `mdevctl list --defined --dumpjson` takes 10.5 ms; ListDeviceSummaries, a fifth of
ListDevices' bytes, 2.9 ms through `mdevd.client` where mdevctl took 10.9). The bytes are
dropped in the same step that rebuilds an entry, so they are never older than the table; they
are written in the turn the reply is taken, so they are the state it stands for. A dbus-fast
that cannot send such bytes gets ordinary messages, marshalled per reply.

What remains per reply is the bus taking the bytes and, after a change, marshalling them (one
step dbus-fast does not split: about 60-90 ms for 10,000 devices compiled, 0.3 s pure Python).
`ReadLimiter` bounds how many such replies are on their way at once and shares them fairly
between callers, so that neither one caller's flood nor many callers' reads keep small replies
waiting behind more than a couple of large ones.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

from dbus_fast import DBusError, Message, MessageFlag, MessageType
from dbus_fast.aio import MessageBus
from dbus_fast.signature import Variant

from mdevd.bus import options as opts
from mdevd.bus import premarshalled
from mdevd.bus.errors import to_dbus_error
from mdevd.bus.names import (
    DEVICE_INTERFACE,
    MANAGER_INTERFACE,
    MANAGER_PATH,
    OBJECT_MANAGER_INTERFACE,
    ROOT_PATH,
)
from mdevd.errors import Busy

log = logging.getLogger(__name__)

#: The D-Bus type of every property the daemon exports.
PROPERTY_SIGNATURES: Final[Mapping[str, str]] = {
    "Version": "s",
    "Features": "as",
    "Name": "s",
    "SysfsPath": "s",
    "Subsystem": "s",
    "Types": "a{sa{sv}}",
    "UUID": "s",
    "Parent": "s",
    "ParentObject": "o",
    "Type": "s",
    "Active": "b",
    "Defined": "b",
    "Autostart": "b",
    "Attributes": "a(ss)",
    "IommuGroup": "i",
    "ConfigFile": "s",
    "LastError": "s",
    "Status": "s",
    "PendingChanges": "a{sv}",
    "Backend": "s",
    "Placement": "s",
    "Owner": "s",
    "Lifetime": "s",
}

#: Device properties added after ListDevices' struct was fixed: its trailing `a{sv}` has them.
LATER_DEVICE_PROPERTIES: Final = (
    "Status",
    "PendingChanges",
    "Backend",
    "Placement",
    "Owner",
    "Lifetime",
)

MANAGED_OBJECTS_SIGNATURE: Final = "a{oa{sa{sv}}}"
#: ListDevices' struct: the object path, then the Device properties in the contract's order,
#: then a dictionary for properties added later (a struct cannot grow without a new signature).
DEVICE_STRUCT: Final = "(ossosbbba(ss)sissa{sv})"
DEVICE_LIST_SIGNATURE: Final = "a" + DEVICE_STRUCT
LIST_DEVICES: Final = "ListDevices"
#: ListDeviceSummaries' struct: what `mdevctl list` shows of a device (UUID, Parent, Type,
#: Active, Defined, Autostart, Attributes), a fifth of ListDevices' bytes, so that a client's
#: unmarshalling of 1,000 devices costs a fraction of mdevctl's whole listing.
SUMMARY_STRUCT: Final = "(sssbbba(ss))"
DEVICE_SUMMARIES_SIGNATURE: Final = "a" + SUMMARY_STRUCT
LIST_DEVICE_SUMMARIES: Final = "ListDeviceSummaries"
#: The Manager's methods served here, each a list with one entry per device.
DEVICE_LISTS: Final = (LIST_DEVICES, LIST_DEVICE_SUMMARIES)
GET_MANAGED_OBJECTS: Final = "GetManagedObjects"

#: Entries rebuilt per turn of the event loop: about 5 ms of work.
SLICE: Final = 256
#: Large replies on their way at once, whoever asked (each ~6 MB at 10,000 devices).
MAX_IN_FLIGHT: Final = 2
#: Large replies on their way at once to one caller (a unique bus name).
PER_CALLER_IN_FLIGHT: Final = 1
#: Calls of one caller that may wait for their turn; one more is answered `Busy`.
PER_CALLER_WAITING: Final = 8

#: The options of both device lists: none yet (an unknown one is InvalidArgument).
_DEVICE_LIST_OPTIONS: Final[Mapping[str, str]] = {}


class Exported(Protocol):
    """What the tree exports at a path: an interface that can tell all its properties."""

    @property
    def name(self) -> str: ...

    def properties(self) -> dict[str, Any]: ...


def variants(properties: Mapping[str, Any]) -> dict[str, Variant]:
    """Properties as `a{sv}`: each value wrapped in its declared D-Bus type."""
    return {name: Variant(PROPERTY_SIGNATURES[name], value) for name, value in properties.items()}


def device_struct(path: str, properties: Mapping[str, Any]) -> list[Any]:
    """One ListDevices entry (`DEVICE_STRUCT`) of the Device object at `path`."""
    return [
        path,
        properties["UUID"],
        properties["Parent"],
        properties["ParentObject"],
        properties["Type"],
        properties["Active"],
        properties["Defined"],
        properties["Autostart"],
        properties["Attributes"],
        properties["SysfsPath"],
        properties["IommuGroup"],
        properties["ConfigFile"],
        properties["LastError"],
        variants({name: properties[name] for name in LATER_DEVICE_PROPERTIES}),
    ]


def device_summary(properties: Mapping[str, Any]) -> list[Any]:
    """One ListDeviceSummaries entry (`SUMMARY_STRUCT`) of a Device object's properties."""
    return [
        properties["UUID"],
        properties["Parent"],
        properties["Type"],
        properties["Active"],
        properties["Defined"],
        properties["Autostart"],
        properties["Attributes"],
    ]


class DeviceListing:
    """One of the Manager's device lists: an entry per Device object path, the list of them and
    its marshalled body, both kept while no entry changes."""

    __slots__ = ("body", "entries", "entry", "items", "signature")

    def __init__(
        self, signature: str, entry: Callable[[str, Mapping[str, Any]], list[Any]]
    ) -> None:
        self.signature = signature
        #: Builds the entry of the device at a path from its properties.
        self.entry = entry
        self.entries: dict[str, list[Any]] = {}
        self.items: list[list[Any]] | None = None
        self.body: bytes | None = None

    def stale(self) -> None:
        """An entry changed: the list and its bytes are rebuilt at the next reply."""
        self.items = None
        self.body = None

    def now(self) -> list[list[Any]]:
        """Every entry, in no particular order (replaced, never changed, once handed out)."""
        if self.items is None:
            self.items = list(self.entries.values())
        return self.items


class ReadLimiter:
    """Turns for large replies: at most `max_in_flight` at once, `per_caller` per caller,
    handed out round-robin between the callers that wait, `per_caller_waiting` waiting each.

    A turn lasts until its reply is written to the bus (see `ReadServer`), so a caller that
    asks faster than the bus takes the replies waits for itself, not the daemon for it.
    """

    def __init__(
        self,
        max_in_flight: int = MAX_IN_FLIGHT,
        per_caller: int = PER_CALLER_IN_FLIGHT,
        per_caller_waiting: int = PER_CALLER_WAITING,
    ) -> None:
        self.max_in_flight = max_in_flight
        self.per_caller = per_caller
        self.per_caller_waiting = per_caller_waiting
        self._in_flight = 0
        self._running: dict[str, int] = {}
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {}
        #: Callers with waiting calls, in the order their next turn comes.
        self._turns: deque[str] = deque()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def acquire(self, caller: str, what: str) -> None:
        """Wait for `caller`'s turn; `Busy` at once if it has too many calls waiting."""
        queue = self._waiting.get(caller)
        if queue is not None and len(queue) >= self.per_caller_waiting:
            raise Busy(
                f"{what}: caller {caller} already has {len(queue)} such calls waiting behind "
                f"{self._running.get(caller, 0)} in progress; retry once they are answered"
            )
        if queue is None:
            queue = self._waiting[caller] = deque()
            self._turns.append(caller)
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue.append(turn)
        self._dispatch()
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                # Granted just as it was cancelled: give the turn back.
                self.release(caller)
            raise

    def release(self, caller: str) -> None:
        """End one of `caller`'s turns."""
        left = self._running.get(caller, 0) - 1
        if left > 0:
            self._running[caller] = left
        else:
            self._running.pop(caller, None)
        self._in_flight -= 1
        self._dispatch()

    def _dispatch(self) -> None:
        # Each pass over the callers in turn order grants at most one turn per caller, so a
        # caller with many waiting calls gets no more turns than one with a single call.
        skipped = 0
        while self._turns and self._in_flight < self.max_in_flight and skipped < len(self._turns):
            caller = self._turns.popleft()
            queue = self._waiting[caller]
            while queue and queue[0].done():  # cancelled while waiting
                queue.popleft()
            if not queue:
                del self._waiting[caller]
                continue
            if self._running.get(caller, 0) >= self.per_caller:
                self._turns.append(caller)
                skipped += 1
                continue
            skipped = 0
            turn = queue.popleft()
            if queue:
                self._turns.append(caller)
            else:
                del self._waiting[caller]
            self._running[caller] = self._running.get(caller, 0) + 1
            self._in_flight += 1
            turn.set_result(None)


class ReadServer:
    """Answers GetManagedObjects (on any path, as dbus-fast does), ListDevices and
    ListDeviceSummaries.

    `lookup(path)` returns the interface exported at `path` by the object tree, the only
    exporter on its bus; the tree calls `changed(path)` whenever that answer or the
    interface's `properties()` may have changed.
    """

    def __init__(
        self,
        bus: MessageBus,
        lookup: Callable[[str], Exported | None],
        limiter: ReadLimiter | None = None,
    ) -> None:
        self.bus = bus
        self._lookup = lookup
        self.limiter = limiter if limiter is not None else ReadLimiter()
        self._objects: dict[str, dict[str, dict[str, Variant]]] = {}
        #: ListDevices' and ListDeviceSummaries' entries, lists and bodies, by method name.
        self._listings: dict[str, DeviceListing] = {
            LIST_DEVICES: DeviceListing(DEVICE_LIST_SIGNATURE, device_struct),
            LIST_DEVICE_SUMMARIES: DeviceListing(
                DEVICE_SUMMARIES_SIGNATURE, lambda _path, properties: device_summary(properties)
            ),
        }
        #: Paths whose entries must be rebuilt, oldest first (a dict as an ordered set).
        self._dirty: dict[str, None] = {}
        #: Whether a reply holds `_objects` (then it is copied before it changes).
        self._objects_shared = False
        #: The marshalled body of the whole table's reply (the device lists keep theirs),
        #: while it stands for the entries as they are (dropped whenever one is rebuilt).
        self._objects_body: bytes | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        #: Object entries built so far: the work reads cost (tests count it).
        self.entries_built = 0
        #: Whole reply bodies marshalled here so far (the rest of that work; tests count it).
        self.bodies_marshalled = 0
        #: Whether the bus hands these calls here (else dbus-fast answers GetManagedObjects).
        self.installed = False

    def install(self) -> None:
        self.bus.add_message_handler(self.handle)
        self.installed = True

    def uninstall(self) -> None:
        self.bus.remove_message_handler(self.handle)
        self.installed = False

    def changed(self, path: str) -> None:
        """The object at `path` was exported, changed or removed."""
        self._dirty[path] = None

    # ---- the cache ----------------------------------------------------------------------------

    async def _refresh(self) -> None:
        """Rebuild dirty entries until none is left, a slice per turn of the event loop."""
        while self._dirty:
            if self._objects_shared:
                self._objects = dict(self._objects)
                self._objects_shared = False
            for _ in range(min(SLICE, len(self._dirty))):
                path = next(iter(self._dirty))
                del self._dirty[path]
                self._rebuild(path)
            for listing in self._listings.values():
                listing.stale()
            self._objects_body = None
            if self._dirty:
                await asyncio.sleep(0)

    def _rebuild(self, path: str) -> None:
        interface = self._lookup(path)
        if interface is None:
            self._objects.pop(path, None)
            for listing in self._listings.values():
                listing.entries.pop(path, None)
            return
        properties = interface.properties()
        self._objects[path] = {interface.name: variants(properties)}
        if interface.name == DEVICE_INTERFACE:
            for listing in self._listings.values():
                listing.entries[path] = listing.entry(path, properties)
        self.entries_built += 1

    async def managed_objects(self, path: str) -> dict[str, dict[str, dict[str, Variant]]]:
        """GetManagedObjects' reply for `path`: the objects below it, as dbus-fast answers."""
        await self._refresh()
        return self._managed_objects_now(path)

    def _managed_objects_now(self, path: str) -> dict[str, dict[str, dict[str, Variant]]]:
        if _whole_table(path):
            # Every object is below ROOT_PATH: the whole table, shared until it changes.
            self._objects_shared = True
            return self._objects
        prefix = path + "/"
        return {key: value for key, value in self._objects.items() if key.startswith(prefix)}

    async def device_list(self) -> list[list[Any]]:
        """ListDevices' reply: every device, in no particular order."""
        await self._refresh()
        return self._listings[LIST_DEVICES].now()

    async def device_summaries(self) -> list[list[Any]]:
        """ListDeviceSummaries' reply: every device, in no particular order."""
        await self._refresh()
        return self._listings[LIST_DEVICE_SUMMARIES].now()

    async def reply(self, message: Message) -> Message:
        """The reply to a device list's or GetManagedObjects' `message`, for the state at the
        moment it returns (it must be sent in the same turn of the event loop)."""
        await self._refresh()
        listing = self._listings.get(message.member or "")
        if not premarshalled.supported():
            if listing is not None:
                return Message.new_method_return(message, listing.signature, [listing.now()])
            objects = self._managed_objects_now(message.path or "/")
            return Message.new_method_return(message, MANAGED_OBJECTS_SIGNATURE, [objects])
        if listing is not None:
            if listing.body is None:
                listing.body = self._marshal(listing.signature, [listing.now()])
            written = listing.body
            signature = listing.signature
        else:
            path = message.path or "/"
            signature = MANAGED_OBJECTS_SIGNATURE
            if not _whole_table(path):
                written = self._marshal(signature, [self._managed_objects_now(path)])
            elif self._objects_body is None:
                # Written now, so no reply holds the table itself (it need not be copied).
                written = self._objects_body = self._marshal(signature, [self._objects])
            else:
                written = self._objects_body
        return premarshalled.as_message(premarshalled.Premarshalled(message, signature, written))

    def _marshal(self, signature: str, body: list[Any]) -> bytes:
        self.bodies_marshalled += 1
        return premarshalled.marshal_body(signature, body)

    # ---- the calls ----------------------------------------------------------------------------

    def handle(self, message: Message) -> bool:
        """dbus-fast's message handler: True for the calls this serves (dbus-fast then does
        nothing more with them), False for everything else."""
        if message.message_type is not MessageType.METHOD_CALL:
            return False
        if message.member == GET_MANAGED_OBJECTS:
            if message.interface != OBJECT_MANAGER_INTERFACE:
                return False
        elif message.member in DEVICE_LISTS:
            if (
                message.path != MANAGER_PATH
                or message.interface not in (MANAGER_INTERFACE, None)
                or message.signature != "a{sv}"
            ):
                return False
        else:
            return False
        if message.flags & MessageFlag.NO_REPLY_EXPECTED:
            return True  # nobody wants the answer: no reason to build it
        task = asyncio.get_running_loop().create_task(self._serve(message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _serve(self, message: Message) -> None:
        member = message.member or ""
        caller = message.sender or ""
        try:
            if member in DEVICE_LISTS:
                opts.check_options(message.body[0], _DEVICE_LIST_OPTIONS, member)
            await self.limiter.acquire(caller, member)
        except Exception as exc:  # every failure becomes a contract error
            self._send(_error_reply(message, to_dbus_error(exc, member)))
            return
        try:
            try:
                reply = await self.reply(message)
            except Exception as exc:  # every failure becomes a contract error
                reply = _error_reply(message, to_dbus_error(exc, member))
            sent = self._send(reply)
            if sent is not None:
                # The turn lasts until the bus has the bytes (see ReadLimiter); a connection
                # lost meanwhile is the daemon's business, not this call's.
                await asyncio.wait([sent])
                if not sent.cancelled():
                    sent.exception()  # retrieved, so asyncio does not log it as lost
        finally:
            self.limiter.release(caller)

    def _send(self, reply: Message) -> asyncio.Future[None] | None:
        if not self.bus.connected:
            return None
        sent: asyncio.Future[None] = self.bus.send(reply)
        return sent


def _whole_table(path: str) -> bool:
    """Whether GetManagedObjects on `path` answers every object (all are below ROOT_PATH)."""
    return path == ROOT_PATH or path == "/" or ROOT_PATH.startswith(path + "/")


def _error_reply(message: Message, error: DBusError) -> Message:
    return Message.new_error(message, error.type, error.text)
