# SPDX-License-Identifier: LGPL-2.1-or-later
"""Scenario files: which parents, types and limits the emulated kernel starts with.

A scenario is a TOML file (the shipped ones live in `config/sim/`)::

    [sim]                          # optional
    first_iommu_group = 0          # lowest iommu group number handed to a new device
    vfio_major = 243               # MAJOR of the /dev/vfio/<group> nodes in uevents
    vfio_cdev = false              # VFIO device nodes (6.6+ with VFIO_DEVICE_CDEV): each device's
                                   #   vfio-dev/vfioN gets `dev`, and .sim/dev/vfio/devices/vfioN
                                   #   exists; false: as Debian 12's kernels, neither
    mdev_state_events = true       # parents announce (un)registration with a `change` carrying
                                   #   MDEV_STATE, as current kernels do; false behaves like
                                   #   older kernels without that event (docs/emulated-kernel.md)

    [[parent]]
    name = "mtty"                           # the parent's sysfs name (class/mdev_bus/<name>)
    devpath = "devices/virtual/mtty/mtty"   # its directory under the mount root ("/sys")
    subsystem = "mtty"                      # its own subsystem: SUBSYSTEM of its uevents
    subsystem_path = "class/mtty"           # target of its `subsystem` link
                                            #   (default "class/<subsystem>"; "bus/pci" for PCI)
    driver = "mtty"                         # the mdev driver: DRIVER= of `bind`, the `driver` link
    owned_by_driver = true                  # the parent device exists only while registered
                                            #   (a module's own device: mtty, matrix); false for
                                            #   a PCI GPU, which stays when its driver goes away
    registered = true                       # registered with the mdev core at mount time
    max_instances = 4                       # mdev-core counted (mdpy-like), shared by all types
                                            #   of the parent; full -> EUSERS, no uevent
    homogeneous = false                     # true: only one type at a time (NVIDIA vGPU),
                                            #   shown in available_instances (0), EUSERS
    mixed_type_errno = "EINVAL"             # optional: the driver refuses (its probe answers
                                            #   this errno) a create of a type other than those
                                            #   active on the parent, and available_instances
                                            #   does not show it (NVIDIA GPUs before Ada)
    pools = { ports = 24 }                  # driver-counted resources shared by the types
    pool_errno = "ENOSPC"                   # what the driver's probe returns when a pool is
                                            #   short; `add` then `remove` uevents, no `bind`
    uevent = { DRIVER = "nvidia" }          # the parent's own uevent properties

    [[parent.type]]
    id = "mtty-2"                  # the directory under mdev_supported_types
    name = "Dual port serial"
    device_api = "vfio-pci"
    description = "..."            # optional: without it there is no `description` file
    pool = "ports"                 # take `cost` units of this pool per device
    cost = 2
    max_instances = 8              # optional per-type limit, counted like the core's (EUSERS)
    vfio_ap = { max_adapter = 255, max_domain = 255 }
                                   # optional: the vfio-ap matrix attributes (assign_adapter,
                                   #   unassign_adapter, assign_domain, unassign_domain,
                                   #   assign_control_domain, unassign_control_domain, and the
                                   #   readable matrix and control_domains)

    [parent.type.readonly]         # optional: read-only files of each device of this type
    "vendor/resolution" = "640x480"  # the sample drivers' `vendor` group; `{uuid}` in a value
                                     #   becomes the device's UUID; shown with a newline

    [[parent.type.attribute]]      # optional: a write-only device attribute of this type
    name = "example"
    accept = "[0-9]+"              # a value (one trailing newline stripped) must match in full,
                                   #   else EINVAL

Every type needs at least one limit: a pool, its own `max_instances`, or the parent's.

NVIDIA's vendor-specific VFIO vGPUs (Ada, Hopper, Blackwell) are not mdevs: the GPU (the PF)
enables SR-IOV virtual functions, each stays bound to `nvidia` and takes a vGPU type through
`<VF>/nvidia/current_vgpu_type` (docs/emulated-kernel.md, "NVIDIA vGPUs on SR-IOV VFs")::

    [[nvidia_gpu]]
    name = "0000:3d:00.0"                  # the PF's PCI address (lower case)
    devpath = "devices/pci0000:3a/0000:3a:00.0/0000:3d:00.0"   # must end with the name
    first_vf = "0000:3d:00.4"              # VF i is first_vf + i functions (routing-id
                                           #   arithmetic: function 7 + 1 -> next device, 0)
    total_vfs = 4                          # sriov_totalvfs
    enabled_vfs = 4                        # sriov_numvfs at mount (0: SR-IOV not enabled yet)
    driver_loaded = true                   # nvidia bound to the PF and the VFs at mount
    framebuffer = 48                       # GB; a vGPU of size S takes an S-aligned range
    heterogeneous = false                  # false: after the first vGPU only types of its size
    busy_errno = "EBUSY"                   # current_vgpu_type written while a VM has the VF
    size_conflict_errno = "EINVAL"         # a type of another size in homogeneous mode
    unknown_type_errno = "ENODEV"          # an id the GPU does not have
    full_errno = "ENOSPC"                  # no room left for the type
    release_busy_seconds = 0.0             # clearing answers busy_errno this long after the VM
                                           #   closed the VF (Proxmox 48ada698's retry loop)
    device = "0x26b9"                      # the PF's `device` (default: from uevent PCI_ID)
    vf_device = "0x26b9"                   # the VFs' `device` and sriov_vf_device (default:
                                           #   the PF's)
    uevent = { PCI_ID = "10DE:26B9" }      # extra uevent properties of the PF and the VFs
                                           #   (DRIVER and PCI_SLOT_NAME are added per device)

    [[nvidia_gpu.type]]
    id = 1145                              # the number current_vgpu_type takes
    name = "NVIDIA L40S-1B"
    size = 1                               # framebuffer GB of one vGPU of this type

Unknown keys are errors, so a typo cannot silently change a scenario.
"""

