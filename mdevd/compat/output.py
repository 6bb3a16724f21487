# SPDX-License-Identifier: LGPL-2.1-or-later
"""mdevctl's output formats, byte for byte: `list` and `types`, as text and as `--dumpjson`.

mdevctl builds each listing as a string and prints it with `println!`, so every output ends
with one extra newline (an empty listing prints just "\\n"). JSON is serde_json's
`to_string_pretty`: two-space indent, `": "`, non-ASCII left as UTF-8; objects keep mdevctl's
key order. Parents are sorted by name (byte order), devices by UUID, types by id.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from mdevd.model import Attributes
from mdevd.replies import ParentInfo


@dataclass(frozen=True, slots=True)
class Listed:
    """One device as an mdevctl listing shows it."""

    uuid: str
    parent: str
    type_id: str
    autostart: bool
    attributes: Attributes
    active: bool
    defined: bool


def pretty(value: object) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


def device_config(device: Listed) -> dict[str, Any]:
    """`{"mdev_type", "start", "attrs"}`: a definition file's content."""
    return {
        "mdev_type": device.type_id,
        "start": "auto" if device.autostart else "manual",
        "attrs": [{name: value} for name, value in device.attributes],
    }


def compact_config(device: Listed) -> str:
    """The config as callouts get it on stdin (serde_json's `to_string`)."""
    return json.dumps(device_config(device), separators=(",", ":"), ensure_ascii=False)


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
    grouped = _by_parent(devices)
    if uuid_given and len(devices) <= 1:
        value: object = device_config(devices[0]) if devices else []
    elif not grouped:
        value = []
    else:
        value = [
            {
                parent: [{d.uuid: device_config(d)} for d in children]
                for parent, children in grouped.items()
            }
        ]
    return pretty(value) + "\n"


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
    return pretty([document] if document else []) + "\n"
