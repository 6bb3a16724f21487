# SPDX-License-Identifier: LGPL-2.1-or-later
"""Plain data shared by the layers: what the kernel shows and what the store holds.

Immutable on purpose: a snapshot read from sysfs or a file never changes under its reader.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Ordered (name, value) pairs, written to a device in this order after it is created.
Attributes = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class MdevType:
    """One entry of a parent's `mdev_supported_types`."""

    type_id: str
    name: str
    description: str
    device_api: str
    available_instances: int


@dataclass(frozen=True, slots=True)
class Parent:
    """A device registered with the mdev core (`/sys/class/mdev_bus/<name>`)."""

    name: str
    sysfs_path: str
    subsystem: str
    types: dict[str, MdevType] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ActiveDevice:
    """An mdev present in the kernel (`/sys/bus/mdev/devices/<uuid>`)."""

    uuid: str
    parent: str
    type_id: str
    sysfs_path: str
    #: -1 while the kernel has not linked the device to a group (or never will).
    iommu_group: int


@dataclass(frozen=True, slots=True)
class Definition:
    """A persisted device definition, as the store loaded it."""

    uuid: str
    parent: str
    type_id: str
    autostart: bool = False
    attributes: Attributes = ()
    #: Where it came from: the file, and the line of its `[[device]]` table when known.
    source_file: str = ""
    source_line: int = 0


@dataclass(frozen=True, slots=True)
class DeviceState:
    """What mdevd knows of one UUID: its definition, its kernel presence, or both.

    This is what the D-Bus Device object shows; the engine produces a new one on every change.
    """

    uuid: str
    parent: str
    type_id: str
    active: bool
    defined: bool
    autostart: bool
    attributes: Attributes
    sysfs_path: str
    iommu_group: int
    config_file: str
    last_error: str
