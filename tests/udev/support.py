# SPDX-License-Identifier: LGPL-2.1-or-later
"""What the event tests observe: the daemon's objects and the emulated kernel.

The daemon's signals are recorded by `tests.support.signals.SignalRecorder` (the `world`
fixture starts one before the daemon). The kernel side is read from the emulated sysfs and its
uevent log, which counts every create the kernel saw (an `add` of the mdev device) and every
success (its `bind`).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from mdevd.bus.names import (
    DEVICE_INTERFACE,
    PARENT_INTERFACE,
)
from mdevd.client import Client, DeviceInfo
from mdevd.sim.control import UeventRecord
from tests.support.sim import RunningSim

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
