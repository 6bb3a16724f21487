# SPDX-License-Identifier: LGPL-2.1-or-later
"""What the event tests observe: the daemon's signals, its objects, and the emulated kernel.

`Recorder` subscribes to the daemon's signals on the bus (DeviceEvent, InterfacesAdded,
InterfacesRemoved) from a thread of its own before a test acts, so nothing the daemon sends is
missed. The kernel side is read from the emulated sysfs and its uevent log, which counts every
create the kernel saw (an `add` of the mdev device) and every success (its `bind`).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from mdevd.bus.names import (
    DEVICE_INTERFACE,
    DEVICES_PATH,
    MANAGER_INTERFACE,
    OBJECT_MANAGER_INTERFACE,
    PARENT_INTERFACE,
    ROOT_PATH,
)
from mdevd.client import Client, DeviceInfo
from mdevd.sim.control import UeventRecord
from tests.support.sim import RunningSim
from tests.support.waiting import wait_until

HERE = Path(__file__).resolve().parent
SCENARIO = HERE / "scenario.toml"
T = TypeVar("T")


def uuid_for(index: int, family: int = 0xA) -> str:
    """A readable, sortable UUID: the index is the last field, so UUID order is index order."""
    return f"{family:08x}-0000-4000-8000-{index:012x}"


# ---- definitions and configuration -------------------------------------------------------


@dataclass(frozen=True)
class Wanted:
    uuid: str
    parent: str
    type_id: str
    autostart: bool = True


def definitions_text(devices: Iterable[Wanted]) -> str:
    return "".join(
        f'[[device]]\nuuid = "{d.uuid}"\nparent = "{d.parent}"\ntype = "{d.type_id}"\n'
        f"autostart = {'true' if d.autostart else 'false'}\n\n"
        for d in devices
    )


def write_definitions(path: Path, devices: Iterable[Wanted]) -> Path:
    """Write a definitions file the way an admin would (not atomically: a plain write)."""
    path.write_text(definitions_text(devices))
    return path


def daemon_config(directory: Path, **daemon: object) -> Path:
    """A config file with `[daemon]` keys; autostart retries are short unless given."""
    daemon.setdefault("autostart_retries", 3)
    daemon.setdefault("autostart_retry_delay", 0.1)
    lines = ["[daemon]"]
    for key, value in daemon.items():
        shown = ("true" if value else "false") if isinstance(value, bool) else repr(value)
        lines.append(f"{key} = {shown}")
    path = directory / "mdevd.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


# ---- the daemon's signals -----------------------------------------------------------------


@dataclass(frozen=True)
class Signal:
    kind: str  # "device-event", "added", "removed"
    path: str
    uuid: str = ""
    event: str = ""
    details: dict[str, str] = field(default_factory=dict)


def _unwrap(value: Any) -> Any:
    return value.value if hasattr(value, "value") and hasattr(value, "signature") else value


class Recorder:
    """Records the daemon's signals from a background thread; use as a context manager."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._signals: list[Signal] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._failed: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)

    def __enter__(self) -> Recorder:
        self._thread.start()
        if not self._ready.wait(30) or self._failed is not None:
            raise AssertionError(f"the signal recorder did not start: {self._failed!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by __enter__ or seen as missing signals
            self._failed = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        bus = await MessageBus(bus_address=self.address).connect()
        bus.add_message_handler(self._on_message)
        for rule in (
            f"type='signal',interface='{MANAGER_INTERFACE}',member='DeviceEvent'",
            f"type='signal',interface='{OBJECT_MANAGER_INTERFACE}',path='{ROOT_PATH}'",
        ):
            reply = await bus.call(
                Message(
                    destination="org.freedesktop.DBus",
                    path="/org/freedesktop/DBus",
                    interface="org.freedesktop.DBus",
                    member="AddMatch",
                    signature="s",
                    body=[rule],
                )
            )
            assert reply is not None and reply.message_type == MessageType.METHOD_RETURN
        self._ready.set()
        await self._stop.wait()
        bus.disconnect()

    def _on_message(self, message: Message) -> None:
        if message.message_type != MessageType.SIGNAL:
            return
        signal: Signal | None = None
        if message.member == "DeviceEvent" and message.interface == MANAGER_INTERFACE:
            path, uuid, event, details = message.body
            plain = {key: str(_unwrap(value)) for key, value in details.items()}
            signal = Signal("device-event", path, uuid, event, plain)
        elif message.interface == OBJECT_MANAGER_INTERFACE and message.member in (
            "InterfacesAdded",
            "InterfacesRemoved",
        ):
            path = message.body[0]
            uuid = ""
            if path.startswith(DEVICES_PATH + "/"):
                uuid = path.rsplit("/", 1)[-1].replace("_", "-")
            kind = "added" if message.member == "InterfacesAdded" else "removed"
            signal = Signal(kind, path, uuid)
        if signal is not None:
            with self._lock:
                self._signals.append(signal)

    def signals(self) -> list[Signal]:
        with self._lock:
            return list(self._signals)

    def events(
        self, uuid: str | None = None, event: str | None = None, reason: str | None = None
    ) -> list[Signal]:
        """The DeviceEvents so far, optionally only those of a device, kind or reason."""
        return [
            s
            for s in self.signals()
            if s.kind == "device-event"
            and (uuid is None or s.uuid == uuid)
            and (event is None or s.event == event)
            and (reason is None or s.details.get("reason") == reason)
        ]

    def wait_for_events(
        self,
        count: int,
        uuid: str | None = None,
        event: str | None = None,
        reason: str | None = None,
        timeout: float = 30,
    ) -> list[Signal]:
        def enough() -> list[Signal] | None:
            found = self.events(uuid, event, reason)
            return found if len(found) >= count else None

        return wait_until(
            enough,
            what=f"{count} {event or 'any'} event(s) of {uuid or 'any device'} (reason {reason}):"
            f" have {self.events(uuid)}",
            timeout=timeout,
        )


# ---- the daemon's objects -----------------------------------------------------------------


@dataclass(frozen=True)
class Objects:
    devices: dict[str, DeviceInfo]
    parents: dict[str, dict[str, Any]]


def objects(address: str) -> Objects:
    """What GetManagedObjects shows now."""

    async def read() -> Objects:
        client = await Client.connect(address, timeout=30)
        try:
            managed = await client.managed_objects()
        finally:
            client.close()
        devices = {}
        parents = {}
        for path, interfaces in managed.items():
            if DEVICE_INTERFACE in interfaces:
                info = DeviceInfo.from_properties(path, interfaces[DEVICE_INTERFACE])
                devices[info.uuid] = info
            if PARENT_INTERFACE in interfaces:
                parent = dict(interfaces[PARENT_INTERFACE])
                parents[parent["Name"]] = parent
        return Objects(devices, parents)

    return asyncio.run(read())


def call(address: str, method: str, *args: Any, **kwargs: Any) -> Any:
    """One `mdevd.client.Client` method against the daemon (a new connection each time)."""

    async def run() -> Any:
        client = await Client.connect(address, timeout=60)
        try:
            return await getattr(client, method)(*args, **kwargs)
        finally:
            client.close()

    return asyncio.run(run())


# ---- the emulated kernel ------------------------------------------------------------------


def kernel_devices(sim: RunningSim) -> dict[str, str]:
    """UUID -> parent of every mdev the kernel shows in bus/mdev/devices."""
    base = sim.root / "bus" / "mdev" / "devices"
    found = {}
    for uuid in os.listdir(base):
        try:
            found[uuid] = Path(os.path.realpath(base / uuid, strict=True)).parent.name
        except OSError:
            continue  # removed while listing
    return found


def kernel_parents(sim: RunningSim) -> set[str]:
    return set(os.listdir(sim.root / "class" / "mdev_bus"))


def agreement(sim: RunningSim, address: str) -> str | None:
    """None when the daemon's objects show exactly what the kernel has; else the difference."""
    kernel = kernel_devices(sim)
    shown = objects(address)
    active = {u: d.parent for u, d in shown.devices.items() if d.active}
    problems = []
    if active != kernel:
        problems.append(f"active objects {sorted(active)} != kernel devices {sorted(kernel)}")
    if set(shown.parents) != kernel_parents(sim):
        problems.append(f"parent objects {sorted(shown.parents)} != {sorted(kernel_parents(sim))}")
    return "; ".join(problems) or None


def mdev_events(records: Sequence[UeventRecord], uuid: str, action: str) -> list[UeventRecord]:
    return [
        r
        for r in records
        if r.subsystem == "mdev" and r.action == action and r.devpath.endswith("/" + uuid)
    ]


def attempts(sim: RunningSim, uuid: str) -> int:
    """How many times anyone asked the kernel to create `uuid` (each makes an `add`)."""
    return len(mdev_events(sim.control.uevents(), uuid, "add"))


def registrations(
    records: Sequence[UeventRecord], devpath: str, *, mdev_state: bool = True
) -> list[list[UeventRecord]]:
    """The log cut at each registration of the parent at `devpath` (`/devices/...`): the
    events of the registration present at mount time first, then one list per registration.
    A registration starts with `change` MDEV_STATE=registered, or on a kernel without that
    event (`mdev_state` False) with the parent's `add` or `bind`."""
    segments: list[list[UeventRecord]] = [[]]
    for record in records:
        if mdev_state:
            starts = record.properties.get("MDEV_STATE") == "registered"
        else:
            starts = record.action in ("add", "bind")
        if record.devpath == devpath and starts:
            segments.append([])
        segments[-1].append(record)
    return segments
