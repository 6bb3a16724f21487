# SPDX-License-Identifier: LGPL-2.1-or-later
"""What `mdevdctl ... --json` prints, schema by schema; docs/json.md describes every key.

Schema 0 is the unversioned output of mdevd 0.1.0 (`list`, `show`, `types`, `monitor`), kept
exactly as it was, key order included, because scripts were written against it: it is what
`--json` alone still prints for those commands. Schema 1 carries `"schema": 1` at the top of
every output (list and types become objects for that), adds `status`, `pending_changes`,
`backend`, `placement`, `owner` and `lifetime` to devices (`backend` to parents), and names a
type id `type` everywhere (0 says `type` for a device's and `type_id` in `types`). A schema
keeps its keys, their types and meanings; keys may be added to its objects. Anything else is a
new schema number, and the old one stays selectable.
"""

from __future__ import annotations

TYPE_CHECKING = False  # annotations only: typing is a start-up cost (`list --json`)
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

    from mdevd.cli.mdevdctl_status import StatusReport
    from mdevd.replies import DeviceInfo, Event, ParentInfo, PendingChanges

#: The schema `--json` prints when none is asked for: the oldest each command has, so that
#: the output a script was written against never changes under it.
SCHEMAS = (0, 1)
LATEST = 1


def _attributes(pairs: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"name": name, "value": value} for name, value in pairs]


# ---- schema 0 (mdevd 0.1.0, unversioned) ---------------------------------------------------------


def device_v0(device: DeviceInfo) -> dict[str, Any]:
    """A device as 0.1.0 printed it (asdict of its DeviceInfo then, `type_id` renamed `type`,
    which moved it last)."""
    return {
        "path": device.path,
        "uuid": device.uuid,
        "parent": device.parent,
        "active": device.active,
        "defined": device.defined,
        "autostart": device.autostart,
        "attributes": _attributes(device.attributes),
        "sysfs_path": device.sysfs_path,
        "iommu_group": device.iommu_group,
        "config_file": device.config_file,
        "last_error": device.last_error,
        "parent_object": device.parent_object,
        "type": device.type_id,
    }


def types_v0(parents: Sequence[ParentInfo]) -> list[dict[str, Any]]:
    return [
        {
            "name": parent.name,
            "subsystem": parent.subsystem,
            "sysfs_path": parent.sysfs_path,
            "types": [
                {
                    "type_id": t.type_id,
                    "name": t.name,
                    "description": t.description,
                    "device_api": t.device_api,
                    "available_instances": t.available_instances,
                }
                for t in parent.types.values()
            ],
        }
        for parent in parents
    ]


def event_v0(event: Event, timestamp: str | None) -> dict[str, Any]:
    data: dict[str, Any] = {}
    if timestamp is not None:
        data["timestamp"] = timestamp
    data.update(event.as_dict())
    if not data["properties"]:
        del data["properties"]  # only properties-changed has any; monitor does not ask
    return data


# ---- schema 1 ---------------------------------------------------------------------------------


def pending_v1(pending: PendingChanges) -> dict[str, Any]:
    """`{}`, or the defined values that differ from the running device and `apply`."""
    data: dict[str, Any] = {}
    if pending.parent is not None:
        data["parent"] = pending.parent
    if pending.type_id is not None:
        data["type"] = pending.type_id
    if pending.attributes is not None:
        data["attributes"] = _attributes(pending.attributes)
    if data:
        data["apply"] = pending.apply
    return data


def device_v1(device: DeviceInfo) -> dict[str, Any]:
    return {
        "uuid": device.uuid,
        "path": device.path,
        "parent": device.parent,
        "parent_object": device.parent_object,
        "type": device.type_id,
        "status": device.status,
        "active": device.active,
        "defined": device.defined,
        "autostart": device.autostart,
        "attributes": _attributes(device.attributes),
        "sysfs_path": device.sysfs_path,
        "iommu_group": device.iommu_group,
        "config_file": device.config_file,
        "last_error": device.last_error,
        "pending_changes": pending_v1(device.pending_changes),
        "backend": device.backend,
        "placement": device.placement,
        "owner": device.owner,
        "lifetime": device.lifetime,
    }


def list_v1(devices: Sequence[DeviceInfo]) -> dict[str, Any]:
    return {"schema": 1, "devices": [device_v1(d) for d in devices]}


def show_v1(device: DeviceInfo) -> dict[str, Any]:
    return {"schema": 1, "device": device_v1(device)}


def parent_v1(parent: ParentInfo) -> dict[str, Any]:
    return {
        "name": parent.name,
        "path": parent.path,
        "subsystem": parent.subsystem,
        "sysfs_path": parent.sysfs_path,
        "backend": parent.backend,
        "types": [
            {
                "type": t.type_id,
                "name": t.name,
                "description": t.description,
                "device_api": t.device_api,
                "available_instances": t.available_instances,
            }
            for t in parent.types.values()
        ],
    }


def types_v1(parents: Sequence[ParentInfo]) -> dict[str, Any]:
    return {"schema": 1, "parents": [parent_v1(p) for p in parents]}


def event_v1(event: Event, timestamp: str | None) -> dict[str, Any]:
    return {"schema": 1, **event_v0(event, timestamp)}


def status_v1(report: StatusReport) -> dict[str, Any]:
    return {
        "schema": 1,
        "daemon": {"version": report.version},
        "state": report.state(),
        "counts": report.counts(),
        "attention": [
            {
                "uuid": item.device.uuid,
                "reason": item.reason,
                "message": item.message,
                "command": item.command,
                "device": device_v1(item.device),
            }
            for item in report.attention()
        ],
        "parents": [
            {
                "name": parent.name,
                "types": [
                    {"type": t.type_id, "available_instances": t.available_instances}
                    for t in parent.types.values()
                ],
            }
            for parent in report.parents
        ],
    }
