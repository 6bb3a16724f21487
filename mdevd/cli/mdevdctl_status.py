# SPDX-License-Identifier: LGPL-2.1-or-later
"""What needs an admin's attention, in mdevdctl's words: `status` (the summary read in one
glance, and its exit status), the markers of `list` and the lines of `show`.

A device needs attention when its last start failed, when it waits for an absent parent to
autostart, when its definition differs from the running device (a pending change), or when it
carries an error otherwise. Each comes with the command that deals with it, where one does.
"""

from __future__ import annotations

from mdevd.record import Record
from mdevd.replies import (
    APPLY_RESTART,
    APPLY_UPDATE_LIVE,
    STATUS_FAILED,
    STATUS_WAITING,
)

TYPE_CHECKING = False  # annotations only: mdevdctl imports this module at every start
if TYPE_CHECKING:
    from collections.abc import Sequence

    from mdevd.replies import DeviceInfo, ParentInfo

#: `status` found a device whose last start failed (and perhaps more).
EXIT_STATUS_FAILED = 7
#: `status` found something that needs attention, none of it failed: a device waiting for its
#: parent, a pending change, an error on a running device.
EXIT_STATUS_ATTENTION = 8

REASON_FAILED = "failed"
REASON_WAITING = "waiting"
REASON_PENDING = "pending-changes"
#: A device with a LastError that is neither failed nor waiting: a start whose rollback failed
#: left it running, so what runs is not what was asked for.
REASON_ERROR = "error"
#: The order of `status`'s lines: the worst first.
_REASONS = (REASON_FAILED, REASON_ERROR, REASON_WAITING, REASON_PENDING)


def apply_command(device: DeviceInfo) -> str:
    """The command that makes the running device what its definition says; "" if none."""
    uuid = device.uuid
    if device.pending_changes.apply == APPLY_RESTART:
        return f"mdevdctl stop {uuid} && mdevdctl start {uuid}"
    if device.pending_changes.apply == APPLY_UPDATE_LIVE:
        return f"mdevdctl modify {uuid} --live"
    return ""  # nothing pending, or a way to apply it this mdevdctl does not know


def pending_text(device: DeviceInfo) -> str:
    """The pending change in words: what is defined, against what runs."""
    pending = device.pending_changes
    parts = []
    if pending.parent is not None:
        parts.append(f"defined on parent {pending.parent}, running on {device.parent}")
    if pending.type_id is not None:
        parts.append(f"defined as type {pending.type_id}, running as {device.type_id}")
    if pending.attributes is not None:
        listed = " ".join(f"{name}={value}" for name, value in pending.attributes) or "none"
        parts.append(f"defined attributes ({listed}) not written to the running device")
    return "; ".join(parts)


def waiting_text(device: DeviceInfo) -> str:
    return f"waiting for parent {device.parent} (autostart: it starts when the parent appears)"


def list_marker(device: DeviceInfo) -> str:
    """`list`'s marker after a device's line: "[failed]", "[waiting]", "[pending]" or ""."""
    if device.status in (STATUS_FAILED, STATUS_WAITING):
        return f"[{device.status}]"
    return "[pending]" if device.pending_changes else ""


class Attention(Record):
    """One device that needs attention: why (`reason`, `message`) and what to run."""

    _fields = ("device", "reason", "message", "command")
    __slots__ = _fields
    device: DeviceInfo
    reason: str
    message: str
    #: The command that deals with it; "" when there is none to run (waiting for a parent).
    command: str

    def __init__(self, device: DeviceInfo, reason: str, message: str, command: str) -> None:
        self._init(device, reason, message, command)


def attention(device: DeviceInfo) -> Attention | None:
    error = device.last_error
    if device.status == STATUS_FAILED:
        return Attention(device, REASON_FAILED, f"failed: {error}", f"mdevdctl start {device.uuid}")
    if device.status == STATUS_WAITING:
        # Waiting wins over failed (the contract's order): autostart tries again when the
        # parent comes. An earlier failure is still worth a word.
        message = waiting_text(device) + (f"; its last start failed: {error}" if error else "")
        return Attention(device, REASON_WAITING, message, "")
    if error:
        message = f"{device.status}, with an error: {error}"
        if device.pending_changes:
            message += f"; pending change: {pending_text(device)}"
        return Attention(device, REASON_ERROR, message, apply_command(device))
    if device.pending_changes:
        return Attention(
            device,
            REASON_PENDING,
            f"pending change: {pending_text(device)}",
            apply_command(device),
        )
    return None


class StatusReport(Record):
    """What `mdevdctl status` found: the daemon's version, its devices and parents."""

    _fields = ("version", "devices", "parents")
    __slots__ = _fields
    version: str
    devices: Sequence[DeviceInfo]
    parents: Sequence[ParentInfo]

    def __init__(
        self, version: str, devices: Sequence[DeviceInfo], parents: Sequence[ParentInfo]
    ) -> None:
        self._init(version, devices, parents)

    def counts(self) -> dict[str, int]:
        devices = self.devices
        return {
            "devices": len(devices),
            "defined": sum(d.defined for d in devices),
            "active": sum(d.active for d in devices),
            "autostart": sum(d.autostart for d in devices),
            "waiting": sum(d.status == STATUS_WAITING for d in devices),
            "failed": sum(d.status == STATUS_FAILED for d in devices),
            "pending_changes": sum(bool(d.pending_changes) for d in devices),
        }

    def attention(self) -> list[Attention]:
        found = [a for a in map(attention, self.devices) if a is not None]
        # Stable: within a reason, the devices' order (parent, UUID).
        return sorted(found, key=lambda a: _REASONS.index(a.reason))

    def state(self) -> str:
        """`failed`, `attention` or `ok`: what the exit status says, as a word."""
        reasons = {a.reason for a in self.attention()}
        if REASON_FAILED in reasons:
            return "failed"
        return "attention" if reasons else "ok"

    def exit_code(self) -> int:
        return {"failed": EXIT_STATUS_FAILED, "attention": EXIT_STATUS_ATTENTION}.get(
            self.state(), 0
        )

    def text(self) -> str:
        counts = self.counts()
        lines = [
            f"mdevd {self.version} answers on org.mdevd.Mdevd1.",
            f"Devices: {counts['devices']} in all; {counts['defined']} defined, "
            f"{counts['active']} active, {counts['autostart']} autostart; "
            f"{counts['waiting']} waiting, {counts['failed']} failed, "
            f"{counts['pending_changes']} with pending changes.",
            "",
        ]
        found = self.attention()
        if found:
            lines.append("Needs attention:")
            for item in found:
                lines.append(f"  {item.device.uuid} {item.message}")
                if item.command:
                    verb = "retry" if item.reason == REASON_FAILED else "apply"
                    lines.append(f"    {verb}: {item.command}")
        else:
            lines.append("Nothing needs attention.")
        lines += ["", "Parents:" if self.parents else "Parents: none present."]
        for parent in self.parents:
            types = ", ".join(
                f"{t.type_id} {t.available_instances} available" for t in parent.types.values()
            )
            lines.append(f"  {parent.name}: {types or 'no types'}")
        return "\n".join(lines) + "\n"