from __future__ import annotations

import errno
import posixpath
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mdevd import validate
from mdevd.errors import ConfigInvalid, InvalidName


class ScenarioError(ConfigInvalid):
    """A scenario file that cannot describe a kernel; the message names the file and the object."""


@dataclass(frozen=True, slots=True)
class AttributeSpec:
    """A generic write-only device attribute: values matching `accept` are taken, others EINVAL."""

    name: str
    accept: re.Pattern[str]


@dataclass(frozen=True, slots=True)
class VfioApSpec:
    """The vfio-ap matrix attributes and the highest adapter and domain numbers they accept."""

    max_adapter: int = 255
    max_domain: int = 255


@dataclass(frozen=True, slots=True)
class TypeSpec:
    type_id: str
    name: str
    device_api: str
    description: str | None = None
    pool: str | None = None
    cost: int = 1
    max_instances: int | None = None
    attributes: tuple[AttributeSpec, ...] = ()
    vfio_ap: VfioApSpec | None = None
    #: Read-only device files (path under the device, value with `{uuid}`), in file order.
    readonly: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class ParentSpec:
    name: str
    devpath: str
    subsystem: str
    subsystem_path: str
    driver: str
    owned_by_driver: bool = True
    registered: bool = True
    max_instances: int | None = None
    homogeneous: bool = False
    #: The errno the driver's probe answers for a second type on the parent; None: it allows it.
    mixed_type_errno: int | None = None
    pools: Mapping[str, int] = field(default_factory=dict)
    pool_errno: int = errno.ENOSPC
    uevent: tuple[tuple[str, str], ...] = ()
    types: tuple[TypeSpec, ...] = ()

    def type(self, type_id: str) -> TypeSpec | None:
        for spec in self.types:
            if spec.type_id == type_id:
                return spec
        return None


