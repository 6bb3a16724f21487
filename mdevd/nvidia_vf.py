# SPDX-License-Identifier: LGPL-2.1-or-later
"""The `nvidia-vf` backend: NVIDIA vGPUs on SR-IOV virtual functions (docs/nvidia-vf.md).

On Ada and later GPUs a vGPU is a type id written into a VF's `nvidia/current_vgpu_type`; the
VF stays bound to `nvidia`. The parent is the GPU (the PF); its types are what its free VFs list
in `nvidia/creatable_vgpu_types`. The kernel keeps no UUID for a VF, so this backend records
which UUID it placed on which VF (`PlacementRecord`), with the identity of the VF's `nvidia/`
directory, which a driver reload makes anew: a restarted daemon adopts its vGPUs, and a VF
another tool set is shown under a UUID derived from its address and never chosen.

Every path is built from names that passed `mdevd.validate` (PCI addresses), under the same
configurable root as the mdev backend. Synchronous, like `mdevd.kernel`: called from worker
threads. The writes send no uevent (the note's §7), so everything is read back after a write.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import threading
import time
import uuid as uuid_module
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from mdevd import atomic, defaults, validate
from mdevd.errors import (
    AttributeRejected,
    Busy,
    Exists,
    InvalidArgument,
    InvalidName,
    KernelIOError,
    NoInstancesAvailable,
    NotActive,
    ParentNotFound,
    TypeNotSupported,
)
from mdevd.kernel import listdir as _listdir
from mdevd.kernel import open_vfio, vfio_group_in_use
from mdevd.model import (
    BACKEND_NVIDIA_VF,
    NOTHING,
    ActiveDevice,
    MdevType,
    Parent,
    UeventMeaning,
)

log = logging.getLogger(__name__)

#: How mdevd, Proxmox and libvirt-era mdev types spell NVIDIA's type ids.
TYPE_PREFIX = "nvidia-"
#: The driver these VFs stay bound to; its directory lists every device it has.
DRIVER = "nvidia"
#: The first line of every `creatable_vgpu_types` (the R5xx source prints it unconditionally).
HEADER = "ID    : vGPU Name"
#: One type line, `%-5d : name`; the parser the KubeVirt device plugin uses, which every other
#: consumer's parser agrees with on the driver's output.
_TYPE_LINE = re.compile(r"\s*([0-9]{1,9})\s*:\s*(.+?)\s*")
#: What a sysfs read returns at most (show() fills one page).
_READ_LIMIT = 4096
#: The most VFs one PF can have (PCI SR-IOV's NumVFs is 16 bits; real GPUs have 16 to 32).
MAX_VFS = 256
#: The placement record holds at most this many UUIDs; past it, the oldest inactive ones go.
MAX_RECORDS = 4096
#: Bytes of placement record read at most: a corrupt or hostile file cannot exhaust memory.
MAX_RECORD_BYTES = 4 * 1024 * 1024
#: The namespace of the UUIDs of VFs another tool set (a UUIDv5 of the VF's address).
FOREIGN_NAMESPACE = uuid_module.UUID("6d5e4a0c-5a3b-4f7e-9c1d-2b8f0e6a7c31")


def type_number(type_id: str) -> int | None:
    """NVIDIA's numeric id of `nvidia-1145` or `1145`; None if it is neither."""
    digits = type_id.removeprefix(TYPE_PREFIX)
    if not digits.isascii() or not digits.isdigit() or len(digits) > 9:
        return None
    return int(digits)


def canonical_type(type_id: str) -> str:
    """`1145` and `nvidia-1145` are both `nvidia-1145`; anything else is left as it is."""
    number = type_number(type_id)
    return f"{TYPE_PREFIX}{number}" if number is not None else type_id


def parse_creatable(text: str) -> dict[int, str]:
    """The types of a `creatable_vgpu_types` read: id -> vendor name, in the driver's order.
    The header and any line that is not `id : name` are skipped (as every consumer does)."""
    types: dict[int, str] = {}
    for line in text.splitlines():
        match = _TYPE_LINE.fullmatch(line)
        if match is not None:
            types.setdefault(int(match.group(1)), match.group(2))
    return types


def foreign_uuid(vf: str) -> str:
    """The UUID a vGPU another tool set on `vf` is shown under: the same on every read."""
    return str(uuid_module.uuid5(FOREIGN_NAMESPACE, f"nvidia-vf:{vf}"))


