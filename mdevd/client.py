# SPDX-License-Identifier: LGPL-2.1-or-later
"""A small asyncio client for mdevd's D-Bus API, for `mdevdctl` and for managers to import.

It speaks only the public contract (`dbus/org.mdevd.Mdevd1.xml`): no private channel exists.
Every call has a timeout (dbus-fast has none of its own); running out of it raises
`CallTimeout`, which is the client's own verdict, never the daemon's `Error.Timeout`. Errors
from the daemon arrive as one subclass of `DaemonError` per contract error (`NotFound`,
`Exists`, ...), each keeping the full D-Bus name in `name`, so callers branch on classes or on
names, not on text. `SyncClient` is the same API for programs without an asyncio loop.
docs/client.md is the guide.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Coroutine,
    Iterator,
    Sequence,
)
from typing import Any, Concatenate, ParamSpec, TypeVar

from dbus_fast import BusType, DBusError, Message, MessageType, Variant
from dbus_fast.aio import MessageBus

# Every name of `mdevd.replies` (its `__all__`) is part of this module's API: managers import
# DeviceInfo, the error classes and the rest from here.
from mdevd import calls, wire
from mdevd.bus import marshalfix
from mdevd.bus.names import (
    BUS_NAME,
    DBUS_BUS_NAME,
    DBUS_INTERFACE,
    DBUS_PATH,
    DEVICES_PATH,
    MANAGER_INTERFACE,
    OBJECT_MANAGER_INTERFACE,
    PARENTS_PATH,
    PROPERTIES_INTERFACE,
    ROOT_PATH,
)
from mdevd.replies import *  # noqa: F403
from mdevd.replies import (
    DEFAULT_TIMEOUT,
    CallTimeout,
    ClientError,
    DaemonError,
    DeviceInfo,
    DeviceSummary,
    Event,
    ManagedObjects,
    ParentInfo,
    error_for,
    unwrap,
    uuid_of,
)

T = TypeVar("T")


def _fast(value: Any) -> Any:
    """mdevd.calls' variants (mdevd.wire's class) as dbus-fast's, at any depth."""
    if isinstance(value, wire.Variant):
        return Variant(value.signature, _fast(value.value))
    if isinstance(value, dict):
        return {k: _fast(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_fast(v) for v in value]
    return value


def _close_unwanted_fds(message: Message) -> None:
    """A message handler: fds that come with anything but a method's reply are closed (no
    signal or call mdevd's client receives carries one it wants); a reply's are the caller's
    (`Client.call`)."""
    if message.unix_fds and message.message_type != MessageType.METHOD_RETURN:
        wire.close_fds(message.unix_fds)


class _Bus(MessageBus):
    """dbus-fast's bus, with messages that carry non-ASCII strings written correctly on the
    versions that write them wrong (Debian 12's 1.84: `mdevd.bus.marshalfix`), and Unix fd
    passing negotiated (Device.Open), fds nobody asked for closed as they arrive."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("negotiate_unix_fd", True)
        super().__init__(*args, **kwargs)
        self.add_message_handler(_close_unwanted_fds)

    # dbus-fast's asyncio bus returns a future; its synchronous base class says None.
    def send(self, msg: Message) -> asyncio.Future[None]:  # type: ignore[override]
        sent: asyncio.Future[None] = super().send(marshalfix.fixed(msg))
        return sent


class Client:
    def __init__(self, bus: MessageBus, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.bus = bus
        self.timeout = timeout
        self.interactive = False

    @classmethod
    async def connect(cls, address: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> Client:
        """Connect to the system bus (or `address`; `DBUS_SYSTEM_BUS_ADDRESS` is honoured)."""
        try:
            async with asyncio.timeout(timeout):
                if address:
                    bus = await _Bus(bus_address=address).connect()
                else:
                    bus = await _Bus(bus_type=BusType.SYSTEM).connect()
        except (OSError, TimeoutError, DBusError) as exc:
            where = address or os.environ.get("DBUS_SYSTEM_BUS_ADDRESS", "the system bus")
            raise ClientError(f"cannot connect to {where}: {exc}") from exc
        return cls(bus, timeout)

    def close(self) -> None:
        self.bus.disconnect()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    async def call(
        self, path: str, interface: str, member: str, signature: str = "", body: Sequence[Any] = ()
    ) -> list[Any]:
        message = Message(
            destination=BUS_NAME,
            path=path,
            interface=interface,
            member=member,
            signature=signature,
            body=list(body),
        )
        try:
            async with asyncio.timeout(self.timeout):
                reply = await self.bus.call(message)
        except TimeoutError as exc:
            raise CallTimeout(member, self.timeout) from exc
        if reply is None:
            raise ClientError(f"{member}: no reply")
        if reply.message_type == MessageType.ERROR:
            text = reply.body[0] if reply.body else ""
            raise error_for(reply.error_name or "", str(text))
        fds = list(reply.unix_fds or ())
        if not fds and "h" not in reply.signature:
            return list(reply.body)
        # `h` values index the reply's fds: the caller gets the fds, the rest are closed.
        try:
            values, used = wire.with_fds(reply.signature, reply.body, fds)
        except wire.WireError as exc:
            wire.close_fds(fds)
            raise ClientError(f"{member}: {exc}") from exc
        wire.close_fds(fd for index, fd in enumerate(fds) if index not in used)
        return values

    async def run(self, request: calls.Request[T]) -> T:
        """Run one request of `mdevd.calls` on this connection: each call it yields is made,
        its reply sent back, the daemon's error raised inside it."""
        try:
            call = next(request)
            while True:
                # dbus-fast keeps whether it negotiated fd passing here in every version.
                if call.unix_fds and not getattr(self.bus, "_negotiate_unix_fd", False):
                    request.close()
                    raise ClientError(
                        f"{call.member}: this bus connection was made without Unix fd passing "
                        "(MessageBus(negotiate_unix_fd=True)); the reply would carry an fd"
                    )
                try:
                    reply = await self.call(
                        call.path, call.interface, call.member, call.signature, _fast(call.body)
                    )
                except DaemonError as error:
                    call = request.throw(error)
                else:
                    call = request.send(reply)
        except StopIteration as done:
            result: T = done.value
            return result

    # ---- reads -------------------------------------------------------------------------------

    async def managed_objects(self) -> ManagedObjects:
        return await self.run(calls.managed_objects())

    async def list_devices(self) -> list[DeviceInfo]:
        """Every device, from one ListDevices call (a third of GetManagedObjects' size), in no
        particular order."""
        return await self.run(calls.list_devices())

    async def list_device_summaries(self) -> list[DeviceSummary]:
        """What `mdevctl list` shows of every device (UUID, parent, type, active, defined,
        autostart, attributes), from one ListDeviceSummaries call, in no particular order."""
        return await self.run(calls.list_device_summaries())

    async def devices(self) -> list[DeviceInfo]:
        """Every device, sorted by parent and UUID."""
        return await self.run(calls.devices())

    async def parents(self) -> list[ParentInfo]:
        return await self.run(calls.parents())

    async def device(self, uuid: str) -> DeviceInfo:
        return await self.run(calls.device(uuid))

    async def get_device(self, uuid: str) -> str:
        return await self.run(calls.get_device(uuid))

    async def manager_properties(self) -> dict[str, Any]:
        return await self.run(calls.manager_properties())

    # ---- changes -----------------------------------------------------------------------------

    async def create_device(
        self,
        parent: str,
        type_id: str,
        *,
        uuid: str | None = None,
        attributes: Sequence[tuple[str, str]] = (),
        force: bool | None = None,
        placement: str = "",
        owner: str | None = None,
        lifetime: str | None = None,
    ) -> DeviceInfo:
        """Create a transient device; return it as it is once created (one more read).

        Pass `uuid` (uuid4) to make a retry after a `CallTimeout` safe: the same request
        again returns the same device instead of making a second one. `placement` puts it at
        one place on the parent (an nvidia-vf GPU's virtual function, by PCI address).
        `owner` records the caller's label (`nova`) as its owner; `lifetime` is `manual` (the
        default), `connection` (removed when this client's connection closes) or `unit:NAME`
        (removed when that systemd .service or .scope stops). Neither is sent unless given.
        """
        return await self.run(
            calls.create_device(
                parent, type_id, uuid=uuid, attributes=attributes, force=force,
                interactive=self.interactive, placement=placement, owner=owner,
                lifetime=lifetime,
            )
        )  # fmt: skip

    async def create_device_path(
        self,
        parent: str,
        type_id: str,
        *,
        uuid: str | None = None,
        attributes: Sequence[tuple[str, str]] = (),
        force: bool | None = None,
        placement: str = "",
        owner: str | None = None,
        lifetime: str | None = None,
    ) -> str:
        """As `create_device`, returning only the object path (what `create_device` returned
        before it returned the device): one round trip, for loops that need no more."""
        return await self.run(
            calls.create_device_path(
                parent, type_id, uuid=uuid, attributes=attributes, force=force,
                interactive=self.interactive, placement=placement, owner=owner,
                lifetime=lifetime,
            )
        )  # fmt: skip

    async def define_device(
        self,
        parent: str,
        type_id: str,
        *,
        uuid: str | None = None,
        attributes: Sequence[tuple[str, str]] = (),
        autostart: bool | None = None,
        start: bool | None = None,
        force: bool | None = None,
        placement: str = "",
        owner: str | None = None,
    ) -> str:
        """Persist a definition; its object path. `placement` pins the device to one place on
        its parent (an nvidia-vf GPU's virtual function, by PCI address; "" lets the backend
        choose, and is not sent, so a daemon without placements accepts the call). `owner`
        records the caller's label as its owner (not sent unless given)."""
        return await self.run(
            calls.define_device(
                parent, type_id, uuid=uuid, attributes=attributes, autostart=autostart,
                start=start, force=force, interactive=self.interactive, placement=placement,
                owner=owner,
            )
        )  # fmt: skip

    # `owner=` on start, stop, define, undefine and update: who the caller is. Naming
    # itself, a caller is refused (NotAuthorized) another owner's device whatever its rights.

    async def start(
        self, uuid: str, *, force: bool | None = None, owner: str | None = None
    ) -> None:
        await self.run(calls.start(uuid, force=force, interactive=self.interactive, owner=owner))

    async def stop(
        self,
        uuid: str,
        *,
        force: bool | None = None,
        caller_holds_group: bool | None = None,
        owner: str | None = None,
    ) -> None:
        await self.run(
            calls.stop(
                uuid, force=force, caller_holds_group=caller_holds_group,
                interactive=self.interactive, owner=owner,
            )
        )  # fmt: skip

    async def define(
        self,
        uuid: str,
        *,
        autostart: bool | None = None,
        force: bool | None = None,
        owner: str | None = None,
    ) -> None:
        await self.run(
            calls.define(
                uuid, autostart=autostart, force=force, interactive=self.interactive,
                owner=owner,
            )
        )  # fmt: skip

    async def undefine(
        self, uuid: str, *, force: bool | None = None, owner: str | None = None
    ) -> None:
        await self.run(calls.undefine(uuid, force=force, interactive=self.interactive, owner=owner))

    async def query_attributes(self, uuid: str) -> tuple[tuple[str, str], ...]:
        """The running device's attributes as its callout script reports them (mdevctl's
        `get attributes`), else as mdevd wrote them."""
        return await self.run(calls.query_attributes(uuid, interactive=self.interactive))

    async def update(
        self,
        uuid: str,
        *,
        type_id: str | None = None,
        autostart: bool | None = None,
        attributes: Sequence[tuple[str, str]] | None = None,
        live: bool | None = None,
        persist: bool | None = None,
        force: bool | None = None,
        owner: str | None = None,
    ) -> None:
        await self.run(
            calls.update(
                uuid, type_id=type_id, autostart=autostart, attributes=attributes, live=live,
                persist=persist, force=force, interactive=self.interactive, owner=owner,
            )
        )  # fmt: skip

    async def reload(self) -> None:
        await self.run(calls.reload(interactive=self.interactive))

    async def open_device(self, uuid: str, *, cdev: bool = False) -> int:
        """Device.Open: an open fd to the active device's VFIO group node (`/dev/vfio/N`), or
        with `cdev` its VFIO device node (`/dev/vfio/devices/vfioN`, kernels 6.6+). The fd is
        the caller's to use, pass on and close; while it is open the group is taken (`Busy`
        for the next Open, and for Stop). Needs polkit's org.mdevd.mdevd1.use-device."""
        return await self.run(calls.open_device(uuid, cdev=cdev, interactive=self.interactive))

    # ---- events ------------------------------------------------------------------------------

    async def events(
        self,
        ready: Callable[[], None] | None = None,
        *,
        property_changes: bool = False,
        daemon_restarts: bool = False,
    ) -> AsyncGenerator[Event, None]:
        """Every DeviceEvent and object added/removed, until the caller stops iterating.

        `property_changes` adds a "properties-changed" event per PropertiesChanged of a device
        or parent; `daemon_restarts` adds "daemon-stopped"/"daemon-started" when the daemon's
        bus name loses or gains an owner. Both are opt-in so that consumers written before them
        see the stream they expect. The subscription survives a daemon restart (the bus matches
        the name's current owner), so one iteration spans restarts.

        `ready` is called once the subscription is in place: whatever happens after that is
        seen. Losing the bus connection raises ClientError (a monitor must not wait forever).
        """
        queue: asyncio.Queue[Event] = asyncio.Queue()

        def on_message(message: Message) -> None:
            if message.message_type != MessageType.SIGNAL:
                return
            signal_path = message.path or ""
            if message.member == "DeviceEvent" and message.interface == MANAGER_INTERFACE:
                device, uuid, event, details = message.body
                queue.put_nowait(Event("device-event", device, uuid, event, unwrap(details)))
            elif message.interface == OBJECT_MANAGER_INTERFACE and message.path == ROOT_PATH:
                path = message.body[0]
                kind = "added" if message.member == "InterfacesAdded" else "removed"
                queue.put_nowait(Event(kind, path, uuid_of(path)))
            elif (
                property_changes
                and message.interface == PROPERTIES_INTERFACE
                and message.member == "PropertiesChanged"
                and signal_path.startswith((DEVICES_PATH + "/", PARENTS_PATH + "/"))
            ):
                _, changed, _ = message.body
                queue.put_nowait(
                    Event(
                        "properties-changed",
                        signal_path,
                        uuid_of(signal_path),
                        properties=unwrap(changed),
                    )
                )
            elif (
                daemon_restarts
                and message.sender == DBUS_BUS_NAME
                and message.member == "NameOwnerChanged"
                and message.body[0] == BUS_NAME
            ):
                _, old_owner, new_owner = message.body
                # A replacement (both set) is a stop and a start: report both.
                if old_owner:
                    queue.put_nowait(Event("daemon-stopped", "", details={"owner": ""}))
                if new_owner:
                    queue.put_nowait(Event("daemon-started", "", details={"owner": new_owner}))

        rules = [
            f"type='signal',sender='{BUS_NAME}',interface='{MANAGER_INTERFACE}',member='DeviceEvent'",
            f"type='signal',sender='{BUS_NAME}',interface='{OBJECT_MANAGER_INTERFACE}'",
        ]
        if property_changes:
            rules.append(
                f"type='signal',sender='{BUS_NAME}',interface='{PROPERTIES_INTERFACE}',"
                "member='PropertiesChanged'"
            )
        if daemon_restarts:
            rules.append(
                f"type='signal',sender='{DBUS_BUS_NAME}',interface='{DBUS_INTERFACE}',"
                f"member='NameOwnerChanged',arg0='{BUS_NAME}'"
            )
        self.bus.add_message_handler(on_message)
        # dbus-fast leaves wait_for_disconnect unannotated.
        disconnected = asyncio.ensure_future(self.bus.wait_for_disconnect())  # type: ignore[no-untyped-call]
        try:
            for rule in rules:
                await self._add_match(rule)
            if ready is not None:
                ready()
            while True:
                while not queue.empty():
                    yield queue.get_nowait()
                next_event = asyncio.ensure_future(queue.get())
                try:
                    await asyncio.wait(
                        {next_event, disconnected}, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    # Cancelled while waiting (a SyncClient's idle timeout, Ctrl-C): leave no
                    # getter behind on the queue.
                    if not next_event.done():
                        next_event.cancel()
                if next_event.done() and not next_event.cancelled():
                    yield next_event.result()
                    continue
                while not queue.empty():
                    yield queue.get_nowait()
                reason = "" if disconnected.cancelled() else disconnected.exception()
                raise ClientError(
                    f"lost the connection to the bus{f': {reason}' if reason else ''}"
                )
        finally:
            disconnected.cancel()
            self.bus.remove_message_handler(on_message)

    async def _add_match(self, rule: str) -> None:
        message = Message(
            destination=DBUS_BUS_NAME,
            path=DBUS_PATH,
            interface=DBUS_INTERFACE,
            member="AddMatch",
            signature="s",
            body=[rule],
        )
        async with asyncio.timeout(self.timeout):
            reply = await self.bus.call(message)
        if reply is not None and reply.message_type == MessageType.ERROR:
            raise ClientError(f"AddMatch failed: {reply.error_name}")


# ---- the synchronous facade ---------------------------------------------------------------------

P = ParamSpec("P")


def _blocking(
    method: Callable[Concatenate[Client, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[SyncClient, P], T]:
    """`Client.method` as a blocking method of SyncClient, with the same parameters."""

    def call(self: SyncClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._run(method(self.client, *args, **kwargs))

    call.__name__ = method.__name__
    call.__qualname__ = f"SyncClient.{method.__name__}"
    call.__doc__ = method.__doc__
    return call


class SyncClient:
    """The Client API for programs without an asyncio loop (Nova-style managers, scripts).

    dbus-fast is asyncio only, so the connection lives on a private loop in a daemon thread of
    its own; each method hands its call to that loop and blocks until the answer (or the
    client's timeout). The methods and exceptions are `Client`'s. Safe to use from several
    threads: calls are queued on the one connection. Close it (or use `with`) when done.
    """

    def __init__(self, address: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="mdevd-client", daemon=True
        )
        self._thread.start()
        try:
            self.client: Client = self._run(Client.connect(address, timeout))
        except BaseException:
            self._stop_loop()
            raise

    @property
    def interactive(self) -> bool:
        return self.client.interactive

    @interactive.setter
    def interactive(self, value: bool) -> None:
        self.client.interactive = value

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self._thread:
            coroutine.close()
            raise RuntimeError("SyncClient called from its own loop; use Client there")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def close(self) -> None:
        if self._loop.is_closed():
            return

        async def disconnect() -> None:
            self.client.close()

        self._run(disconnect())
        self._stop_loop()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    list_devices = _blocking(Client.list_devices)
    list_device_summaries = _blocking(Client.list_device_summaries)
    devices = _blocking(Client.devices)
    parents = _blocking(Client.parents)
    device = _blocking(Client.device)
    get_device = _blocking(Client.get_device)
    manager_properties = _blocking(Client.manager_properties)
    managed_objects = _blocking(Client.managed_objects)
    create_device = _blocking(Client.create_device)
    create_device_path = _blocking(Client.create_device_path)
    define_device = _blocking(Client.define_device)
    start = _blocking(Client.start)
    stop = _blocking(Client.stop)
    define = _blocking(Client.define)
    undefine = _blocking(Client.undefine)
    query_attributes = _blocking(Client.query_attributes)
    update = _blocking(Client.update)
    reload = _blocking(Client.reload)
    open_device = _blocking(Client.open_device)

    def events(
        self,
        ready: Callable[[], None] | None = None,
        *,
        property_changes: bool = False,
        daemon_restarts: bool = False,
        idle_timeout: float | None = None,
    ) -> Iterator[Event]:
        """`Client.events` as a blocking iterator. Events arriving between two `next()` are
        kept, not lost. `idle_timeout`: end the iteration (no exception) after that many
        seconds without an event; None waits for ever. `ready` runs on the client's thread."""
        stream = self.client.events(
            ready, property_changes=property_changes, daemon_restarts=daemon_restarts
        )
        try:
            while True:
                pending = asyncio.run_coroutine_threadsafe(
                    _next_or_idle(stream, idle_timeout), self._loop
                )
                try:
                    event = pending.result()
                except StopAsyncIteration:
                    return
                if event is None:
                    return
                yield event
        finally:
            if not self._loop.is_closed():
                asyncio.run_coroutine_threadsafe(stream.aclose(), self._loop).result()


async def _next_or_idle(stream: AsyncIterator[Event], idle_timeout: float | None) -> Event | None:
    """The next event, or None after `idle_timeout` seconds without one."""
    try:
        async with asyncio.timeout(idle_timeout):
            return await anext(stream)
    except TimeoutError:
        return None
