# SPDX-License-Identifier: LGPL-2.1-or-later
"""mdevctl's output formats, byte for byte: `list` and `types`, as text and as `--dumpjson`.

mdevctl builds each listing as a string and prints it with `println!`, so every output ends
with one extra newline (an empty listing prints just "\\n"). JSON is serde_json's
`to_string_pretty`: two-space indent, `": "`, non-ASCII left as UTF-8; objects keep mdevctl's
key order. Parents are sorted by name (byte order), devices by UUID, types by id. A device's
JSON, and the listing of devices, are built where the daemon builds them for the files it
writes (`mdevd.mdevctl_shapes`).
"""

from __future__ import annotations

from mdevd import mdevctl_shapes
from mdevd.record import Record

TYPE_CHECKING = False  # annotations only: the front end's start-up is most of its time
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from typing import Any

    from mdevd.model import Attributes
    from mdevd.replies import ParentInfo


class Listed(Record):
    """One device as an mdevctl listing shows it."""

    _fields = ("uuid", "parent", "type_id", "autostart", "attributes", "active", "defined")
    __slots__ = _fields
    uuid: str
    parent: str
    type_id: str
    autostart: bool
    attributes: Attributes
    active: bool
    defined: bool

    def __init__(
        self,
        uuid: str,
        parent: str,
        type_id: str,
        autostart: bool,
        attributes: Attributes,
        active: bool,
        defined: bool,
    ) -> None:
        self._init(uuid, parent, type_id, autostart, attributes, active, defined)


def _by_parent(devices: Iterable[Listed]) -> dict[str, list[Listed]]:
    grouped: dict[str, list[Listed]] = {}
    for device in devices:
        grouped.setdefault(device.parent, []).append(device)
    return {parent: sorted(grouped[parent], key=lambda d: d.uuid) for parent in sorted(grouped)}


def list_text(devices: Iterable[Listed], *, defined: bool, verbose: bool) -> str:
    """`mdevctl list [-d] [-v]`: `UUID PARENT TYPE auto|manual [(active)|(defined)]` lines."""
    out: list[str] = []
    for children in _by_parent(devices).values():
        for device in children:
            line = (
                f"{device.uuid} {device.parent} {device.type_id} "
                f"{'auto' if device.autostart else 'manual'}"
            )
            if defined and device.active:
                line += " (active)"
            elif not defined and device.defined:
                line += " (defined)"
            out.append(line + "\n")
            if verbose and device.attributes:
                out.append("  Attrs:\n")
                # Not JSON: mdevctl formats `{"name":"value"}` without escaping anything.
                out.extend(
                    f'    @{{{index}}}: {{"{name}":"{value}"}}\n'
                    for index, (name, value) in enumerate(device.attributes)
                )
    return "".join(out) + "\n"


def list_json(devices: Sequence[Listed], *, uuid_given: bool) -> str:
    """`mdevctl list --dumpjson`: `[{parent: [{uuid: config}, ...]}]`, `[]` when empty, and
    just the config object when a UUID was asked for and one device matches."""
    if uuid_given and len(devices) <= 1:
        value: object = mdevctl_shapes.config_object(devices[0]) if devices else []
    else:
        value = mdevctl_shapes.listing_object(devices)
    return mdevctl_shapes.pretty_json(value) + "\n"


def _description(text: str) -> str:
    return text.strip().replace("\n", ", ")


def types_text(parents: Iterable[ParentInfo]) -> str:
    out: list[str] = []
    for parent in sorted(parents, key=lambda p: p.name):
        out.append(f"{parent.name}\n")
        for type_id in sorted(parent.types):
            info = parent.types[type_id]
            out.append(f"  {type_id}\n")
            out.append(f"    Available instances: {info.available_instances}\n")
            out.append(f"    Device API: {info.device_api}\n")
            if info.name:
                out.append(f"    Name: {info.name}\n")
            if info.description:
                out.append(f"    Description: {_description(info.description)}\n")
    return "".join(out) + "\n"


def types_json(parents: Iterable[ParentInfo]) -> str:
    document: dict[str, list[dict[str, Any]]] = {}
    for parent in sorted(parents, key=lambda p: p.name):
        entries = []
        for type_id in sorted(parent.types):
            info = parent.types[type_id]
            fields: dict[str, Any] = {
                "available_instances": info.available_instances,
                "device_api": info.device_api,
            }
            if info.name:
                fields["name"] = info.name
            if info.description:
                fields["description"] = _description(info.description)
            entries.append({type_id: fields})
        document[parent.name] = entries
    return mdevctl_shapes.pretty_json([document] if document else []) + "\n"
