# SPDX-License-Identifier: LGPL-2.1-or-later
"""The control channel of a mounted emulated kernel: its command grammar and a client.

Commands are one line written to `<mount>/.sim/control` in a single write; an error comes back as
the write's errno, and reading the same open file then returns the message. The grammar::

    register PARENT | unregister PARENT
    fault create PARENT TYPE ERRNO [COUNT]    next COUNT (default 1) creates of the type fail
    fault attribute UUID|* NAME ERRNO [COUNT] next writes of the device attribute fail
    fault remove UUID|* ERRNO [COUNT]         next `1` writes to the device's remove fail
    delay create|remove|attribute SECONDS     every such write sleeps first; 0 clears
    delay types SECONDS                       a registration's mdev_supported_types stays
                                              empty for SECONDS, then fills (no uevent)
    hold UUID | release UUID                  a VM holds the device's vfio group (open of
                                              .sim/dev/vfio/N -> EBUSY, remove blocks)
    mdev-state-events on|off                  off: registration sends no MDEV_STATE change
                                              (an older kernel); see the scenario's key
    clear                                     drop all faults and delays

NVIDIA vGPUs on SR-IOV virtual functions (`[[nvidia_gpu]]` in the scenario)::

    nvidia unload PF                          the VFs (last first), then the PF, unbind from
                                              nvidia: `unbind` uevents, `nvidia/` and the vfio
                                              nodes go, every vGPU type is forgotten; the VFs
                                              stay enabled. Blocks while a VM holds a VF.
    nvidia load PF                            the PF, then each enabled VF, bind to nvidia
                                              again: `bind` uevents, fresh `nvidia/` dirs
    hold-vf VF | release-vf VF                a VM opens / closes the VF's VFIO device
                                              (.sim/dev/vfio/N -> EBUSY, current_vgpu_type
                                              writes -> the GPU's busy_errno); opening needs a
                                              vGPU type (else ENODEV, as the driver answers)
    fault vgpu-type VF|* ERRNO [COUNT]        next COUNT writes of current_vgpu_type fail
    delay vf-release SECONDS                  after release-vf, clearing the type answers
                                              busy_errno this long (every GPU; overrides the
                                              scenario's release_busy_seconds until `clear`)

ERRNO is a name (`EIO`) or a number. Errors of the channel itself: EINVAL for a malformed
command, ENOENT for an unknown parent, type or device (and an unknown PF, or a VF that does not
exist), EALREADY for registering a registered parent or unregistering an unregistered one, and
for loading a loaded driver or unloading an unloaded one; ENODEV for holding a VF that is not
bound to nvidia or has no vGPU type.
"""

from __future__ import annotations

import errno
import os
import re
import shlex
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mdevd import validate
from mdevd.errors import InvalidArgument
from mdevd.sim.scenario import errno_value, pci_address

CONTROL_PATH = ".sim/control"
#: Any `.sim/control-<suffix>` also takes commands (not listed): FUSE serializes writes to one
#: file, so concurrent clients each write to their own alias, and a command that blocks (an
#: `unregister` waiting for a held device) cannot hold up the one that would unblock it.
CONTROL_ALIAS_PREFIX = ".sim/control-"
_ALIAS_SUFFIX = re.compile(r"[A-Za-z0-9_.-]{1,64}")
UEVENT_LOG_PATH = ".sim/uevents"
VFIO_DIR = ".sim/dev/vfio"
#: The VFIO device nodes (cdevs), `/dev/vfio/devices/vfioN` on kernels 6.6+.
VFIO_CDEV_DIR = ".sim/dev/vfio/devices"

#: `create`, `remove`, `attribute`: every such write sleeps first. `types`: a new registration's
#: types appear that long after it. `vf-release`: how long clearing a VF's vGPU type stays busy
#: after the VM let go.
DELAY_KINDS = ("create", "remove", "attribute", "types", "vf-release")


class CommandError(ValueError):
    """A command line that does not follow the grammar."""


@dataclass(frozen=True, slots=True)
class Register:
    parent: str


@dataclass(frozen=True, slots=True)
class Unregister:
    parent: str


@dataclass(frozen=True, slots=True)
class FaultCreate:
    parent: str
    type_id: str
    error: int
    count: int = 1


@dataclass(frozen=True, slots=True)
class FaultAttribute:
    uuid: str  # lower case, or "*" for every device
    name: str
    error: int
    count: int = 1


@dataclass(frozen=True, slots=True)
class FaultRemove:
    uuid: str  # lower case, or "*"
    error: int
    count: int = 1


@dataclass(frozen=True, slots=True)
class Delay:
    kind: str
    seconds: float


@dataclass(frozen=True, slots=True)
class Hold:
    uuid: str


@dataclass(frozen=True, slots=True)
class Release:
    uuid: str


@dataclass(frozen=True, slots=True)
class MdevStateEvents:
    enabled: bool


