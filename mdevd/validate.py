# SPDX-License-Identifier: LGPL-2.1-or-later
"""Validation of every name that becomes a sysfs path component.

mdevd runs as root and joins parent, type, UUID and attribute names onto paths under /sys.
Each of them passes through here first, so that nothing a caller or a config file says can
reach outside the directory it belongs in (mdevctl joins attribute names unchecked: `../x`
escapes the device directory).
"""

from __future__ import annotations

import re

from mdevd.errors import AttributeRejected, InvalidArgument, InvalidName, InvalidUUID

#: Linux NAME_MAX. sysfs names are far shorter in practice; this is the hard ceiling.
MAX_NAME_LENGTH = 255

#: Files in a device directory that belong to the driver core, not to the device's driver.
#: Writing them as "attributes" would remove the device or forge uevents behind the engine.
#: (mdevd.kernel refuses them at the write; every definition refuses them before that.)
RESERVED_DEVICE_FILES = frozenset({"remove", "uevent", "mdev_type", "iommu_group", "driver"})

#: Attribute values are written with one write(2); sysfs store() gets at most a page.
MAX_ATTRIBUTE_VALUE_LENGTH = 4096

_UUID_RE = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)

# Printable ASCII without '/' and whitespace. Kernel device, type and attribute names never
# contain anything else (PCI addresses, CCW bus ids, `matrix`, `nvidia-558`, `assign_adapter`),
# and refusing the rest keeps control characters out of logs and object paths.
_NAME_RE = re.compile(r"[!-.0-~]+")


def _check_component(kind: str, name: object) -> str:
    if not isinstance(name, str):
        raise InvalidName(f"{kind} name must be a string, not {type(name).__name__}")
    shown = repr(name[:64])
    if not name:
        raise InvalidName(f"{kind} name is empty")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidName(f"{kind} name {shown}... is longer than {MAX_NAME_LENGTH} characters")
    if "\0" in name:
        raise InvalidName(f"{kind} name {shown} contains a NUL character")
    if "/" in name:
        raise InvalidName(f"{kind} name {shown} contains '/'")
    if name in (".", ".."):
        raise InvalidName(f"{kind} name {shown} is not a name")
    if not _NAME_RE.fullmatch(name):
        raise InvalidName(f"{kind} name {shown} contains whitespace or non-ASCII characters")
    return name


def parent_name(name: object) -> str:
    """A parent device's sysfs name (`0000:65:00.0`, `0.0.0052`, `matrix`, `mtty`)."""
    return _check_component("parent", name)


def type_id(name: object) -> str:
    """An mdev type id (`nvidia-558`, `mtty-2`, `vfio_ap-passthrough`)."""
    return _check_component("type", name)


def attribute_name(name: object) -> str:
    """A device attribute file name (`assign_adapter`). Dot-files are refused: sysfs has none."""
    checked = _check_component("attribute", name)
    if checked.startswith("."):
        raise InvalidName(f"attribute name {checked!r} starts with '.'")
    return checked


def device_attribute_name(name: object) -> str:
    """An attribute name that may be written to a device: `attribute_name`, and not one of
    the driver core's files. The same rule for every path that takes attributes, so that a
    definition never holds what creating its device would refuse. Raises `InvalidName` or,
    for a driver-core file, `AttributeRejected` (what the kernel write answers for it)."""
    checked = attribute_name(name)
    if checked in RESERVED_DEVICE_FILES:
        raise AttributeRejected(f"{checked!r} is a driver-core file, not a device attribute")
    return checked


