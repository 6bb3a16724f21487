# SPDX-License-Identifier: LGPL-2.1-or-later
"""Plain data shared by the layers: what the kernel shows and what the store holds.

Immutable on purpose: a snapshot read from sysfs or a file never changes under its reader.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

#: Ordered (name, value) pairs, written to a device in this order after it is created.
Attributes = tuple[tuple[str, str], ...]

#: The kernel interfaces a device can be on (`Backend` on D-Bus): the mdev core, and NVIDIA's
#: vendor-specific VFIO, where a vGPU is a type written into an SR-IOV virtual function.
BACKEND_MDEV = "mdev"
BACKEND_NVIDIA_VF = "nvidia-vf"


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
    """A device that devices are created on: one registered with the mdev core
    (`/sys/class/mdev_bus/<name>`), or a GPU whose SR-IOV virtual functions take vGPU types
    (`nvidia-vf`: the physical function, its types those its free VFs can take)."""

    name: str
    sysfs_path: str
    subsystem: str
    types: dict[str, MdevType] = field(default_factory=dict)
    backend: str = BACKEND_MDEV


@dataclass(frozen=True, slots=True)
class ActiveDevice:
    """An mdev present in the kernel (`/sys/bus/mdev/devices/<uuid>`)."""

    uuid: str
    parent: str
    type_id: str
    sysfs_path: str
    #: -1 while the kernel has not linked the device to a group (or never will).
    iommu_group: int
    backend: str = BACKEND_MDEV
    #: Where on the parent the device is, when the backend places it: the virtual function's
    #: PCI address for `nvidia-vf`; "" for mdev.
    placement: str = ""


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
    #: Pins the device to one place on its parent (an `nvidia-vf` parent's virtual function,
    #: by PCI address); "" lets the backend choose.
    placement: str = ""


class Status(enum.StrEnum):
    """One word for where a device stands, the first of these that holds."""

    #: In the kernel.
    ACTIVE = "active"
    #: Defined with autostart, not active, its parent absent: it starts when the parent comes.
    WAITING = "waiting"
    #: Not active, and its last start (by a client or by autostart) failed: LastError says why.
    FAILED = "failed"
    #: Anything else: defined, not running, nothing wrong.
    INACTIVE = "inactive"


#: `PendingChanges.apply`: what makes the running device what its definition says.
APPLY_RESTART = "restart"
APPLY_UPDATE_LIVE = "update-live"


@dataclass(frozen=True, slots=True)
class PendingChanges:
    """Where a running device's definition differs from the device: the defined values of
    what differs (None: that part does not differ, or is not known to)."""

    parent: str | None = None
    type_id: str | None = None
    #: The defined attributes, when they differ from those mdevd wrote at the device's start.
    attributes: Attributes | None = None

    def __bool__(self) -> bool:
        return self.parent is not None or self.type_id is not None or self.attributes is not None

    @property
    def apply(self) -> str:
        """`restart` when the parent or type differ (Stop, then Start), else `update-live`
        (an Update of the attributes with live=true); "" when nothing differs."""
        if self.parent is not None or self.type_id is not None:
            return APPLY_RESTART
        return APPLY_UPDATE_LIVE if self.attributes is not None else ""


NO_PENDING_CHANGES = PendingChanges()


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
    status: Status = Status.INACTIVE
    #: Empty unless the device is both defined and active and the two differ.
    pending: PendingChanges = NO_PENDING_CHANGES
    #: The backend of the device, or of its parent while it is not active ("" if unknown).
    backend: str = ""
    #: The running device's place on its parent (`ActiveDevice.placement`), else the defined one.
    placement: str = ""
    #: Who made or defined it through mdevd (`mdevd.owners.Owner.label`); "" for none.
    owner: str = ""
    #: How long a transient device lives: `manual`, `connection`, `unit:<name>`; "" unowned.
    lifetime: str = ""


@dataclass(frozen=True, slots=True)
class UeventMeaning:
    """What one uevent calls for, as a backend reads it. The engine acts on it; a backend
    never acts on an event itself (the engine's ledger knows what its own operations did)."""

    #: Rescan the whole kernel (a parent may have come, gone or changed).
    rescan: bool = False
    #: A device's own event (`action` on UUID `device`): the engine reads that device back,
    #: unless its own operation explains the event.
    device: str = ""
    action: str = ""
    #: A device (by devpath) that may have just become a parent: probe it (`probe_parent`),
    #: and rescan if it is one. Probing reads sysfs, which an event handler must not do.
    probe: str = ""
    #: A parent's name that may have just gone (`remove`, `unbind`): rescan if it is known.
    parent_gone: str = ""

    def __or__(self, other: UeventMeaning) -> UeventMeaning:
        """Both meanings at once (two backends read the same event)."""
        return UeventMeaning(
            rescan=self.rescan or other.rescan,
            device=self.device or other.device,
            action=self.action if self.device else other.action,
            probe=self.probe or other.probe,
            parent_gone=self.parent_gone or other.parent_gone,
        )


#: An event that concerns nothing the engine holds.
NOTHING = UeventMeaning()