#: The identity of a VF's `nvidia/` directory, which the driver creates anew at each load.
Identity = tuple[int, int]


@dataclass(frozen=True, slots=True)
class Placed:
    """One UUID's place: the VF, the type written there, the `nvidia/` directory's identity
    at that time, and whether it is still there (False: only the VF to prefer next time)."""

    vf: str
    type_id: str
    identity: Identity
    active: bool


class PlacementRecord:
    """Which UUID mdevd placed on which VF: a JSON file, replaced atomically (not fsynced).

    A damaged file is reported and read as empty: at worst mdevd's vGPUs then show as
    another tool's, and are left alone, which is the safe side.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: dict[str, Placed] = {}

    def load(self) -> None:
        try:
            with open(self.path, "rb") as file:
                data = file.read(MAX_RECORD_BYTES + 1)
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("cannot read %s: %s; no vGPU placed before is adopted", self.path, exc)
            return
        try:
            if len(data) > MAX_RECORD_BYTES:
                raise ValueError(f"larger than {MAX_RECORD_BYTES} bytes")
            self.records = _parse_records(json.loads(data))
        except (ValueError, TypeError, KeyError, InvalidName) as exc:
            log.warning("%s is damaged (%s); no vGPU placed before is adopted", self.path, exc)
            self.records = {}

    def save(self) -> None:
        document = {
            "version": 1,
            "devices": {
                uuid: {
                    "vf": placed.vf,
                    "type": placed.type_id,
                    "identity": list(placed.identity),
                    "active": placed.active,
                }
                for uuid, placed in self.records.items()
            },
        }
        atomic.ensure_directory(self.path.parent)
        # Not fsynced: after a crash of the host every VF is cleared, and the record only
        # says which VF to prefer; the rename still makes every reader see a whole file.
        atomic.write_atomic(
            self.path, (json.dumps(document, indent=1) + "\n").encode(), durable=False
        )

    def put(self, uuid: str, placed: Placed) -> None:
        self.records.pop(uuid, None)  # to the end: the newest
        self.records[uuid] = placed
        while len(self.records) > MAX_RECORDS:
            oldest = next((u for u, p in self.records.items() if not p.active), None)
            del self.records[oldest if oldest is not None else next(iter(self.records))]
        self.save()


def _parse_records(document: object) -> dict[str, Placed]:
    if not isinstance(document, dict) or document.get("version") != 1:
        raise ValueError("not a version 1 placement record")
    devices = document["devices"]
    if not isinstance(devices, dict):
        raise ValueError("'devices' is not a table")
    records: dict[str, Placed] = {}
    for uuid, entry in list(devices.items())[-MAX_RECORDS:]:
        identity = entry["identity"]
        if not (
            isinstance(identity, list)
            and len(identity) == 2
            and all(isinstance(i, int) for i in identity)
        ):
            raise ValueError(f"{uuid}: bad identity")
        type_id = entry["type"]
        if not isinstance(type_id, str) or type_number(type_id) is None:
            raise ValueError(f"{uuid}: bad type")
        records[validate.uuid(uuid)] = Placed(
            vf=validate.pci_address(entry["vf"], "vf"),
            type_id=canonical_type(type_id),
            identity=(identity[0], identity[1]),
            active=bool(entry["active"]),
        )
    return records


@dataclass(frozen=True, slots=True)
class VirtualFunction:
    """What one read of a VF found."""

    address: str
    #: Its `virtfn<N>` number on the PF: the order VFs are chosen in.
    index: int
    pf: str
    sysfs_path: str
    identity: Identity
    #: The type set now (0: none).
    current: int
    creatable: dict[int, str]
    iommu_group: int


class NvidiaVf:
    """Reads and changes NVIDIA's per-VF vGPU types under `root` (the `nvidia-vf` backend)."""

    def __init__(
        self,
        root: Path | str = defaults.SYSFS_ROOT,
        dev_root: Path | str = defaults.DEV_ROOT,
        state_file: Path | str = defaults.STATE_DIR / defaults.NVIDIA_VF_STATE_NAME,
        remove_retry_seconds: float = defaults.NVIDIA_VF_REMOVE_RETRY_SECONDS,
        retry_interval: float = 0.5,
    ) -> None:
        self.root = Path(root)
        self.dev_root = Path(dev_root)
        self.remove_retry_seconds = remove_retry_seconds
        self.retry_interval = retry_interval
        self._record = PlacementRecord(Path(state_file))
        self._record.load()
        # Guards the record and the caches below: worker threads call in concurrently.
        self._lock = threading.RLock()
        #: Every type seen on each GPU since the daemon started (id -> name): listed with 0
        #: available once the driver stops offering them, so a refusal can say why.
        self._catalog: dict[str, dict[int, str]] = {}
        #: The PFs and VFs the last read found (read by `interpret_uevent` on the loop).
        self._known: frozenset[str] = frozenset()
        #: Where the last read found each shown UUID (foreign ones have no record).
        self._where: dict[str, str] = {}

    # ---- paths -----------------------------------------------------------------------------

    def _device_dir(self, address: str) -> Path:
        return self.root / "bus" / "pci" / "devices" / validate.pci_address(address, "device")

    def _vgpu_file(self, vf: str, name: str) -> Path:
        return self._device_dir(vf) / "nvidia" / name

    # ---- reading ---------------------------------------------------------------------------

    def _pf_addresses(self) -> list[str]:
        """The PFs with at least one VF bound to `nvidia`, sorted."""
        pfs: set[str] = set()
        for name in _listdir(self.root / "bus" / "pci" / "drivers" / DRIVER):
            try:
                address = validate.pci_address(name, "device")
            except InvalidName:
                continue  # bind, unbind, new_id, module...
            pf = _link_name(self._device_dir(address) / "physfn")
            if pf is not None and os.path.isdir(self._device_dir(address) / "nvidia"):
                pfs.add(pf)
        return sorted(pfs)

    def _read_vfs(self, pf: str) -> list[VirtualFunction]:
        """The PF's VFs that have an `nvidia/` directory, by `virtfn` number."""
        pf_dir = self._device_dir(pf)
        numbered: list[tuple[int, str]] = []
        for name in _listdir(pf_dir):
            if name.startswith("virtfn") and name[6:].isdigit() and int(name[6:]) < MAX_VFS:
                address = _link_name(pf_dir / name)
                if address is not None:
                    numbered.append((int(name[6:]), address))
        found = []
        for index, address in sorted(numbered):
            vf = self._read_vf(pf, index, address)
            if vf is not None:
                found.append(vf)
        return found

    def _read_vf(self, pf: str, index: int, address: str) -> VirtualFunction | None:
        try:
            address = validate.pci_address(address, "device")
        except InvalidName:
            return None
        device_dir = self._device_dir(address)
        try:
            st = os.stat(device_dir / "nvidia")
            current = _read_int(device_dir / "nvidia" / "current_vgpu_type")
            creatable = parse_creatable(_read_text(device_dir / "nvidia" / "creatable_vgpu_types"))
        except (OSError, ValueError):
            return None  # not bound to nvidia (any more), or going away
        group = _link_name(device_dir / "iommu_group")
        return VirtualFunction(
            address=address,
            index=index,
            pf=pf,
            sysfs_path=os.path.realpath(device_dir),
            identity=(st.st_dev, st.st_ino),
            current=current,
            creatable=creatable,
            iommu_group=int(group) if group is not None and group.isdigit() else -1,
        )

    def _read_pf(self, pf: str) -> list[VirtualFunction]:
        try:
            vfs = self._read_vfs(validate.pci_address(pf, "parent"))
        except InvalidName:
            vfs = []  # no GPU has that name (an mdev parent's, `matrix`, a typo)
        if not vfs:
            raise ParentNotFound(f"GPU {pf} has no virtual function bound to {DRIVER}")
        with self._lock:
            catalog = self._catalog.setdefault(pf, {})
            for vf in vfs:
                for number, name in vf.creatable.items():
                    catalog.setdefault(number, name)
                if vf.current:
                    catalog.setdefault(vf.current, "")
            self._known = self._known | {pf, *(vf.address for vf in vfs)}
        return vfs

    def _parent_of(self, pf: str, vfs: Sequence[VirtualFunction]) -> Parent:
        with self._lock:
            catalog = dict(self._catalog.get(pf, {}))
        types = {}
        for number, name in sorted(catalog.items()):
            available = sum(1 for vf in vfs if not vf.current and number in vf.creatable)
            type_id = f"{TYPE_PREFIX}{number}"
            types[type_id] = MdevType(type_id, name, "", "vfio-pci", available)
        return Parent(
            name=pf,
            sysfs_path=os.path.realpath(self._device_dir(pf)),
            subsystem="pci",
            types=types,
            backend=BACKEND_NVIDIA_VF,
        )

    def parent_names(self) -> list[str]:
        names = self._pf_addresses()
        with self._lock:
            self._known = frozenset(names) | self._known
        return names

    def read_parent(self, parent: str) -> Parent:
        return self._parent_of(parent, self._read_pf(parent))

    def read_parent_and_registration(self, parent: str) -> tuple[Parent, tuple[int, int]]:
        """The GPU, and its registration: the identities of its VFs' `nvidia/` directories,
        which change when VFs are added or the driver is loaded again (autostart then runs)."""
        vfs = self._read_pf(parent)
        identities = tuple(sorted(vf.identity for vf in vfs))
        return self._parent_of(parent, vfs), (vfs[0].identity[0], hash(identities))

    def read_available_instances(self, parent: str, type_ids: Sequence[str]) -> dict[str, int]:
        types = self.read_parent(parent).types
        missing = [type_id for type_id in type_ids if type_id not in types]
        if missing:
            raise TypeNotSupported(f"GPU {parent} does not offer {', '.join(missing)}")
        return {type_id: types[type_id].available_instances for type_id in type_ids}

    def probe_parent(self, devpath: str) -> bool:
        return False  # a VF's events make the engine rescan (interpret_uevent)

    def _device_of(self, vf: VirtualFunction) -> ActiveDevice:
        return ActiveDevice(
            uuid=self._owner(vf),
            parent=vf.pf,
            type_id=f"{TYPE_PREFIX}{vf.current}",
            sysfs_path=vf.sysfs_path,
            iommu_group=vf.iommu_group,
            backend=BACKEND_NVIDIA_VF,
            placement=vf.address,
        )

    def _owner(self, vf: VirtualFunction) -> str:
        """The UUID of the vGPU on `vf`: the one mdevd placed there while every part of its
        record still holds, else the VF's derived UUID (another tool's vGPU)."""
        with self._lock:
            for uuid, placed in self._record.records.items():
                if (
                    placed.active
                    and placed.vf == vf.address
                    and placed.identity == vf.identity
                    and placed.type_id == f"{TYPE_PREFIX}{vf.current}"
                ):
                    return uuid
        return foreign_uuid(vf.address)

    def list_devices(self) -> dict[str, ActiveDevice]:
        devices: dict[str, ActiveDevice] = {}
        for pf in self._pf_addresses():
            try:
                vfs = self._read_pf(pf)
            except ParentNotFound:
                continue
            for vf in vfs:
                if vf.current:
                    device = self._device_of(vf)
                    devices[device.uuid] = device
        with self._lock:
            self._where = {uuid: device.placement for uuid, device in devices.items()}
        return devices

    def read_device(self, uuid: str) -> ActiveDevice | None:
        uuid = validate.uuid(uuid)
        with self._lock:
            placed = self._record.records.get(uuid)
            address = placed.vf if placed is not None and placed.active else self._where.get(uuid)
        if address is None:
            return None
        vf = self._read_vf_at(address)
        if vf is None or not vf.current:
            return None
        device = self._device_of(vf)
        return device if device.uuid == uuid else None

    def _read_vf_at(self, address: str) -> VirtualFunction | None:
        pf = _link_name(self._device_dir(address) / "physfn")
        if pf is None:
            return None
        for name in _listdir(self._device_dir(pf)):
            if name.startswith("virtfn") and _link_name(self._device_dir(pf) / name) == address:
                return self._read_vf(pf, int(name[6:]) if name[6:].isdigit() else 0, address)
        return None

    # ---- changing --------------------------------------------------------------------------

    def create(self, parent: str, type_id: str, uuid: str, placement: str = "") -> ActiveDevice:
        """Place a vGPU of `type_id` on a free VF of GPU `parent` (or on VF `placement`)."""
        uuid = validate.uuid(uuid)
        number = type_number(type_id)
        what = f"device {uuid}"
        if number is None:
            raise TypeNotSupported(f"{what}: {type_id!r} is not an NVIDIA vGPU type id")
        placement = validate.pci_address(placement)
        with self._lock:
            vfs = self._read_pf(parent)
            for vf in vfs:
                if vf.current and self._owner(vf) == uuid:
                    raise Exists(f"{what} is already active on VF {vf.address}")
            candidates = self._candidates(uuid, vfs, number, placement, what)
            for vf in candidates:
                placed = Placed(vf.address, f"{TYPE_PREFIX}{number}", vf.identity, True)
                # Recorded before the write: should mdevd die between the two, the vGPU is
                # still its own when it starts again (and only a preference if the write
                # never happened: a VF at 0 matches no record).
                self._record.put(uuid, placed)
                try:
                    self._write_type(vf, number, what, vfs)
                except _TakenMeanwhile:
                    self._record.put(uuid, Placed(vf.address, placed.type_id, vf.identity, False))
                    continue
                except BaseException:
                    self._record.put(uuid, Placed(vf.address, placed.type_id, vf.identity, False))
                    raise
                device = self._device_of(replace(vf, current=number, creatable={}))
                self._where[uuid] = vf.address
                return device
        raise NoInstancesAvailable(
            f"{what}: every free VF of GPU {parent} that offered type {TYPE_PREFIX}{number}"
            " was taken by another tool meanwhile"
        )

    def _candidates(
        self,
        uuid: str,
        vfs: Sequence[VirtualFunction],
        number: int,
        placement: str,
        what: str,
    ) -> list[VirtualFunction]:
        pf = vfs[0].pf
        if placement:
            pinned = [vf for vf in vfs if vf.address == placement]
            if not pinned:
                raise InvalidArgument(
                    f"{what}: placement {placement} is not a virtual function of GPU {pf}"
                    " bound to nvidia"
                )
            if pinned[0].current:
                raise NoInstancesAvailable(
                    f"{what}: VF {placement} has vGPU type {TYPE_PREFIX}{pinned[0].current}"
                    f" already ({self._owner(pinned[0])})"
                )
            return pinned
        free = [vf for vf in vfs if not vf.current and number in vf.creatable]
        if not free:
            raise NoInstancesAvailable(f"{what}: {self._why_not(pf, vfs, number)}")
        previous = self._record.records.get(uuid)
        free.sort(key=lambda vf: (previous is None or vf.address != previous.vf, vf.index))
        return free

    def _why_not(self, pf: str, vfs: Sequence[VirtualFunction], number: int) -> str:
        """Why no VF of the GPU offers the type now: what the admin needs at 3 a.m."""
        catalog = self._catalog.get(pf, {})
        name = catalog.get(number) or f"{TYPE_PREFIX}{number}"
        running = sorted({vf.current for vf in vfs if vf.current})
        free = [vf for vf in vfs if not vf.current]
        if not free:
            return f"GPU {pf} has no free VF ({len(vfs)} VFs, each with a vGPU)"
        if running:
            shown = ", ".join(f"{TYPE_PREFIX}{n} ({catalog.get(n) or 'unnamed'})" for n in running)
            if not any(vf.creatable for vf in free):
                return f"GPU {pf} is full: its free VFs offer no type ({shown} running)"
            return (
                f"GPU {pf} does not offer {name} now: {shown} running, and NVIDIA's driver"
                " then offers only types of the same size (unless the GPU is in"
                " heterogeneous mode)"
            )
        return f"no free VF of GPU {pf} offers {name}"

    def _write_type(
        self, vf: VirtualFunction, number: int, what: str, vfs: Sequence[VirtualFunction]
    ) -> None:
        path = self._vgpu_file(vf.address, "current_vgpu_type")
        try:
            _write(path, str(number))
        except OSError as exc:
            code = exc.errno
            if code == errno.EPERM:
                raise _TakenMeanwhile() from exc  # another tool set a type first
            if code == errno.EBUSY:
                raise Busy(f"{what}: VF {vf.address} is busy") from exc
            if code in (errno.EINVAL, errno.ENOSPC, errno.ERANGE):
                with self._lock:
                    reason = self._why_not(vf.pf, vfs, number)
                raise NoInstancesAvailable(
                    f"{what}: the driver refused type {TYPE_PREFIX}{number} on VF"
                    f" {vf.address} ({os.strerror(code)}): {reason}"
                ) from exc
            if code == errno.ENODEV:
                raise TypeNotSupported(
                    f"{what}: GPU {vf.pf} has no vGPU type {TYPE_PREFIX}{number}"
                ) from exc
            if code == errno.ENOENT:
                raise ParentNotFound(f"{what}: VF {vf.address} went away") from exc
            raise KernelIOError(f"{what}: writing {number} on VF {vf.address}: {exc}") from exc
        try:
            now = _read_int(path)
        except (OSError, ValueError) as exc:
            raise KernelIOError(f"{what}: reading VF {vf.address} back: {exc}") from exc
        if now != number:
            try:
                _write(path, "0")
            except OSError as exc:
                log.error("%s: clearing VF %s again failed: %s", what, vf.address, exc)
            raise KernelIOError(f"{what}: wrote type {number} on VF {vf.address}, reads {now}")

    def remove(self, uuid: str, *, check_busy: bool = True) -> None:
        """Clear the VF's type; `Busy` at once while a VM has the VF's vfio group open, and
        after `remove_retry_seconds` of the driver answering EBUSY (it does for a while after
        QEMU exits)."""
        device = self.read_device(uuid)
        what = f"device {uuid}"
        if device is None:
            raise NotActive(f"{what} is not present in the kernel")
        group = device.iommu_group
        if check_busy and group >= 0 and vfio_group_in_use(self.dev_root, group):
            raise Busy(f"{what} is in use (vfio group {group} of VF {device.placement} is open)")
        path = self._vgpu_file(device.placement, "current_vgpu_type")
        deadline = time.monotonic() + self.remove_retry_seconds
        while True:
            try:
                _write(path, "0")
                break
            except OSError as exc:
                if exc.errno == errno.EBUSY and time.monotonic() < deadline:
                    time.sleep(self.retry_interval)
                    continue
                if exc.errno == errno.EBUSY:
                    raise Busy(
                        f"{what}: VF {device.placement} stayed busy for"
                        f" {self.remove_retry_seconds:g} s"
                    ) from exc
                if exc.errno in (errno.EPERM, errno.ENOENT, errno.ENODEV):
                    raise NotActive(f"{what} went away during removal") from exc
                raise KernelIOError(f"{what}: clearing VF {device.placement}: {exc}") from exc
        with self._lock:
            placed = self._record.records.get(uuid)
            if placed is not None and placed.active:
                self._record.put(uuid, Placed(placed.vf, placed.type_id, placed.identity, False))
            self._where.pop(uuid, None)

    def write_attribute(self, uuid: str, name: str, value: str) -> None:
        raise AttributeRejected(
            f"device {uuid}: nvidia-vf vGPUs take no attributes (what the driver's"
            f" nvidia/{validate.attribute_name(name)} accepts is not documented)"
        )

    def open_vfio(self, uuid: str, cdev: bool = False) -> int:
        device = self.read_device(uuid)
        if device is None:
            raise NotActive(f"device {uuid} is not present in the kernel")
        return open_vfio(self.dev_root, device, cdev)

    def enable_sriov(self, pf: str) -> int:
        """Enable the PF's VFs (`sriov_totalvfs` into `sriov_numvfs`) if none are; the number
        enabled now. Never resizes what is set: the kernel refuses that while VFs exist."""
        device_dir = self._device_dir(validate.pci_address(pf, "GPU"))
        try:
            enabled = _read_int(device_dir / "sriov_numvfs")
            if enabled:
                return enabled
            total = _read_int(device_dir / "sriov_totalvfs")
            _write(device_dir / "sriov_numvfs", str(min(total, MAX_VFS)))
            return _read_int(device_dir / "sriov_numvfs")
        except (OSError, ValueError) as exc:
            raise KernelIOError(f"enabling SR-IOV on GPU {pf}: {exc}") from exc

    # ---- events and spellings (on the loop: no I/O) ------------------------------------------

    def interpret_uevent(
        self, action: str, subsystem: str, devpath: str, properties: dict[str, str]
    ) -> UeventMeaning:
        """A VF or GPU coming, going, or (un)binding: look again. Writes send no events."""
        if subsystem != "pci" or action not in ("add", "remove", "bind", "unbind"):
            return NOTHING
        name = devpath.rsplit("/", 1)[-1]
        if properties.get("DRIVER") == DRIVER or name in self._known:
            return UeventMeaning(rescan=True)
        return NOTHING

    def canonical_type(self, parent: str, type_id: str) -> str:
        return canonical_type(type_id)

    def create_events(self, parent: str) -> tuple[str, ...]:
        return ()

    def remove_events(self, uuid: str) -> tuple[str, ...]:
        return ()


class _TakenMeanwhile(Exception):
    """The VF got a type between the read and the write (EPERM): try the next one."""


def _link_name(path: Path) -> str | None:
    """The last component of where a sysfs link leads; None if it is absent."""
    try:
        return os.path.basename(os.readlink(path))
    except OSError:
        return None


def _read_text(path: Path) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, _READ_LIMIT).decode("utf-8", errors="replace")
    finally:
        os.close(fd)


def _read_int(path: Path) -> int:
    return int(_read_text(path).strip())


def _write(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)
