# SPDX-License-Identifier: LGPL-2.1-or-later
"""What clients see of a device: its `DeviceState`, made from what the engine knows of it.

Pure functions of the definition (if any), the kernel's device (if any) and the few things the
engine remembers besides (the attributes a transient device was created with, those it wrote,
the last error). A field clients should see is added to `mdevd.model.DeviceState` and filled
in here.
"""

from __future__ import annotations

from collections.abc import Container, Mapping
from dataclasses import replace

from mdevd.model import (
    NO_PENDING_CHANGES,
    ActiveDevice,
    Attributes,
    Definition,
    DeviceState,
    Parent,
    PendingChanges,
    Status,
)
from mdevd.owners import Owner


def device_state(
    uuid: str,
    definition: Definition | None,
    device: ActiveDevice | None,
    *,
    transient_attributes: Attributes,
    written_attributes: Attributes | None,
    last_error: str,
    parents: Mapping[str, Parent],
    owner: Owner | None = None,
) -> DeviceState | None:
    """The state of `uuid`; None when it is neither defined nor active.

    `transient_attributes`: what a device without definition was created with (the kernel
    cannot tell them back). `written_attributes`: what mdevd wrote to the running device, if it
    started it (None: unknown). `parents`: the parents present, by name. `owner`: who made or
    defined it through mdevd, if anyone.
    """
    if definition is None and device is None:
        return None
    if device is not None:
        parent, type_id = device.parent, device.type_id
    else:
        assert definition is not None
        parent, type_id = definition.parent, definition.type_id
    attributes = definition.attributes if definition is not None else transient_attributes
    return DeviceState(
        uuid=uuid,
        parent=parent,
        type_id=type_id,
        active=device is not None,
        defined=definition is not None,
        autostart=definition.autostart if definition else False,
        attributes=attributes,
        sysfs_path=device.sysfs_path if device else "",
        iommu_group=device.iommu_group if device else -1,
        config_file=definition.source_file if definition else "",
        last_error=last_error,
        status=status(definition, device, last_error, parents),
        pending=pending_changes(definition, device, written_attributes),
        backend=backend(parent, device, parents),
        placement=device.placement if device else (definition.placement if definition else ""),
        owner=owner.label if owner is not None else "",
        lifetime=owner.lifetime if owner is not None else "",
    )


def backend(parent: str, device: ActiveDevice | None, parents: Mapping[str, Parent]) -> str:
    """The device's backend; while it is not active, its parent's ("" if that is absent)."""
    if device is not None:
        return device.backend
    present = parents.get(parent)
    return present.backend if present is not None else ""


def status(
    definition: Definition | None,
    device: ActiveDevice | None,
    last_error: str,
    parents: Container[str],
) -> Status:
    """The first that holds: active, waiting (for its parent, to autostart), failed (its
    last start did), inactive. A device that waits for its parent shows `waiting` even if
    a start failed before: autostart tries again when the parent comes."""
    if device is not None:
        return Status.ACTIVE
    if definition is not None and definition.autostart and definition.parent not in parents:
        return Status.WAITING
    if last_error:
        return Status.FAILED
    return Status.INACTIVE


def pending_changes(
    definition: Definition | None, device: ActiveDevice | None, written: Attributes | None
) -> PendingChanges:
    """What of the definition the running device does not have yet. The attributes are
    compared only when mdevd knows what it wrote (`written`: it started the device itself)."""
    if definition is None or device is None:
        return NO_PENDING_CHANGES
    pending = PendingChanges(
        parent=definition.parent if definition.parent != device.parent else None,
        type_id=definition.type_id if definition.type_id != device.type_id else None,
        attributes=(
            definition.attributes
            if written is not None and written != definition.attributes
            else None
        ),
    )
    return pending if pending else NO_PENDING_CHANGES


def same_definition(a: Definition | None, b: Definition | None) -> bool:
    """Whether two definitions of a UUID say the same, wherever in their file they are: a
    reload reports a change only when this is False. Every field counts but the line, so a
    field added to `Definition` counts without a change here."""
    if a is None or b is None:
        return a is b
    return replace(a, source_line=0) == replace(b, source_line=0)