@dataclass(frozen=True, slots=True)
class Clear:
    pass


@dataclass(frozen=True, slots=True)
class NvidiaDriver:
    """`nvidia load PF` (loaded=True) or `nvidia unload PF`."""

    pf: str
    loaded: bool


@dataclass(frozen=True, slots=True)
class HoldVf:
    vf: str


@dataclass(frozen=True, slots=True)
class ReleaseVf:
    vf: str


@dataclass(frozen=True, slots=True)
class FaultVgpuType:
    vf: str  # a PCI address, or "*" for every VF
    error: int
    count: int = 1


Command = (
    Register
    | Unregister
    | FaultCreate
    | FaultAttribute
    | FaultRemove
    | Delay
    | Hold
    | Release
    | MdevStateEvents
    | Clear
    | NvidiaDriver
    | HoldVf
    | ReleaseVf
    | FaultVgpuType
)


def _uuid(word: str, wildcard: bool = False) -> str:
    if wildcard and word == "*":
        return word
    try:
        return validate.uuid(word)
    except InvalidArgument as exc:
        raise CommandError(exc.message) from None


def _name(check: object, word: str) -> str:
    try:
        return str(check(word))  # type: ignore[operator]
    except InvalidArgument as exc:
        raise CommandError(exc.message) from None


def _pci(word: str, wildcard: bool = False) -> str:
    if wildcard and word == "*":
        return word
    if pci_address(word.lower()) is None:
        raise CommandError(f"{word!r} is not a PCI address like 0000:3d:00.4")
    return word.lower()


def _errno(word: str) -> int:
    try:
        return errno_value(word)
    except ValueError as exc:
        raise CommandError(str(exc)) from None


def _count(words: Sequence[str]) -> int:
    if not words:
        return 1
    if len(words) > 1 or not words[0].isdigit() or int(words[0]) < 1:
        raise CommandError(f"count must be one positive number, not {' '.join(words)!r}")
    return int(words[0])


def _expect(words: Sequence[str], low: int, high: int, usage: str) -> None:
    if not low <= len(words) <= high:
        raise CommandError(f"usage: {usage}")


def is_control_alias(path: str) -> bool:
    return path.startswith(CONTROL_ALIAS_PREFIX) and bool(
        _ALIAS_SUFFIX.fullmatch(path[len(CONTROL_ALIAS_PREFIX) :])
    )


def parse_command(words: Sequence[str]) -> Command:
    """Parse one command (already split into words). Raises CommandError."""
    if not words:
        raise CommandError("empty command")
    verb, args = words[0], list(words[1:])
    if verb in ("register", "unregister"):
        _expect(args, 1, 1, f"{verb} PARENT")
        parent = _name(validate.parent_name, args[0])
        return Register(parent) if verb == "register" else Unregister(parent)
    if verb == "fault":
        kind = args[0] if args else ""
        rest = args[1:]
        if kind == "create":
            _expect(rest, 3, 4, "fault create PARENT TYPE ERRNO [COUNT]")
            return FaultCreate(
                _name(validate.parent_name, rest[0]),
                _name(validate.type_id, rest[1]),
                _errno(rest[2]),
                _count(rest[3:]),
            )
        if kind == "attribute":
            _expect(rest, 3, 4, "fault attribute UUID NAME ERRNO [COUNT]")
            return FaultAttribute(
                _uuid(rest[0], wildcard=True),
                _name(validate.attribute_name, rest[1]),
                _errno(rest[2]),
                _count(rest[3:]),
            )
        if kind == "remove":
            _expect(rest, 2, 3, "fault remove UUID ERRNO [COUNT]")
            return FaultRemove(_uuid(rest[0], wildcard=True), _errno(rest[1]), _count(rest[2:]))
        if kind == "vgpu-type":
            _expect(rest, 2, 3, "fault vgpu-type VF ERRNO [COUNT]")
            return FaultVgpuType(_pci(rest[0], wildcard=True), _errno(rest[1]), _count(rest[2:]))
        raise CommandError("usage: fault create|attribute|remove|vgpu-type ...")
    if verb == "delay":
        _expect(args, 2, 2, "delay create|remove|attribute|types|vf-release SECONDS")
        if args[0] not in DELAY_KINDS:
            raise CommandError(
                f"delay applies to create, remove, attribute, types or vf-release, not {args[0]!r}"
            )
        try:
            seconds = float(args[1])
        except ValueError:
            raise CommandError(f"delay needs a number of seconds, not {args[1]!r}") from None
        if not 0 <= seconds <= 3600:
            raise CommandError("delay must be between 0 and 3600 seconds")
        return Delay(args[0], seconds)
    if verb in ("hold", "release"):
        _expect(args, 1, 1, f"{verb} UUID")
        uuid = _uuid(args[0])
        return Hold(uuid) if verb == "hold" else Release(uuid)
    if verb == "mdev-state-events":
        _expect(args, 1, 1, "mdev-state-events on|off")
        if args[0] not in ("on", "off"):
            raise CommandError(f"mdev-state-events takes on or off, not {args[0]!r}")
        return MdevStateEvents(args[0] == "on")
    if verb == "clear":
        _expect(args, 0, 0, "clear")
        return Clear()
    if verb == "nvidia":
        _expect(args, 2, 2, "nvidia load|unload PF")
        if args[0] not in ("load", "unload"):
            raise CommandError(f"nvidia takes load or unload, not {args[0]!r}")
        return NvidiaDriver(_pci(args[1]), args[0] == "load")
    if verb in ("hold-vf", "release-vf"):
        _expect(args, 1, 1, f"{verb} VF")
        vf = _pci(args[0])
        return HoldVf(vf) if verb == "hold-vf" else ReleaseVf(vf)
    raise CommandError(f"unknown command {verb!r}")