def attribute_value(value: object, name: str = "") -> str:
    """An attribute value: a string, one write's worth, no NUL (sysfs would truncate at it)."""
    label = f"attribute {name!r}" if name else "attribute"
    if not isinstance(value, str):
        raise InvalidName(f"{label} value must be a string, not {type(value).__name__}")
    if "\0" in value:
        raise InvalidName(f"{label} value contains a NUL character")
    try:
        encoded = value.encode()
    except UnicodeEncodeError:  # lone surrogates: no bytes could be written for them
        raise InvalidName(f"{label} value is not valid Unicode text") from None
    if len(encoded) > MAX_ATTRIBUTE_VALUE_LENGTH:
        raise InvalidName(f"{label} value is longer than {MAX_ATTRIBUTE_VALUE_LENGTH} bytes")
    return value


def uuid(value: object) -> str:
    """A UUID in the canonical 8-4-4-4-12 form, returned lower-case (how the kernel names it)."""
    if not isinstance(value, str):
        raise InvalidUUID(f"UUID must be a string, not {type(value).__name__}")
    if not _UUID_RE.fullmatch(value):
        raise InvalidUUID(f"{value[:64]!r} is not a UUID (expected 8-4-4-4-12 hexadecimal digits)")
    return value.lower()


def is_uuid(value: str) -> bool:
    return _UUID_RE.fullmatch(value) is not None


# domain:bus:device.function, as the kernel names PCI devices (lower-case hexadecimal).
_PCI_ADDRESS_RE = re.compile(r"[0-9a-f]{4}:[0-9a-f]{2}:[0-1][0-9a-f]\.[0-7]")


def pci_address(value: object, kind: str = "placement") -> str:
    """A PCI address (`0000:3d:00.4`): an `nvidia-vf` placement (a virtual function). Returned
    lower-case; "" stays "" (no placement). Nothing else can be one: it becomes a path."""
    if not isinstance(value, str):
        raise InvalidName(f"{kind} must be a string, not {type(value).__name__}")
    if value == "":
        return value
    lowered = value.lower()
    if not _PCI_ADDRESS_RE.fullmatch(lowered):
        raise InvalidName(
            f"{kind} {value[:64]!r} is not a PCI address (expected domain:bus:device.function,"
            " e.g. 0000:3d:00.4)"
        )
    return lowered


def definition_fields(
    uuid_value: object,
    parent: object,
    type_value: object,
    placement: object,
    autostart: object,
    attributes: object,
) -> tuple[str, str, str, str, tuple[tuple[str, str], ...]]:
    """A device definition's fields checked in that order, and its UUID, parent, type,
    placement and attributes normalized: `mdevd.definitions.check_definition`'s checks, on the
    fields alone, so that the mdevctl front end checks a `--jsonfile` without importing the
    definitions' types (`mdevd.mdevctl_config`).

    Raises `InvalidArgument` (or its subclasses `InvalidUUID`, `InvalidName`) naming the problem,
    `AttributeRejected` for an attribute named as a driver-core file (`remove`, `uevent`...).
    """
    checked_uuid = uuid(uuid_value)
    checked_parent = parent_name(parent)
    checked_type = type_id(type_value)
    checked_placement = pci_address(placement)
    if not isinstance(autostart, bool):
        raise InvalidArgument(f"device {checked_uuid}: autostart must be a boolean")
    if not isinstance(attributes, tuple | list):
        raise InvalidArgument(
            f"device {checked_uuid}: attributes must be a sequence of (name, value)"
        )
    checked: list[tuple[str, str]] = []
    for pair in attributes:
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise InvalidArgument(
                f"device {checked_uuid}: each attribute must be a (name, value) pair"
            )
        try:
            name = device_attribute_name(pair[0])
        except AttributeRejected as e:
            raise AttributeRejected(f"device {checked_uuid}: {e.message}") from None
        value = pair[1]
        if isinstance(value, str) and not _encodable(value):
            # Lone surrogates cannot be written to a file or a sysfs attribute.
            raise InvalidArgument(
                f"device {checked_uuid}: attribute {name!r} value is not valid Unicode"
            )
        checked.append((name, attribute_value(value, name)))
    return checked_uuid, checked_parent, checked_type, checked_placement, tuple(checked)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