@dataclass(frozen=True, slots=True)
class NvidiaTypeSpec:
    """A vGPU type of a vendor-VFIO NVIDIA GPU: its number, its name, its framebuffer in GB."""

    type_id: int
    name: str
    size: int


@dataclass(frozen=True, slots=True)
class NvidiaGpuSpec:
    """An NVIDIA GPU whose vGPUs live on SR-IOV virtual functions (module docstring)."""

    name: str
    devpath: str
    #: Every VF's address, VF 0 first: `total_vfs` of them.
    vf_addresses: tuple[str, ...]
    enabled_vfs: int
    driver_loaded: bool
    framebuffer: int
    heterogeneous: bool = False
    busy_errno: int = errno.EBUSY
    size_conflict_errno: int = errno.EINVAL
    unknown_type_errno: int = errno.ENODEV
    full_errno: int = errno.ENOSPC
    release_busy_seconds: float = 0.0
    #: The PF's and the VFs' PCI device ids as sysfs shows them ("0x26b9").
    device: str = "0x0000"
    vf_device: str = "0x0000"
    uevent: tuple[tuple[str, str], ...] = ()
    types: tuple[NvidiaTypeSpec, ...] = ()

    @property
    def total_vfs(self) -> int:
        return len(self.vf_addresses)

    @property
    def directory(self) -> str:
        """The directory holding the PF and, as its siblings, the VFs."""
        return posixpath.dirname(self.devpath)

    def vf_devpath(self, index: int) -> str:
        return f"{self.directory}/{self.vf_addresses[index]}"

    def type(self, type_id: int) -> NvidiaTypeSpec | None:
        for spec in self.types:
            if spec.type_id == type_id:
                return spec
        return None


@dataclass(frozen=True, slots=True)
class Scenario:
    parents: tuple[ParentSpec, ...]
    first_iommu_group: int = 0
    vfio_major: int = 243
    mdev_state_events: bool = True
    #: VFIO device nodes (CONFIG_VFIO_DEVICE_CDEV, 6.6+): `vfio-dev/vfioN/dev` and
    #: /dev/vfio/devices/vfioN. Off, as on Debian 12's 6.1 (and its 6.12), which have neither.
    vfio_cdev: bool = False
    source: str = "<scenario>"
    nvidia_gpus: tuple[NvidiaGpuSpec, ...] = ()

    def parent(self, name: str) -> ParentSpec | None:
        for spec in self.parents:
            if spec.name == name:
                return spec
        return None


def errno_value(text: str | int, what: str = "errno") -> int:
    """An errno given by name (`EIO`) or number (`5`)."""
    if isinstance(text, int):
        value = text
    elif text.isdigit():
        value = int(text)
    else:
        found = getattr(errno, text.upper(), None) if text.upper().startswith("E") else None
        if not isinstance(found, int):
            raise ValueError(f"{what} {text!r} is not an errno name like EIO or a number")
        value = found
    if not 0 < value < 4096:
        raise ValueError(f"{what} {text!r} is out of range")
    return value


