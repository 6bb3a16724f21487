# SPDX-License-Identifier: LGPL-2.1-or-later
"""Helpers of the emulated kernel's tests: single writes with their errno, common paths."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pyudev

UUID_A = "8d9f7a3c-1b2e-4c5d-9e8f-0a1b2c3d4e5f"
UUID_B = "5b0c7e5e-6f0b-4b8e-a8a3-2a7f1e0d9c11"
UUID_C = "c4f0a3e2-9d1b-4a6c-8e7f-3b2a1c0d9e8f"


def receive(monitor: pyudev.Monitor, count: int, timeout: float = 5.0) -> list[pyudev.Device]:
    """The next `count` events, or fewer if `timeout` passes first."""
    events: list[pyudev.Device] = []
    deadline = time.monotonic() + timeout
    while len(events) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        device = monitor.poll(timeout=remaining)
        if device is not None:
            events.append(device)
    return events


def type_dir(root: Path, parent: str, type_id: str) -> Path:
    return root / "class/mdev_bus" / parent / "mdev_supported_types" / type_id


def write(path: Path, data: bytes | str) -> int:
    """One write(2), as the kernel's store() sees it; raises OSError with the errno."""
    raw = data.encode() if isinstance(data, str) else data
    fd = os.open(path, os.O_WRONLY)
    try:
        return os.write(fd, raw)
    finally:
        os.close(fd)


def create(root: Path, parent: str, type_id: str, uuid: str) -> None:
    write(type_dir(root, parent, type_id) / "create", uuid)


def remove(root: Path, uuid: str) -> None:
    write(root / "bus/mdev/devices" / uuid / "remove", "1")


def available(root: Path, parent: str, type_id: str) -> int:
    return int((type_dir(root, parent, type_id) / "available_instances").read_text())


def write_errno(path: Path, data: bytes | str) -> int | None:
    """The errno a single write fails with, or None when it succeeds."""
    try:
        write(path, data)
    except OSError as exc:
        return exc.errno
    return None