def parse_line(line: str) -> Command:
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    return parse_command(words)


class ControlError(OSError):
    """A command the emulated kernel refused: `errno` as the write returned it, and its message."""


@dataclass(frozen=True, slots=True)
class UeventRecord:
    """One line of `.sim/uevents`."""

    seqnum: int
    action: str
    devpath: str
    properties: dict[str, str]

    @property
    def subsystem(self) -> str:
        return self.properties.get("SUBSYSTEM", "")


def parse_uevent_log(text: str) -> list[UeventRecord]:
    records = []
    for line in text.splitlines():
        seqnum, action, devpath, *pairs = line.split(" ")
        properties = dict(pair.split("=", 1) for pair in pairs)
        records.append(UeventRecord(int(seqnum), action, devpath, properties))
    return records


class SimControl:
    """Client of one mounted emulated kernel, addressed by its mount point."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def command(self, *words: str) -> None:
        """Run one command; raises ControlError(errno, message) when the emulation refuses it."""
        line = shlex.join(words)
        parse_command(words)  # a malformed command fails here with its usage, before any I/O
        alias = f"{CONTROL_ALIAS_PREFIX}{os.getpid()}.{threading.get_ident()}"
        fd = os.open(self.root / alias, os.O_RDWR | os.O_CLOEXEC)
        try:
            try:
                os.write(fd, line.encode() + b"\n")
            except OSError as exc:
                code = exc.errno or errno.EIO
                detail = os.pread(fd, 4096, 0).decode(errors="replace").strip()
                message = f"{line}: {os.strerror(code)}" + (f" ({detail})" if detail else "")
                raise ControlError(code, message) from None
        finally:
            os.close(fd)

    def register(self, parent: str) -> None:
        self.command("register", parent)

    def unregister(self, parent: str) -> None:
        self.command("unregister", parent)

    def fault_create(self, parent: str, type_id: str, error: str | int, count: int = 1) -> None:
        self.command("fault", "create", parent, type_id, str(error), str(count))

    def fault_attribute(self, uuid: str, name: str, error: str | int, count: int = 1) -> None:
        self.command("fault", "attribute", uuid, name, str(error), str(count))

    def fault_remove(self, uuid: str, error: str | int, count: int = 1) -> None:
        self.command("fault", "remove", uuid, str(error), str(count))

    def delay(self, kind: str, seconds: float) -> None:
        self.command("delay", kind, repr(float(seconds)))

    def hold(self, uuid: str) -> None:
        self.command("hold", uuid)

    def release(self, uuid: str) -> None:
        self.command("release", uuid)

    def mdev_state_events(self, enabled: bool) -> None:
        self.command("mdev-state-events", "on" if enabled else "off")

    def clear(self) -> None:
        self.command("clear")

    def nvidia_load(self, pf: str) -> None:
        self.command("nvidia", "load", pf)

    def nvidia_unload(self, pf: str) -> None:
        self.command("nvidia", "unload", pf)

    def hold_vf(self, vf: str) -> None:
        self.command("hold-vf", vf)

    def release_vf(self, vf: str) -> None:
        self.command("release-vf", vf)

    def fault_vgpu_type(self, vf: str, error: str | int, count: int = 1) -> None:
        self.command("fault", "vgpu-type", vf, str(error), str(count))

    def uevents(self) -> list[UeventRecord]:
        """Every uevent sent since the mount, oldest first."""
        return parse_uevent_log((self.root / UEVENT_LOG_PATH).read_text())

    def vfio_group_path(self, group: int) -> Path:
        """The emulated `/dev/vfio/<group>` node."""
        return self.root / VFIO_DIR / str(group)

    def vfio_cdev_path(self, name: str) -> Path:
        """The emulated `/dev/vfio/devices/<name>` node (`name`: `vfioN`, as in the device's
        `vfio-dev/`)."""
        return self.root / VFIO_CDEV_DIR / name
