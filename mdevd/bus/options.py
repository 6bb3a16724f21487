# SPDX-License-Identifier: LGPL-2.1-or-later
"""Checking the `a{sv}` dictionaries every method takes, before anything else happens.

An unknown key is `InvalidArgument`, so a typo fails loudly instead of being ignored; a value of
the wrong D-Bus type is `InvalidArgument` naming the key and both signatures. The handlers run
these checks before authorization and before any I/O, so a malformed call costs the daemon no
more than reading it. Messages quote at most the first `SHOWN_LENGTH` characters of what the
caller sent: an error reply must not echo megabytes back (or into the log).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dbus_fast import Variant

from mdevd import owners, validate
from mdevd.errors import InvalidArgument, InvalidName
from mdevd.model import Attributes

#: Bounds on what one call may carry; sysfs devices have a handful of attributes.
MAX_ATTRIBUTES = 256

AUTH_INTERACTIVE = "auth.interactive"
#: Go ahead even if a callout script's `pre` vetoes (mdevctl's `--force`).
FORCE = "force"
#: Stop: the caller itself holds the device's vfio group open (libvirt does while it asks for
#: a removal, so that no VM can take the device meanwhile): the open group is not a VM's.
CALLER_HOLDS_GROUP = "caller_holds_group"

#: CreateDevice, DefineDevice: pin the device to one place on its parent (`nvidia-vf`: a VF).
PLACEMENT = "placement"

#: Device.Open: which VFIO node to open, `group` (default) or `cdev`.
NODE = "node"
NODE_GROUP = "group"
NODE_CDEV = "cdev"

#: CreateDevice, DefineDevice: who the caller is, as the device's owner (`mdevd.owners`);
#: the device methods that change a device: who the caller says it is.
OWNER = "owner"
#: CreateDevice: how long the transient device lives (`manual`, `connection`, `unit:<name>`).
LIFETIME = "lifetime"

#: How much of a caller's string an error message quotes.
SHOWN_LENGTH = 64


def shown(text: str) -> str:
    """`text` quoted for an error message, cut to SHOWN_LENGTH characters."""
    if len(text) > SHOWN_LENGTH:
        return repr(text[:SHOWN_LENGTH]) + "..."
    return repr(text)


def check_options(
    options: Mapping[str, Any], allowed: Mapping[str, str], method: str
) -> dict[str, Any]:
    """Unwrap `options` into plain values, allowing only `allowed` (key -> signature)."""
    if not isinstance(options, Mapping):
        raise InvalidArgument(f"{method}: options must be a{{sv}}")
    values: dict[str, Any] = {}
    for key, variant in options.items():
        signature = allowed.get(key)
        if signature is None:
            known = ", ".join(sorted(allowed)) or "none"
            raise InvalidArgument(f"{method}: unknown option {shown(key)} (known: {known})")
        if not isinstance(variant, Variant):
            raise InvalidArgument(f"{method}: option {key!r} is not a variant")
        if variant.signature != signature:
            raise InvalidArgument(
                f"{method}: option {key!r} must have type {signature!r}, "
                f"not {shown(variant.signature)}"
            )
        values[key] = variant.value
    return values


def attributes(value: Any, method: str) -> Attributes:
    """An `a(ss)` value as ordered (name, value) pairs, each name and value validated."""
    if not isinstance(value, list | tuple):
        raise InvalidArgument(f"{method}: attributes must be a(ss)")
    if len(value) > MAX_ATTRIBUTES:
        raise InvalidArgument(f"{method}: more than {MAX_ATTRIBUTES} attributes")
    pairs: list[tuple[str, str]] = []
    for pair in value:
        if not isinstance(pair, list | tuple) or len(pair) != 2:
            raise InvalidArgument(f"{method}: attributes must be a(ss)")
        name, text = pair
        pairs.append((validate.attribute_name(name), validate.attribute_value(text, name)))
    return tuple(pairs)


def placement(values: Mapping[str, Any], method: str) -> str:
    """The `placement` option: a PCI address (an `nvidia-vf` virtual function), "" when absent.
    Anything else is `InvalidName` (an `InvalidArgument`), before any work is done."""
    try:
        return validate.pci_address(values.get(PLACEMENT, ""))
    except InvalidName as e:
        raise InvalidName(f"{method}: {e.message}") from None


def node_is_cdev(values: Mapping[str, Any], method: str) -> bool:
    """The `node` option: True for `cdev`, False for `group` or when absent; anything else is
    `InvalidArgument`."""
    node = values.get(NODE, NODE_GROUP)
    if node not in (NODE_GROUP, NODE_CDEV):
        raise InvalidArgument(
            f"{method}: option 'node' must be {NODE_GROUP!r} or {NODE_CDEV!r}, not {shown(node)}"
        )
    return bool(node == NODE_CDEV)


def interactive(values: Mapping[str, Any]) -> bool:
    return bool(values.get(AUTH_INTERACTIVE, False))


def interactive_requested(options: Any) -> bool:
    """Whether a method's trailing `a{sv}`, as the caller sent it, asks for interactive
    authentication (`auth.interactive=true`). Anything else there, of any type, does not."""
    if not isinstance(options, Mapping):
        return False
    variant = options.get(AUTH_INTERACTIVE)
    return isinstance(variant, Variant) and variant.signature == "b" and bool(variant.value)


def force(values: Mapping[str, Any]) -> bool:
    return bool(values.get(FORCE, False))


def caller_holds_group(values: Mapping[str, Any]) -> bool:
    return bool(values.get(CALLER_HOLDS_GROUP, False))


def attributes_variant(pairs: Attributes) -> Variant:
    return Variant("a(ss)", [list(pair) for pair in pairs])


def owner_label(values: Mapping[str, Any]) -> str | None:
    """The `owner` option, checked (`mdevd.owners.label`); None when absent."""
    if OWNER not in values:
        return None
    return owners.label(values[OWNER])


def lifetime(values: Mapping[str, Any]) -> str:
    """The `lifetime` option, checked; `manual` when absent."""
    return owners.lifetime(values.get(LIFETIME, owners.LIFETIME_MANUAL))
