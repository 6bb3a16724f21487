# SPDX-License-Identifier: LGPL-2.1-or-later
"""The daemon's signals as a test sees them: recorded from the bus, in the order it delivered them.

    with SignalRecorder(address) as recorder:           # subscribed once this returns
        mark = recorder.mark()
        ...                                             # make the daemon do something
        (started,) = recorder.wait_for_events(1, uuid, "started", "api")
        assert recorder.events(uuid, since=mark) == [started]

`SignalRecorder` is one bus connection on a thread and an asyncio loop of its own (dbus-fast is
asyncio only, the tests are plain functions). Its match rules are in place before the
constructor returns, so nothing the daemon sends after that is missed. It keeps every signal
as a `Signal` (the message, its body unwrapped), and shows the DeviceEvents and the
ObjectManager's signals as `mdevd.client.Event`, the type a client of mdevd gets.

`tests.daemon.harness.BusClient` is a SignalRecorder that also makes calls: its replies and its
signals come in on one connection, in the bus's order, so when a call returns every signal the
daemon sent before its reply is already recorded ("the signal came before the reply" is then a
plain membership test).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Self, TypeVar

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from mdevd.bus import names
from mdevd.client import Event
from mdevd.replies import unwrap, uuid_of
from tests.support.waiting import WAIT_TIMEOUT, wait_until

T = TypeVar("T")

#: Every signal the daemon sends. The bus compares the sender with the name's owner when it
#: delivers a signal, so this also matches a daemon that owns the name only later, or again
#: after a restart.
FROM_THE_DAEMON: tuple[str, ...] = (f"type='signal',sender='{names.BUS_NAME}'",)
#: DeviceEvent and the ObjectManager's signals, whoever sends them: also what a daemon sends
#: while it does not own its name.
EVENTS_FROM_ANY_SENDER: tuple[str, ...] = (
    f"type='signal',interface='{names.MANAGER_INTERFACE}',member='DeviceEvent'",
    f"type='signal',interface='{names.OBJECT_MANAGER_INTERFACE}',path='{names.ROOT_PATH}'",
)
#: How long connecting and subscribing, or anything else run on the loop, may take.
RUN_TIMEOUT = 60.0

_OBJECT_EVENTS = {"InterfacesAdded": "added", "InterfacesRemoved": "removed"}


@dataclass(frozen=True)
class Signal:
    """One signal as the bus delivered it, its body unwrapped (plain values, lists for
    structs). `index` is its place in the recorder's record (what `mark()` counts)."""

    index: int
    path: str
    interface: str
    member: str
    body: list[Any]

    @property
    def object_path(self) -> str:
        """The object it is about: the first argument of ObjectManager signals, else `path`."""
        if self.interface == names.OBJECT_MANAGER_INTERFACE:
            return str(self.body[0])
        if self.member == "DeviceEvent":
            return str(self.body[0])
        return self.path

    def is_added(self, path: str) -> bool:
        return self.member == "InterfacesAdded" and self.body[0] == path

    def is_removed(self, path: str) -> bool:
        return self.member == "InterfacesRemoved" and self.body[0] == path

    def is_event(self, uuid: str, event: str | None = None) -> bool:
        return (
            self.member == "DeviceEvent"
            and self.body[1] == uuid
            and (event is None or self.body[2] == event)
        )

    def changed(self, path: str) -> dict[str, Any] | None:
        """The changed properties if this is PropertiesChanged of `path`."""
        if self.member == "PropertiesChanged" and self.path == path:
            result: dict[str, Any] = self.body[1]
            return result
        return None

    def as_event(self) -> Event | None:
        """This signal as mdevd.client reports it: a DeviceEvent ("device-event"), an object
        added or removed ("added", "removed"); None for any other signal."""
        if self.member == "DeviceEvent" and self.interface == names.MANAGER_INTERFACE:
            path, uuid, event, details = self.body
            return Event("device-event", path, uuid, event, dict(details))
        kind = _OBJECT_EVENTS.get(self.member)
        if kind is not None and self.interface == names.OBJECT_MANAGER_INTERFACE:
            path = str(self.body[0])
            return Event(kind, path, uuid_of(path))
        return None


