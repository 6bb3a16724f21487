# SPDX-License-Identifier: LGPL-2.1-or-later
"""Object paths from identities, and back.

Paths are derived from what an object is (a parent's sysfs name, a device's UUID), never from
counters, so a client that stored a path finds the same object after a daemon restart. Both
mappings are bijections: every name has exactly one path and a path that is not the canonical
encoding of some name is refused, so two spellings can never reach one object.
"""

from __future__ import annotations

import re

from mdevd import validate
from mdevd.bus.names import DEVICES_PATH, PARENTS_PATH
from mdevd.errors import InvalidArgument, InvalidName

# Object path elements may only hold [A-Za-z0-9_]; `_` is the escape character, so it is
# escaped itself, which is what makes `enc` reversible.
_KEPT = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_ENCODED_RE = re.compile(r"(?:[A-Za-z0-9]|_[0-9a-f]{2})+")
_DEVICE_ELEMENT_RE = re.compile(r"[0-9a-f]{8}_[0-9a-f]{4}_[0-9a-f]{4}_[0-9a-f]{4}_[0-9a-f]{12}")


def encode_element(name: str) -> str:
    """The contract's `enc`: keep [A-Za-z0-9], every other UTF-8 byte becomes `_` + 2 hex digits."""
    if not name:
        raise InvalidName("an empty name has no object path")
    return "".join(chr(byte) if byte in _KEPT else f"_{byte:02x}" for byte in name.encode("utf-8"))


def decode_element(element: str) -> str:
    """Inverse of `encode_element`; refuses anything `encode_element` would not have produced."""
    # The regex alone lets `_61` through for `a`; requiring re-encoding to give the same element
    # rejects such non-canonical spellings too.
    if not _ENCODED_RE.fullmatch(element):
        raise InvalidArgument(f"{element!r} is not an encoded name")
    raw = bytearray()
    index = 0
    while index < len(element):
        if element[index] == "_":
            raw.append(int(element[index + 1 : index + 3], 16))
            index += 3
        else:
            raw.append(ord(element[index]))
            index += 1
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgument(f"{element!r} does not encode a UTF-8 name") from None
    if encode_element(name) != element:
        raise InvalidArgument(f"{element!r} is not the canonical encoding of {name!r}")
    return name


def parent_path(name: str) -> str:
    """`/org/mdevd/Mdevd1/parents/<enc(name)>` (`0000:00:02.0` -> `.../0000_3a00_3a02_2e0`)."""
    return f"{PARENTS_PATH}/{encode_element(name)}"


def parent_name_from_path(path: str) -> str:
    """The parent name a parent object path stands for; `InvalidArgument` for any other path."""
    prefix = PARENTS_PATH + "/"
    if not path.startswith(prefix) or "/" in path[len(prefix) :]:
        raise InvalidArgument(f"{path!r} is not a parent object path")
    return decode_element(path[len(prefix) :])


def device_path(uuid: str) -> str:
    """`/org/mdevd/Mdevd1/devices/<uuid with - replaced by _>`, lower case like the kernel's."""
    return f"{DEVICES_PATH}/{validate.uuid(uuid).replace('-', '_')}"


def uuid_from_device_path(path: str) -> str:
    """The (lower-case) UUID a device object path stands for; `InvalidArgument` otherwise."""
    prefix = DEVICES_PATH + "/"
    element = path[len(prefix) :] if path.startswith(prefix) else ""
    if not _DEVICE_ELEMENT_RE.fullmatch(element):
        raise InvalidArgument(f"{path!r} is not a device object path")
    return element.replace("_", "-")