class _Table:
    """One TOML table being read: typed getters, and an error for any key left unread."""

    def __init__(self, data: object, where: str) -> None:
        if not isinstance(data, dict):
            raise ScenarioError(f"{where}: expected a table")
        self._data: dict[str, Any] = data
        self._seen: set[str] = set()
        self.where = where

    def _get(self, key: str, kind: type | tuple[type, ...], default: object) -> Any:
        self._seen.add(key)
        if key not in self._data:
            if default is _REQUIRED:
                raise ScenarioError(f"{self.where}: {key!r} is required")
            return default
        value = self._data[key]
        # bool is an int in Python; a number where a flag belongs (or the reverse) is a typo.
        if isinstance(value, bool) != (kind is bool) or not isinstance(value, kind):
            raise ScenarioError(f"{self.where}: {key!r} has the wrong type ({value!r})")
        return value

    def has(self, key: str) -> bool:
        return key in self._data

    def text(self, key: str, default: object = None) -> Any:
        return self._get(key, str, default)

    def flag(self, key: str, default: bool) -> bool:
        return bool(self._get(key, bool, default))

    def number(self, key: str, default: object = None, minimum: int = 0) -> Any:
        value = self._get(key, int, default)
        if isinstance(value, int) and value < minimum:
            raise ScenarioError(f"{self.where}: {key!r} must be at least {minimum}")
        return value

    def seconds(self, key: str, default: float) -> float:
        value = float(self._get(key, (int, float), default))
        if not 0 <= value <= 3600:
            raise ScenarioError(f"{self.where}: {key!r} must be between 0 and 3600 seconds")
        return value

    def table(self, key: str) -> dict[str, Any]:
        return dict(self._get(key, dict, {}))

    def tables(self, key: str) -> list[object]:
        return list(self._get(key, list, []))

    def finish(self) -> None:
        unknown = sorted(set(self._data) - self._seen)
        if unknown:
            raise ScenarioError(f"{self.where}: unknown key(s) {', '.join(map(repr, unknown))}")


_REQUIRED = object()
#: What the mdev core and the driver core put in every device directory.
RESERVED_DEVICE_FILES = frozenset(
    {"driver", "iommu_group", "mdev_type", "power", "remove", "subsystem", "uevent", "vfio-dev"}
)


def _name(check: Any, value: str, where: str) -> str:
    try:
        return str(check(value))
    except InvalidName as exc:
        raise ScenarioError(f"{where}: {exc.message}") from None


def _sysfs_path(value: str, where: str, key: str, prefixes: tuple[str, ...]) -> str:
    parts = value.split("/")
    if (
        value != posixpath.normpath(value)
        or value.startswith("/")
        or any(part in ("", ".", "..") for part in parts)
        or not value.startswith(prefixes)
    ):
        raise ScenarioError(
            f"{where}: {key} {value!r} must be a plain relative path starting with "
            + " or ".join(prefixes)
        )
    for part in parts:
        _name(validate.parent_name, part, f"{where}: {key}")
    return value


def _attribute(data: object, where: str) -> AttributeSpec:
    table = _Table(data, where)
    name = _name(validate.attribute_name, table.text("name", _REQUIRED), where)
    pattern = table.text("accept", ".*")
    table.finish()
    try:
        return AttributeSpec(name=name, accept=re.compile(pattern, re.DOTALL))
    except re.error as exc:
        raise ScenarioError(f"{where}: attribute {name!r}: bad accept pattern: {exc}") from None


def _type(data: object, where: str, pools: Mapping[str, int], parent_limited: bool) -> TypeSpec:
    table = _Table(data, where)
    type_id = _name(validate.type_id, table.text("id", _REQUIRED), where)
    where = f"{where} ({type_id})"
    pool = table.text("pool")
    if pool is not None and pool not in pools:
        raise ScenarioError(f"{where}: pool {pool!r} is not one of the parent's pools")
    cost = table.number("cost", 1, minimum=1)
    max_instances = table.number("max_instances")
    vfio_ap = None
    if table.has("vfio_ap"):
        ap = _Table(table.table("vfio_ap"), f"{where}: vfio_ap")
        vfio_ap = VfioApSpec(
            max_adapter=ap.number("max_adapter", 255), max_domain=ap.number("max_domain", 255)
        )
        ap.finish()
    attributes = tuple(
        _attribute(item, f"{where}: attribute {index + 1}")
        for index, item in enumerate(table.tables("attribute"))
    )
    readonly = tuple(
        (_readonly_path(path, where), value)
        for path, value in sorted(table.table("readonly").items())
    )
    for path, value in readonly:
        if not isinstance(value, str):
            raise ScenarioError(f'{where}: readonly {path!r} must be "text"')
    spec = TypeSpec(
        type_id=type_id,
        name=table.text("name", type_id),
        device_api=table.text("device_api", "vfio-pci"),
        description=table.text("description"),
        pool=pool,
        cost=cost,
        max_instances=max_instances,
        attributes=attributes,
        vfio_ap=vfio_ap,
        readonly=readonly,
    )
    table.finish()
    if pool is None and max_instances is None and not parent_limited:
        raise ScenarioError(
            f"{where}: no limit: give the type a pool or max_instances, or the parent max_instances"
        )
    names = [a.name for a in attributes]
    if len(set(names)) != len(names):
        raise ScenarioError(f"{where}: an attribute is declared twice")
    clashes = set(names) & {path.split("/")[0] for path, _ in readonly}
    if clashes:
        raise ScenarioError(f"{where}: {sorted(clashes)} is both an attribute and read-only")
    return spec