class SignalRecorder:
    """A bus connection that records every signal its match `rules` let through.

    Use it as a context manager, or call `close()`. Every query takes `since`, a `mark()`
    taken earlier: only what came after it counts.
    """

    def __init__(
        self,
        address: str,
        rules: Sequence[str] = FROM_THE_DAEMON,
        *,
        thread_name: str = "test-signal-recorder",
    ) -> None:
        self.address = address
        self._rules = tuple(rules)
        self._lock = threading.Lock()
        self._signals: list[Signal] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=thread_name, daemon=True
        )
        self._thread.start()
        try:
            self.bus: MessageBus = self.run(self._connect())
        except BaseException:
            self._stop_loop()
            raise

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def _connect(self) -> MessageBus:
        bus = await MessageBus(bus_address=self.address).connect()
        bus.add_message_handler(self._on_message)
        for rule in self._rules:
            reply = await bus.call(
                Message(
                    destination=names.DBUS_BUS_NAME,
                    path=names.DBUS_PATH,
                    interface=names.DBUS_INTERFACE,
                    member="AddMatch",
                    signature="s",
                    body=[rule],
                )
            )
            if reply is None or reply.message_type is not MessageType.METHOD_RETURN:
                bus.disconnect()
                raise AssertionError(f"the bus refused the match rule {rule!r}: {reply}")
        return bus

    def _on_message(self, message: Message) -> None:
        if message.message_type is not MessageType.SIGNAL:
            return
        with self._lock:
            self._signals.append(
                Signal(
                    len(self._signals),
                    message.path or "",
                    message.interface or "",
                    message.member or "",
                    unwrap(message.body),
                )
            )

    def close(self) -> None:
        if self.bus.connected:
            self._loop.call_soon_threadsafe(self.bus.disconnect)
        self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    # ---- running things on the connection's loop ---------------------------------------------

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = RUN_TIMEOUT) -> T:
        return self.submit(coroutine).result(timeout)

    # ---- the record ---------------------------------------------------------------------------

    def mark(self) -> int:
        """A position in the record: `since=mark` is what came after it."""
        with self._lock:
            return len(self._signals)

    def signals(self, since: int = 0) -> list[Signal]:
        """Every signal recorded, oldest first."""
        with self._lock:
            return list(self._signals[since:])

    def wait_signal(
        self, predicate: Callable[[Signal], bool], since: int = 0, timeout: float = WAIT_TIMEOUT
    ) -> Signal:
        """The first signal since `since` that `predicate` accepts, waiting for it to come."""

        def found() -> Signal | None:
            return next((s for s in self.signals(since) if predicate(s)), None)

        return wait_until(found, timeout, "a signal")

    def events(
        self,
        uuid: str | None = None,
        event: str | None = None,
        reason: str | None = None,
        *,
        kind: str = "device-event",
        since: int = 0,
    ) -> list[Event]:
        """The events of `kind` ("device-event", "added", "removed") since `since`, optionally
        only those of one device, one event (`started`, ...) or one reason (`api`, ...)."""
        return [
            e
            for e in (s.as_event() for s in self.signals(since))
            if e is not None
            and e.kind == kind
            and (uuid is None or e.uuid == uuid)
            and (event is None or e.event == event)
            and (reason is None or e.details.get("reason") == reason)
        ]

    def event_details(self, uuid: str, since: int = 0) -> list[tuple[str, dict[str, str]]]:
        """(event, details) of every DeviceEvent of `uuid` since `since`, oldest first."""
        return [(e.event, e.details) for e in self.events(uuid, since=since)]

    def wait_for_events(
        self,
        count: int,
        uuid: str | None = None,
        event: str | None = None,
        reason: str | None = None,
        *,
        since: int = 0,
        timeout: float = WAIT_TIMEOUT,
    ) -> list[Event]:
        """At least `count` DeviceEvents that `events(uuid, event, reason)` selects: all of
        them, once there are that many."""

        def enough() -> list[Event] | None:
            found = self.events(uuid, event, reason, since=since)
            return found if len(found) >= count else None

        wanted = f"{count} {event or 'any'} event(s) of {uuid or 'any device'} (reason {reason})"
        try:
            return wait_until(enough, timeout, wanted)
        except AssertionError as timed_out:
            raise AssertionError(f"{timed_out}; have {self.events(uuid, since=since)}") from None

    def wait_for_event(
        self, predicate: Callable[[Event], bool], since: int = 0, timeout: float = WAIT_TIMEOUT
    ) -> Event:
        """The first DeviceEvent since `since` that `predicate` accepts, waiting for it."""

        def found() -> Event | None:
            return next((e for e in self.events(since=since) if predicate(e)), None)

        try:
            return wait_until(found, timeout, "such an event")
        except AssertionError as timed_out:
            raise AssertionError(f"{timed_out}; saw {self.events(since=since)}") from None
