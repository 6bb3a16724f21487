# SPDX-License-Identifier: LGPL-2.1-or-later
"""The guest kernel's mdev state read straight from /sys, independently of mdevd's own code.

Checks compare what mdevd says (over D-Bus) with what these functions read, so a bug in
`mdevd.kernel` cannot hide itself. `create`/`remove` act behind the daemon's back, the way an
administrator's `echo UUID > create` or another tool would.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

SYSFS = Path("/sys")
DEVICES = SYSFS / "bus" / "mdev" / "devices"
PARENTS = SYSFS / "class" / "mdev_bus"


@dataclass(frozen=True, slots=True)
class KernelDevice:
    uuid: str
    parent: str
    type_id: str
    iommu_group: int


def devices() -> dict[str, KernelDevice]:
    """Every mdev device the kernel has, by UUID."""
    found: dict[str, KernelDevice] = {}
    try:
        names = os.listdir(DEVICES)
    except FileNotFoundError:  # the mdev module is not loaded
        return found
    for uuid in names:
        device = DEVICES / uuid
        try:
            parent = device.resolve().parent.name
            type_id = Path(os.readlink(device / "mdev_type")).name
            group = int(Path(os.readlink(device / "iommu_group")).name)
        except OSError:  # removed while we looked
            continue
        found[uuid] = KernelDevice(uuid, parent, type_id, group)
    return found


def parents() -> list[str]:
    try:
        return sorted(os.listdir(PARENTS))
    except FileNotFoundError:
        return []


def type_dir(parent: str, type_id: str) -> Path:
    return PARENTS / parent / "mdev_supported_types" / type_id


def available(parent: str, type_id: str) -> int:
    return int((type_dir(parent, type_id) / "available_instances").read_text())


def create(parent: str, type_id: str, uuid: str) -> None:
    """`echo UUID > create`; raises OSError with the kernel's errno."""
    fd = os.open(type_dir(parent, type_id) / "create", os.O_WRONLY)
    try:
        os.write(fd, uuid.encode())
    finally:
        os.close(fd)


def remove(uuid: str) -> None:
    (DEVICES / uuid / "remove").write_text("1")


def vfio_node(group: int) -> Path:
    return Path("/dev/vfio") / str(group)
