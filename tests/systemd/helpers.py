# SPDX-License-Identifier: LGPL-2.1-or-later
"""Small things the service-manager tests share."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tests.support.daemon import DaemonProcess
from tests.support.sim import RunningSim
from tests.systemd.notify import Message

DEVICE_A = "3b3b4a8e-8f5c-4b43-9e0e-3f4d1c2b7a01"
DEVICE_B = "6f1d2c3b-4a59-4e6f-8a7b-9c0d1e2f3a02"
DEVICE_C = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c03"


def define(directory: Path, uuid: str, *, autostart: bool = True, type_id: str = "mtty-1") -> Path:
    """Write a definition file as an admin would."""
    path = directory / f"{uuid}.toml"
    path.write_text(
        f'[[device]]\nuuid = "{uuid}"\nparent = "mtty"\ntype = "{type_id}"\n'
        f"autostart = {'true' if autostart else 'false'}\n"
    )
    return path


def is_ready(message: Message) -> bool:
    return message.get("READY") == "1"


def is_reloading(message: Message) -> bool:
    return message.get("RELOADING") == "1"


def status_is(text: str) -> Callable[[Message], bool]:
    return lambda message: message.get("STATUS") == text


def in_kernel(sim: RunningSim, uuid: str) -> bool:
    return (sim.root / "bus" / "mdev" / "devices" / uuid).exists()


def device_adds(sim: RunningSim, uuid: str) -> int:
    """How many times the kernel created `uuid` (its `add` uevents)."""
    return sum(
        1
        for event in sim.control.uevents()
        if event.action == "add" and event.subsystem == "mdev" and event.devpath.endswith(uuid)
    )


def shown(daemon: DaemonProcess, uuid: str) -> dict[str, object]:
    """`mdevdctl show UUID --json`: what a client sees of the device."""
    result = daemon.ctl("show", uuid, "--json")
    assert result.returncode == 0, result.stderr
    data: dict[str, object] = json.loads(result.stdout)
    return data