def _readonly_path(path: str, where: str) -> str:
    """`name` or `group/name`, each part a plain attribute name."""
    parts = path.split("/")
    if len(parts) > 2 or parts[0] in RESERVED_DEVICE_FILES:
        raise ScenarioError(
            f"{where}: readonly {path!r} must be NAME or GROUP/NAME, not a file the core makes"
        )
    for part in parts:
        _name(validate.attribute_name, part, f"{where}: readonly {path!r}")
    return path


def _parent(data: object, where: str) -> ParentSpec:
    table = _Table(data, where)
    name = _name(validate.parent_name, table.text("name", _REQUIRED), where)
    where = f"{where} ({name})"
    devpath = _sysfs_path(table.text("devpath", _REQUIRED), where, "devpath", ("devices/",))
    if posixpath.basename(devpath) != name:
        raise ScenarioError(f"{where}: devpath {devpath!r} must end with the parent's name")
    subsystem = _name(validate.parent_name, table.text("subsystem", _REQUIRED), where)
    subsystem_path = _sysfs_path(
        table.text("subsystem_path", f"class/{subsystem}"),
        where,
        "subsystem_path",
        ("class/", "bus/"),
    )
    if posixpath.basename(subsystem_path) != subsystem or subsystem_path.count("/") != 1:
        raise ScenarioError(f"{where}: subsystem_path must be class/{subsystem} or bus/{subsystem}")
    pools_table = table.table("pools")
    pools: dict[str, int] = {}
    for pool, size in pools_table.items():
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ScenarioError(f"{where}: pool {pool!r} needs a size of 0 or more")
        pools[pool] = size
    try:
        pool_errno = errno_value(table.text("pool_errno", "ENOSPC"), "pool_errno")
        mixed_type = table.text("mixed_type_errno")
        mixed_type_errno = (
            None if mixed_type is None else errno_value(mixed_type, "mixed_type_errno")
        )
    except ValueError as exc:
        raise ScenarioError(f"{where}: {exc}") from None
    uevent = table.table("uevent")
    for key, value in uevent.items():
        if not isinstance(value, str) or not re.fullmatch(r"[A-Z][A-Z0-9_]*", key):
            raise ScenarioError(f'{where}: uevent property {key!r} must be KEY = "text"')
    max_instances = table.number("max_instances")
    types = tuple(
        _type(item, f"{where}: type {index + 1}", pools, max_instances is not None)
        for index, item in enumerate(table.tables("type"))
    )
    spec = ParentSpec(
        name=name,
        devpath=devpath,
        subsystem=subsystem,
        subsystem_path=subsystem_path,
        driver=_name(validate.parent_name, table.text("driver", subsystem), where),
        owned_by_driver=table.flag("owned_by_driver", True),
        registered=table.flag("registered", True),
        max_instances=max_instances,
        homogeneous=table.flag("homogeneous", False),
        pools=pools,
        pool_errno=pool_errno,
        mixed_type_errno=mixed_type_errno,
        uevent=tuple(sorted(uevent.items())),
        types=types,
    )
    table.finish()
    ids = [t.type_id for t in types]
    if len(set(ids)) != len(ids):
        raise ScenarioError(f"{where}: a type id is declared twice")
    return spec


