# SPDX-License-Identifier: LGPL-2.1-or-later
"""mdevctl's UUID forms and the JSON it prints: what the daemon writes and the `mdevctl` front
end prints, the same bytes from one place.

Apart from `mdevd.mdevctl_format` (which reads, validates and imports mdevctl's definitions)
because the front end needs only this at every start, and libvirt runs it once per node-device
operation (issue 20): this module imports `re` when a UUID is read and `json` when JSON is
printed, and `mdevd.record`, nothing else. `mdevd.mdevctl_format` re-exports its functions.
"""

from __future__ import annotations

import re

from mdevd.record import Record

TYPE_CHECKING = False  # annotations only: importing typing is a start-up cost
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any, Protocol

    from mdevd.model import Attributes

    class MdevctlDevice(Protocol):
        """What mdevctl's JSON says of a device: a `Definition`, or the front end's listed
        device."""

        @property
        def uuid(self) -> str: ...
        @property
        def parent(self) -> str: ...
        @property
        def type_id(self) -> str: ...
        @property
        def autostart(self) -> bool: ...
        @property
        def attributes(self) -> Attributes: ...


class MdevctlConfig(Record):
    """A device as mdevctl's JSON describes it (`mdevd.mdevctl_config.read_config`), or as the
    front end's command line names it, for the UUID and parent it is meant for."""

    _fields = ("uuid", "parent", "type_id", "autostart", "attributes")
    __slots__ = _fields
    uuid: str
    parent: str
    type_id: str
    autostart: bool
    attributes: Attributes

    def __init__(
        self, uuid: str, parent: str, type_id: str, autostart: bool, attributes: Attributes
    ) -> None:
        self._init(uuid, parent, type_id, autostart, attributes)


_HYPHENATED = "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
#: The forms the uuid crate's `Uuid::parse_str` takes, which is how mdevctl reads file names.
#: A pattern, not compiled here: `re` compiles it at its first use (not at every import).
_MDEVCTL_UUID = rf"{_HYPHENATED}|[0-9a-fA-F]{{32}}|\{{{_HYPHENATED}\}}|urn:uuid:{_HYPHENATED}"


def mdevctl_uuid(name: str) -> str | None:
    """The canonical (hyphenated, lower-case) UUID of a file name mdevctl takes as one."""
    if not re.fullmatch(_MDEVCTL_UUID, name):
        return None
    digits = re.sub("[^0-9a-fA-F]", "", name.removeprefix("urn:uuid:")).lower()
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


def config_object(device: MdevctlDevice) -> dict[str, Any]:
    """A device as mdevctl's JSON object, `{"mdev_type", "start", "attrs"}`: what its config
    files, `--dumpjson` and the callouts' stdin hold."""
    return {
        "mdev_type": device.type_id,
        "start": "auto" if device.autostart else "manual",
        "attrs": [{name: value} for name, value in device.attributes],
    }


def listing_object(devices: Iterable[MdevctlDevice]) -> list[dict[str, Any]]:
    """`list --dumpjson`'s shape: `[{"<parent>": [{"<uuid>": {...}}, ...], ...}]`, parents
    (byte order) and UUIDs sorted; `[]` if there are none."""
    by_parent: dict[str, list[MdevctlDevice]] = {}
    for device in devices:
        by_parent.setdefault(device.parent, []).append(device)
    if not by_parent:
        return []
    return [
        {
            parent: [
                {d.uuid: config_object(d)} for d in sorted(by_parent[parent], key=lambda d: d.uuid)
            ]
            for parent in sorted(by_parent)
        }
    ]


def pretty_json(value: object) -> str:
    """serde_json's `to_string_pretty`: two-space indent, `": "`, UTF-8 left unescaped."""
    import json  # only what prints JSON

    return json.dumps(value, indent=2, ensure_ascii=False)


def compact_json(value: object) -> str:
    """serde_json's `to_string`: no whitespace, UTF-8 left unescaped."""
    import json  # only what prints JSON

    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
