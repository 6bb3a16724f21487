# SPDX-License-Identifier: LGPL-2.1-or-later
"""Who a device belongs to, and how long a transient device lives (docs/dbus-api.md, Owners).

Every device created or defined through mdevd records an owner: the label the caller gives
(`nova`, `kubevirt`), else the caller's systemd unit, else its uid. A transient device may live
as long as the caller's bus connection (`connection`) or a systemd unit (`unit:<name>`).
Devices other tools made have no owner, and mdevd's housekeeping never stops them.

Ownership lives as long as the devices do: the record (`OwnerRecord`, a JSON file in the state
directory) carries the boot's id, and a record from an earlier boot is dropped, as the kernel
dropped the devices. Written atomically after each change, without fsync (nothing it says
outlives a crash of the host); a damaged file costs the owners
(the devices then have none, the safe side: nothing is reaped), never the daemon.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from mdevd import atomic, validate
from mdevd.errors import InvalidArgument, InvalidName

log = logging.getLogger(__name__)

LIFETIME_MANUAL = "manual"
LIFETIME_CONNECTION = "connection"
LIFETIME_UNIT_PREFIX = "unit:"

#: A caller's own label: short, and safe in logs, file names and `mdevdctl list` columns.
_LABEL = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
#: A systemd unit name (systemd's own limit is 255; the characters of unit_name_is_valid).
_UNIT = re.compile(r"[A-Za-z0-9:_.\\@-]{1,255}\.(service|scope)")
#: The record holds at most this many devices (the kernel will not hold many more).
MAX_OWNERS = 65536
MAX_RECORD_BYTES = 16 * 1024 * 1024
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


@dataclass(frozen=True, slots=True)
class Owner:
    """A device's owner, and its lifetime."""

    #: What is shown and compared: the caller's label, `unit:<name>` or `uid:<n>`.
    label: str
    uid: int
    #: `manual` (until stopped), `connection`, or `unit:<name>`.
    lifetime: str = LIFETIME_MANUAL
    #: For `connection`: the owner's unique bus name, whose closing ends the device.
    connection: str = ""

    @property
    def unit(self) -> str:
        """The unit a `unit:<name>` lifetime follows; "" for others."""
        return self.lifetime.removeprefix(LIFETIME_UNIT_PREFIX) if self.ends_with_unit else ""

    @property
    def ends_with_unit(self) -> bool:
        return self.lifetime.startswith(LIFETIME_UNIT_PREFIX)


def label(value: object) -> str:
    """A caller's `owner` option: lower-case letters, digits, `.`, `_`, `-`; at most 64."""
    if not isinstance(value, str) or not _LABEL.fullmatch(value):
        raise InvalidArgument(
            "owner must be 1 to 64 lower-case letters, digits, '.', '_' or '-', starting with"
            f" a letter or digit; not {str(value)[:80]!r}"
        )
    return value


def lifetime(value: object) -> str:
    """`manual`, `connection` or `unit:<name>` (a .service or .scope)."""
    if value in (LIFETIME_MANUAL, LIFETIME_CONNECTION):
        return str(value)
    if (
        isinstance(value, str)
        and value.startswith(LIFETIME_UNIT_PREFIX)
        and _UNIT.fullmatch(value.removeprefix(LIFETIME_UNIT_PREFIX))
    ):
        return value
    raise InvalidArgument(
        f"lifetime must be 'manual', 'connection' or 'unit:<name>.service|.scope';"
        f" not {str(value)[:80]!r}"
    )


def unit_of_cgroup(text: str) -> str:
    """The systemd unit a process runs in, from its `/proc/<pid>/cgroup` (cgroup v2's
    `0::/system.slice/libvirtd.service`); "" when it is in none (a login session's shell is
    in a `session-N.scope`, which counts)."""
    for line in text.splitlines():
        hierarchy, _, path = line.partition("::")
        if hierarchy == "0" and path:
            for component in reversed(path.split("/")):
                if _UNIT.fullmatch(component):
                    return component
    return ""


def boot_id() -> str:
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return ""


class OwnerRecord:
    """The owners of the devices, by UUID, kept across daemon restarts within one boot."""

    def __init__(self, path: Path, boot: str | None = None) -> None:
        self.path = path
        self.boot = boot if boot is not None else boot_id()

    def load(self) -> dict[str, Owner]:
        try:
            with open(self.path, "rb") as file:
                data = file.read(MAX_RECORD_BYTES + 1)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            log.warning("cannot read %s: %s; devices have no owners", self.path, exc)
            return {}
        try:
            if len(data) > MAX_RECORD_BYTES:
                raise ValueError(f"larger than {MAX_RECORD_BYTES} bytes")
            document = json.loads(data)
            if not isinstance(document, dict) or document.get("version") != 1:
                raise ValueError("not a version 1 owner record")
            if document.get("boot") != self.boot:
                return {}  # an earlier boot's: its devices are gone
            devices = document["devices"]
            if not isinstance(devices, dict):
                raise ValueError("'devices' is not a table")
            owners = {}
            for uuid, entry in list(devices.items())[:MAX_OWNERS]:
                owner = Owner(
                    label=str(entry["label"]),
                    uid=int(entry["uid"]),
                    lifetime=lifetime(entry.get("lifetime", LIFETIME_MANUAL)),
                    connection=str(entry.get("connection", "")),
                )
                owners[validate.uuid(uuid)] = owner
            return owners
        except (ValueError, TypeError, KeyError, InvalidName, InvalidArgument) as exc:
            log.warning("%s is damaged (%s); devices have no owners", self.path, exc)
            return {}

    def save(self, owners: dict[str, Owner]) -> None:
        document = {
            "version": 1,
            "boot": self.boot,
            "devices": {
                uuid: {
                    "label": owner.label,
                    "uid": owner.uid,
                    "lifetime": owner.lifetime,
                    "connection": owner.connection,
                }
                for uuid, owner in sorted(owners.items())
            },
        }
        atomic.ensure_directory(self.path.parent)
        # Not fsynced: a crash of the host ends the devices, and with the next boot's id the
        # record too; the rename still makes every reader see a whole file.
        atomic.write_atomic(
            self.path, (json.dumps(document, indent=1) + "\n").encode(), durable=False
        )