_PCI_ADDRESS = re.compile(r"([0-9a-f]{4,8}):([0-9a-f]{2}):([01][0-9a-f])\.([0-7])")
#: Properties each PCI device's uevent gets from the emulation itself.
_DERIVED_UEVENT_KEYS = frozenset({"DRIVER", "PCI_SLOT_NAME"})
_INT_MAX = 2**31 - 1


def pci_address(text: str) -> tuple[str, int] | None:
    """`dddd:bb:dd.f` as (domain, routing id = bus << 8 | device << 3 | function), or None."""
    match = _PCI_ADDRESS.fullmatch(text)
    if match is None:
        return None
    domain, bus, device, function = match.groups()
    return domain, int(bus, 16) << 8 | int(device, 16) << 3 | int(function)


def format_pci_address(domain: str, routing_id: int) -> str:
    bus, devfn = routing_id >> 8, routing_id & 0xFF
    return f"{domain}:{bus:02x}:{devfn >> 3:02x}.{devfn & 7}"


def _pci_device_id(text: str, where: str, key: str) -> str:
    if not re.fullmatch(r"0x[0-9a-f]{4}", text):
        raise ScenarioError(f'{where}: {key} must be "0x" and four lower-case hex digits')
    return text


def _nvidia_type(data: object, where: str) -> NvidiaTypeSpec:
    table = _Table(data, where)
    type_id = table.number("id", _REQUIRED, minimum=1)
    where = f"{where} ({type_id})"
    if type_id > _INT_MAX:
        raise ScenarioError(f"{where}: id must fit in an int")
    name = table.text("name", _REQUIRED)
    if not name or not name.isprintable():
        raise ScenarioError(f"{where}: name must be printable text")
    spec = NvidiaTypeSpec(type_id=type_id, name=name, size=table.number("size", _REQUIRED, 1))
    table.finish()
    return spec


def _nvidia_gpu(data: object, where: str) -> NvidiaGpuSpec:
    table = _Table(data, where)
    name = table.text("name", _REQUIRED)
    pf = pci_address(name)
    if pf is None:
        raise ScenarioError(f"{where}: name {name!r} is not a PCI address like 0000:3d:00.0")
    where = f"{where} ({name})"
    devpath = _sysfs_path(table.text("devpath", _REQUIRED), where, "devpath", ("devices/",))
    if posixpath.basename(devpath) != name or devpath.count("/") < 2:
        raise ScenarioError(f"{where}: devpath {devpath!r} must end with /{name}")
    first_text = table.text("first_vf", _REQUIRED)
    first = pci_address(first_text)
    if first is None or first[0] != pf[0]:
        raise ScenarioError(f"{where}: first_vf {first_text!r} is not a PCI address in {pf[0]}")
    total = table.number("total_vfs", _REQUIRED, minimum=1)
    if first[1] + total - 1 > 0xFFFF:
        raise ScenarioError(f"{where}: {total} VFs from {first_text} run past bus ff")
    addresses = tuple(format_pci_address(first[0], first[1] + i) for i in range(total))
    if name in addresses:
        raise ScenarioError(f"{where}: a VF would have the PF's address")
    enabled = table.number("enabled_vfs", total)
    if enabled > total:
        raise ScenarioError(f"{where}: enabled_vfs is more than total_vfs")
    try:
        errnos = {
            key: errno_value(table.text(key, default), key)
            for key, default in (
                ("busy_errno", "EBUSY"),
                ("size_conflict_errno", "EINVAL"),
                ("unknown_type_errno", "ENODEV"),
                ("full_errno", "ENOSPC"),
            )
        }
    except ValueError as exc:
        raise ScenarioError(f"{where}: {exc}") from None
    release_busy = table.seconds("release_busy_seconds", 0.0)
    uevent = table.table("uevent")
    for key, value in uevent.items():
        if not isinstance(value, str) or not re.fullmatch(r"[A-Z][A-Z0-9_]*", key):
            raise ScenarioError(f'{where}: uevent property {key!r} must be KEY = "text"')
        if key in _DERIVED_UEVENT_KEYS:
            raise ScenarioError(f"{where}: uevent {key} is set per device by the emulation")
    pci_id = uevent.get("PCI_ID", "")
    derived = f"0x{pci_id.partition(':')[2].lower()}" if ":" in pci_id else "0x0000"
    device = _pci_device_id(table.text("device", derived), where, "device")
    types = tuple(
        _nvidia_type(item, f"{where}: type {index + 1}")
        for index, item in enumerate(table.tables("type"))
    )
    ids = [t.type_id for t in types]
    if len(set(ids)) != len(ids):
        raise ScenarioError(f"{where}: a type id is declared twice")
    spec = NvidiaGpuSpec(
        name=name,
        devpath=devpath,
        vf_addresses=addresses,
        enabled_vfs=enabled,
        driver_loaded=table.flag("driver_loaded", True),
        framebuffer=table.number("framebuffer", _REQUIRED, minimum=1),
        heterogeneous=table.flag("heterogeneous", False),
        release_busy_seconds=release_busy,
        device=device,
        vf_device=_pci_device_id(table.text("vf_device", device), where, "vf_device"),
        uevent=tuple(sorted(uevent.items())),
        types=types,
        **errnos,
    )
    table.finish()
    return spec


