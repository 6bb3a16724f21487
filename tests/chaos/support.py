# SPDX-License-Identifier: LGPL-2.1-or-later
"""What the chaos tests share: how long to run, and the emulated kernel's devices."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from mdevd.bus import names
from mdevd.replies import unwrap
from tests.support.sim import RunningSim

#: `MDEVD_CHAOS=long` (by hand): many more trials and rounds than CI can afford.
LONG = os.environ.get("MDEVD_CHAOS") == "long"


def _devices_dir(sim: RunningSim) -> Path:
    return sim.root / "bus" / "mdev" / "devices"


def kernel_devices(sim: RunningSim) -> set[str]:
    """The UUIDs of the mdevs in the emulated kernel."""
    directory = _devices_dir(sim)
    return {p.name for p in directory.iterdir()} if directory.exists() else set()


def remove_kernel_devices(sim: RunningSim) -> None:
    """Remove every mdev from the emulated kernel, as `echo 1 > remove` does."""
    for uuid in kernel_devices(sim):
        (_devices_dir(sim) / uuid / "remove").write_text("1")


async def managed_objects(address: str) -> dict[str, dict[str, dict[str, Any]]]:
    """The daemon's GetManagedObjects, its values unwrapped, on a connection of its own."""
    bus = await MessageBus(bus_address=address).connect()
    try:
        reply = await bus.call(
            Message(
                destination=names.BUS_NAME,
                path=names.ROOT_PATH,
                interface="org.freedesktop.DBus.ObjectManager",
                member="GetManagedObjects",
            )
        )
        assert reply is not None and reply.message_type is MessageType.METHOD_RETURN, reply
        objects: dict[str, dict[str, dict[str, Any]]] = unwrap(reply.body[0])
        return objects
    finally:
        bus.disconnect()


def devices(objects: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """The Device objects' properties."""
    return [i[names.DEVICE_INTERFACE] for i in objects.values() if names.DEVICE_INTERFACE in i]