def _check_devpaths(scenario: Scenario) -> None:
    source = scenario.source
    for key in ("name", "devpath"):
        values = [getattr(p, key) for p in scenario.parents]
        if len(set(values)) != len(values):
            raise ScenarioError(f"{source}: two parents share a {key}")
    devpaths = [p.devpath for p in scenario.parents]
    names = [p.name for p in scenario.parents]
    for gpu in scenario.nvidia_gpus:
        names += [gpu.name, *gpu.vf_addresses]
        devpaths += [gpu.devpath, *(gpu.vf_devpath(i) for i in range(gpu.total_vfs))]
    if len(set(names)) != len(names):
        raise ScenarioError(f"{source}: two devices share a name or PCI address")
    if len(set(devpaths)) != len(devpaths):
        raise ScenarioError(f"{source}: two devices share a devpath")
    known = set(devpaths)
    for devpath in devpaths:
        above = posixpath.dirname(devpath)
        while above:
            if above in known:
                raise ScenarioError(f"{source}: device {above!r} contains another device")
            above = posixpath.dirname(above)


def parse(text: str, source: str = "<scenario>") -> Scenario:
    """Parse scenario TOML text. Raises ScenarioError naming `source` and the bad object."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{source}: {exc}") from None
    top = _Table(data, source)
    sim = _Table(top.table("sim"), f"{source}: [sim]")
    parents = tuple(
        _parent(item, f"{source}: parent {index + 1}")
        for index, item in enumerate(top.tables("parent"))
    )
    scenario = Scenario(
        parents=parents,
        first_iommu_group=sim.number("first_iommu_group", 0),
        vfio_major=sim.number("vfio_major", 243, minimum=1),
        mdev_state_events=sim.flag("mdev_state_events", True),
        vfio_cdev=sim.flag("vfio_cdev", False),
        source=source,
        nvidia_gpus=tuple(
            _nvidia_gpu(item, f"{source}: nvidia_gpu {index + 1}")
            for index, item in enumerate(top.tables("nvidia_gpu"))
        ),
    )
    sim.finish()
    top.finish()
    _check_devpaths(scenario)
    return scenario


def load(path: str | Path) -> Scenario:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(f"{path}: {exc.strerror}") from None
    return parse(text, str(path))
