# SPDX-License-Identifier: LGPL-2.1-or-later
"""NVIDIA's vendor-specific VFIO vGPUs: SR-IOV virtual functions bound to `nvidia`.

On Ada, Hopper and Blackwell GPUs a vGPU is not an mdev. The GPU (the PF) enables SR-IOV
virtual functions; each VF stays bound to `nvidia`, which gives it a `nvidia/` attribute group
and registers it with VFIO, and a vGPU type is chosen per VF by writing its number to
`<VF>/nvidia/current_vgpu_type`. What is emulated, and where each rule comes from, is in
docs/emulated-kernel.md ("NVIDIA vGPUs on SR-IOV VFs"); the facts and their sources are in the
project's research note on the NVIDIA vendor VFIO interface ("note §N" below).

`NvidiaVfio` is owned by `state.Kernel` and works under its lock: SR-IOV enabling and disabling
(the PCI core's `sriov_numvfs`), the driver binding and unbinding (`nvidia load|unload`), a VM
holding a VF's VFIO device, and the vGPU type of each VF with the GPU's capacity accounting.
"""

from __future__ import annotations

import errno
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mdevd.sim.scenario import NvidiaGpuSpec, NvidiaTypeSpec
from mdevd.sim.state import PAGE_SIZE, fail, kstrtoul, new_serial

if TYPE_CHECKING:
    from mdevd.sim.state import Kernel

DRIVER = "nvidia"
#: `creatable_vgpu_types` starts with this line whatever follows (note §2, R5xx source).
CREATABLE_HEADER = "ID    : vGPU Name\n"
#: The values of the plain `nvidia/` attributes on a VF without a vGPU type. Their meaning and
#: write formats are not known (note §1): they are stored as written, one newline stripped.
PLAIN_ATTRIBUTES = {
    "gpu_instance_id": "0",
    "placement_id": "0",
    "vgpu_params": "",
    "warm_update": "0",
}
_PCI_UEVENT_ORDER = ("PCI_CLASS", "PCI_ID", "PCI_SUBSYS_ID", "PCI_SLOT_NAME", "MODALIAS")
_LONG_MAX = 2**63 - 1
_ULLONG_MAX = 2**64 - 1


def kstrtol(data: bytes) -> int:
    """The kernel's kstrtol(buf, 10, &val), which `current_vgpu_type` parses with (note §3).

    An optional '+' or '-', decimal digits, one optional trailing newline; nothing else (no
    white space, no 0x). EINVAL when unparsable, ERANGE beyond a long (checked first, as
    _kstrtoull checks overflow before the trailing characters).
    """
    text = data.split(b"\0", 1)[0]  # sysfs buffers are C strings
    negative = text.startswith(b"-")
    if negative or text.startswith(b"+"):
        text = text[1:]
    length = 0
    while length < len(text) and text[length : length + 1].isdigit():
        length += 1
    magnitude = int(text[:length]) if length else 0
    if magnitude > _ULLONG_MAX or magnitude > _LONG_MAX + negative:
        fail(errno.ERANGE, "number out of range")
    if length == 0 or text[length:] not in (b"", b"\n"):
        fail(errno.EINVAL, "not a decimal number")
    return -magnitude if negative else magnitude


@dataclass(eq=False)
class VfBinding:
    """One period during which a VF is bound to nvidia: its `nvidia/` group and VFIO device.

    Nothing survives an unbind (the driver's state goes with it); files opened under one
    binding answer ENODEV after it, as kernfs does for removed nodes.
    """

    vfio_minor: int
    vfio_dev_index: int
    #: Identity of the `nvidia/` directory: a fresh inode number per binding.
    serial: int = field(default_factory=new_serial)
    vgpu: NvidiaTypeSpec | None = None
    #: Start of the vGPU's framebuffer range in GB while a type is set.
    placement: int = 0
    values: dict[str, str] = field(default_factory=lambda: dict(PLAIN_ATTRIBUTES))
    #: A VM has the VF's VFIO device open (`hold-vf`).
    held: bool = False
    #: Someone has /dev/vfio/<group> open (one opener at a time, as vfio allows).
    group_open: bool = False
    #: Someone has /dev/vfio/devices/vfioN open (see `Kernel.open_vfio_cdev`).
    cdev_open: bool = False
    #: After the VM let go, clearing the type stays busy until then (time.monotonic()).
    busy_until: float = 0.0


@dataclass(eq=False)
class VirtualFunction:
    gpu: Gpu
    index: int
    iommu_group: int
    binding: VfBinding | None = None
    #: Identity of the VF's directory: a new one for each enabling of SR-IOV.
    serial: int = field(default_factory=new_serial)
    #: False once its removal started: `virtfnN` and `physfn` are gone first.
    linked: bool = True

    @property
    def address(self) -> str:
        return self.gpu.spec.vf_addresses[self.index]

    @property
    def devpath(self) -> str:
        return self.gpu.spec.vf_devpath(self.index)

    @property
    def vfio_dev_devpath(self) -> str:
        assert self.binding is not None
        return f"{self.devpath}/vfio-dev/vfio{self.binding.vfio_dev_index}"

    @property
    def vfio_group_devpath(self) -> str:
        return f"devices/virtual/vfio/{self.iommu_group}"


@dataclass(eq=False)
class Gpu:
    spec: NvidiaGpuSpec
    #: The PF is bound to nvidia.
    bound: bool
    #: Enabled VFs in VF order (sriov_numvfs is their number).
    vfs: list[VirtualFunction] = field(default_factory=list)
    #: An unload or an SR-IOV disable is under way (waiting for a VM): others wait for it, as
    #: they would for the kernel's device lock.
    busy: bool = False


@dataclass
class _Fault:
    error: int
    remaining: int


class NvidiaVfio:
    """The vendor-VFIO GPUs of a scenario. Every method takes the kernel's lock itself, except
    those whose names start with an underscore, which expect it held."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.gpus: dict[str, Gpu] = {}
        #: Present VFs by address.
        self.vfs: dict[str, VirtualFunction] = {}
        self._type_faults: dict[str, _Fault] = {}
        for spec in kernel.scenario.nvidia_gpus:
            self.gpus[spec.name] = Gpu(spec=spec, bound=spec.driver_loaded)

    def populate(self) -> None:
        """The VFs enabled at mount, present since boot: no uevents."""
        with self.kernel.lock:
            for gpu in self.gpus.values():
                for index in range(gpu.spec.enabled_vfs):
                    self._add_vf(gpu, index, announce=False)

    # -- queries (lock held) -----------------------------------------------------------------

    def iommu_groups(self) -> set[int]:
        return {vf.iommu_group for vf in self.vfs.values()}

    def bindings(self) -> list[VfBinding]:
        return [vf.binding for vf in self.vfs.values() if vf.binding is not None]

    @staticmethod
    def properties(gpu: Gpu, address: str, bound: bool) -> dict[str, str]:
        """A PF's or VF's uevent properties in the kernel's order: DRIVER while bound (the
        driver core's), then pci_uevent's PCI_CLASS, PCI_ID, PCI_SUBSYS_ID, PCI_SLOT_NAME and
        MODALIAS (those the scenario gives), then any other of the scenario's."""
        extra = dict(gpu.spec.uevent)
        extra["PCI_SLOT_NAME"] = address
        properties = {"DRIVER": DRIVER} if bound else {}
        for key in _PCI_UEVENT_ORDER:
            if key in extra:
                properties[key] = extra.pop(key)
        properties.update(extra)
        return properties

    def _gpu(self, name: str) -> Gpu:
        gpu = self.gpus.get(name)
        if gpu is None:
            fail(errno.ENOENT, f"no nvidia_gpu {name!r} in the scenario")
        return gpu

    def _vf(self, address: str) -> VirtualFunction:
        vf = self.vfs.get(address)
        if vf is None:
            fail(errno.ENOENT, f"no VF {address} (SR-IOV not enabled, or not in the scenario)")
        return vf

    def _vgpus(self, gpu: Gpu) -> list[VfBinding]:
        return [
            vf.binding for vf in gpu.vfs if vf.binding is not None and vf.binding.vgpu is not None
        ]

    def _placement(self, gpu: Gpu, size: int) -> int | None:
        """The lowest free size-aligned framebuffer range for a vGPU of `size` GB, or None."""
        taken = [(b.placement, b.placement + b.vgpu.size) for b in self._vgpus(gpu) if b.vgpu]
        for start in range(0, gpu.spec.framebuffer - size + 1, size):
            if all(start + size <= low or start >= high for low, high in taken):
                return start
        return None

    def _refusal(self, gpu: Gpu, spec: NvidiaTypeSpec) -> int | None:
        """Why a vGPU of this type cannot be created on a free VF now (an errno), or None."""
        sizes = {b.vgpu.size for b in self._vgpus(gpu) if b.vgpu}
        if not gpu.spec.heterogeneous and sizes and spec.size not in sizes:
            return gpu.spec.size_conflict_errno
        if self._placement(gpu, spec.size) is None:
            return gpu.spec.full_errno
        return None

    @staticmethod
    def _busy(binding: VfBinding) -> bool:
        return binding.held or time.monotonic() < binding.busy_until

    def _release_busy_seconds(self, gpu: Gpu) -> float:
        override = self.kernel.delay_setting("vf-release")
        return gpu.spec.release_busy_seconds if override is None else override

    # -- the nvidia/ attributes ----------------------------------------------------------------

    def _check_binding(self, vf: VirtualFunction, binding: VfBinding) -> None:
        if vf.binding is not binding:
            fail(errno.ENODEV, f"{vf.address} is no longer bound to nvidia as it was")

    def creatable_vgpu_types(self, vf: VirtualFunction, binding: VfBinding) -> bytes:
        """The proprietary driver's list (note §2, §4): always the header, then one line per
        type this VF can take now; a VF with a type, or a full GPU, lists the header only."""
        with self.kernel.lock:
            self._check_binding(vf, binding)
            lines = [CREATABLE_HEADER]
            if binding.vgpu is None:
                lines += [
                    f"{spec.type_id:<5d} : {spec.name}\n"
                    for spec in vf.gpu.spec.types
                    if self._refusal(vf.gpu, spec) is None
                ]
            return "".join(lines).encode()

    def current_vgpu_type(self, vf: VirtualFunction, binding: VfBinding) -> bytes:
        """`"%d\\n"` of the type, 0 without one (note §3, R5xx source)."""
        with self.kernel.lock:
            self._check_binding(vf, binding)
            return f"{binding.vgpu.type_id if binding.vgpu else 0}\n".encode()

    def write_current_vgpu_type(self, vf: VirtualFunction, binding: VfBinding, data: bytes) -> None:
        """Set (non-zero) or clear (0) the VF's vGPU type; synchronous, no uevent (note §3, §7).

        Checked in this order: kstrtol (EINVAL, ERANGE); an injected fault; a VM holding the VF
        or having just let go (busy_errno: RFC v2 tests it before anything else); then `0`
        without a type or non-zero with one (EPERM, R5xx source), an id the GPU does not have
        (unknown_type_errno), a type of another size in homogeneous mode (size_conflict_errno),
        no free framebuffer range (full_errno).
        """
        value = kstrtol(data[:PAGE_SIZE])
        with self.kernel.lock:
            self._check_binding(vf, binding)
            gpu = vf.gpu
            fault = self._take_fault(vf.address)
            if fault:
                fail(fault, f"injected fault on {vf.address}")
            if self._busy(binding):
                fail(gpu.spec.busy_errno, f"{vf.address} is in use by a VM")
            if value == 0:
                if binding.vgpu is None:
                    fail(errno.EPERM, "Failed to remove vGPU. No vGPU exists on current device")
                binding.vgpu = None
                binding.placement = 0
                binding.values["gpu_instance_id"] = PLAIN_ATTRIBUTES["gpu_instance_id"]
                binding.values["placement_id"] = PLAIN_ATTRIBUTES["placement_id"]
                return
            if binding.vgpu is not None:
                fail(
                    errno.EPERM,
                    f"vGPU device already created with type ID: {binding.vgpu.type_id}",
                )
            spec = gpu.spec.type(value)
            if spec is None:
                fail(gpu.spec.unknown_type_errno, f"{gpu.spec.name} has no vGPU type {value}")
            refusal = self._refusal(gpu, spec)
            if refusal is not None:
                fail(refusal, f"{gpu.spec.name} cannot take a {spec.name} now")
            placement = self._placement(gpu, spec.size)
            assert placement is not None
            binding.vgpu = spec
            binding.placement = placement
            binding.values["placement_id"] = str(placement)

    def plain_value(self, vf: VirtualFunction, binding: VfBinding, name: str) -> bytes:
        with self.kernel.lock:
            self._check_binding(vf, binding)
            return f"{binding.values[name]}\n".encode()

    def write_plain_value(
        self, vf: VirtualFunction, binding: VfBinding, name: str, data: bytes
    ) -> None:
        text = data[:PAGE_SIZE].split(b"\0", 1)[0].decode("utf-8", errors="replace")
        with self.kernel.lock:
            self._check_binding(vf, binding)
            binding.values[name] = text[:-1] if text.endswith("\n") else text

    def _take_fault(self, address: str) -> int:
        for key in (address, "*"):
            fault = self._type_faults.get(key)
            if fault is not None:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    del self._type_faults[key]
                return fault.error
        return 0

    # -- SR-IOV (the PCI core's sriov_numvfs) ---------------------------------------------------

    def write_sriov_numvfs(self, gpu: Gpu, data: bytes) -> None:
        """sriov_numvfs_store (drivers/pci/iov.c): kstrtou16(buf, 0), any failure EINVAL;
        more than sriov_totalvfs ERANGE; the current number does nothing; no PF driver ENOENT;
        0 disables; another number while enabled EBUSY."""
        try:
            value = kstrtoul(data[:PAGE_SIZE])
        except OSError:
            value = -1
        if not 0 <= value <= 0xFFFF:
            fail(errno.EINVAL, "not a number of VFs")
        if value > gpu.spec.total_vfs:
            fail(errno.ERANGE, f"{gpu.spec.name} has {gpu.spec.total_vfs} VFs at most")
        with self.kernel.lock:
            self._wait_idle(gpu)
            if value == len(gpu.vfs):
                return
            if not gpu.bound:
                fail(errno.ENOENT, "no driver bound to device; cannot configure SR-IOV")
            if value == 0:
                gpu.busy = True
                try:
                    # sriov_del_vfs: VF 0 first.
                    for vf in list(gpu.vfs):
                        self._remove_vf(vf)
                finally:
                    gpu.busy = False
                    self.kernel.changed()
                return
            if gpu.vfs:
                fail(errno.EBUSY, f"{len(gpu.vfs)} VFs already enabled; disable first")
            for index in range(value):
                self._add_vf(gpu, index, announce=True)
            # sriov_enable announces the PF's change once the VFs are there.
            self._emit("change", gpu.spec.devpath, self.properties(gpu, gpu.spec.name, gpu.bound))

    def _wait_idle(self, gpu: Gpu) -> None:
        while gpu.busy and not self.kernel.stopping:
            self.kernel.lock.wait()

    def _emit(self, action: str, devpath: str, properties: dict[str, str]) -> None:
        self.kernel.uevents.emit(action, devpath, "pci", **properties)

    def _add_vf(self, gpu: Gpu, index: int, announce: bool) -> None:
        """pci_iov_add_virtfn: the device (`add`), its virtfn/physfn links (`change`), and the
        probe by nvidia when the PF's driver is loaded (`bind`)."""
        vf = VirtualFunction(gpu=gpu, index=index, iommu_group=self.kernel.allocate_iommu_group())
        gpu.vfs.append(vf)
        self.vfs[vf.address] = vf
        self.kernel.changed()
        if announce:
            properties = self.properties(gpu, vf.address, False)
            self._emit("add", vf.devpath, properties)
            self._emit("change", vf.devpath, properties)
        if gpu.bound:
            self._bind_vf(vf, announce)

    def _bind_vf(self, vf: VirtualFunction, announce: bool) -> None:
        """nvidia's probe of a VF: the `nvidia/` group, then the VFIO device (its group node and
        vfio-dev), all before the driver core's `bind` (note §7)."""
        minor, index = self.kernel.allocate_vfio()
        vf.binding = VfBinding(vfio_minor=minor, vfio_dev_index=index)
        self.kernel.changed()
        if announce:
            self.kernel.emit_vfio_group("add", vf.iommu_group, minor)
            self.kernel.uevents.emit("add", vf.vfio_dev_devpath, "vfio-dev")
            self._emit("bind", vf.devpath, self.properties(vf.gpu, vf.address, True))

    def _unbind_vf(self, vf: VirtualFunction) -> None:
        """nvidia's remove of a VF: waits while a VM has the VFIO device open, as
        vfio_unregister_group_dev does; then vfio-dev and the group go, then `unbind`."""
        binding = vf.binding
        assert binding is not None
        while binding.held and not self.kernel.stopping:
            self.kernel.lock.wait()
        self.kernel.uevents.emit("remove", vf.vfio_dev_devpath, "vfio-dev")
        self.kernel.emit_vfio_group("remove", vf.iommu_group, binding.vfio_minor)
        binding.held = False
        vf.binding = None
        self.kernel.changed()
        self._emit("unbind", vf.devpath, self.properties(vf.gpu, vf.address, False))

    def _remove_vf(self, vf: VirtualFunction) -> None:
        """pci_iov_remove_virtfn: the links go, the driver unbinds, the device is removed."""
        vf.linked = False
        self.kernel.changed()
        if vf.binding is not None:
            self._unbind_vf(vf)
        vf.gpu.vfs.remove(vf)
        del self.vfs[vf.address]
        self.kernel.changed()
        self._emit("remove", vf.devpath, self.properties(vf.gpu, vf.address, False))

    # -- the control channel ------------------------------------------------------------------

    def load(self, name: str) -> None:
        """`nvidia load PF`: the PF binds, then each enabled VF (driver_attach's bus order)."""
        with self.kernel.lock:
            gpu = self._gpu(name)
            self._wait_idle(gpu)
            if gpu.bound and all(vf.binding is not None for vf in gpu.vfs):
                fail(errno.EALREADY, f"nvidia is already bound to {name}")
            if not gpu.bound:
                gpu.bound = True
                self.kernel.changed()
                self._emit("bind", gpu.spec.devpath, self.properties(gpu, name, True))
            for vf in gpu.vfs:
                if vf.binding is None:
                    self._bind_vf(vf, announce=True)

    def unload(self, name: str) -> None:
        """`nvidia unload PF`: the VFs unbind (the last bound first, as driver_detach takes
        them), then the PF. Blocks while a VM holds a VF. The VFs stay enabled."""
        with self.kernel.lock:
            gpu = self._gpu(name)
            self._wait_idle(gpu)
            if not gpu.bound and all(vf.binding is None for vf in gpu.vfs):
                fail(errno.EALREADY, f"nvidia is not bound to {name}")
            gpu.busy = True
            try:
                for vf in reversed(list(gpu.vfs)):
                    if vf.binding is not None:
                        self._unbind_vf(vf)
                if gpu.bound:
                    gpu.bound = False
                    self.kernel.changed()
                    self._emit("unbind", gpu.spec.devpath, self.properties(gpu, name, False))
            finally:
                gpu.busy = False
                self.kernel.changed()

    def hold(self, address: str) -> None:
        """`hold-vf VF`: a VM opens the VF's VFIO device. Without a vGPU type the driver's
        open_device answers ENODEV (note §3, R5xx source), and so does this command."""
        with self.kernel.lock:
            vf = self._vf(address)
            if vf.binding is None:
                fail(errno.ENODEV, f"{address} is not bound to nvidia")
            if vf.binding.vgpu is None:
                fail(errno.ENODEV, "current_vgpu_type of VF not configured")
            vf.binding.held = True
            self.kernel.changed()

    def release(self, address: str) -> None:
        """`release-vf VF`: the VM closes it; clearing stays busy for release_busy_seconds."""
        with self.kernel.lock:
            vf = self._vf(address)
            binding = vf.binding
            if binding is not None and binding.held:
                binding.held = False
                binding.busy_until = time.monotonic() + self._release_busy_seconds(vf.gpu)
                self.kernel.changed()

    def fault_vgpu_type(self, address: str, error: int, count: int) -> None:
        with self.kernel.lock:
            if address != "*" and not any(
                address in gpu.spec.vf_addresses for gpu in self.gpus.values()
            ):
                fail(errno.ENOENT, f"no VF {address} in the scenario")
            self._type_faults[address] = _Fault(error, count)

    def clear(self) -> None:
        """Part of `clear`: drop the injected faults (the lock is held by the caller)."""
        self._type_faults.clear()

    # -- /dev/vfio/<group> ------------------------------------------------------------------------

    def open_vfio_group(self, vf: VirtualFunction, binding: VfBinding) -> None:
        """One opener at a time; a VM holding the VF counts as one (as for mdev devices)."""
        with self.kernel.lock:
            if vf.binding is not binding:
                fail(errno.ENODEV, f"iommu group {vf.iommu_group} is gone")
            if binding.held or binding.group_open or binding.cdev_open:
                fail(errno.EBUSY, f"iommu group {vf.iommu_group} is in use")
            binding.group_open = True

    def close_vfio_group(self, binding: VfBinding) -> None:
        with self.kernel.lock:
            binding.group_open = False

    def open_vfio_cdev(self, vf: VirtualFunction, binding: VfBinding) -> None:
        """The VF's /dev/vfio/devices/vfioN: as the group node, one user at a time."""
        with self.kernel.lock:
            if vf.binding is not binding:
                fail(errno.ENODEV, f"vfio{binding.vfio_dev_index} is gone")
            if binding.held or binding.group_open or binding.cdev_open:
                fail(errno.EBUSY, f"vfio{binding.vfio_dev_index}: its group is in use")
            binding.cdev_open = True

    def close_vfio_cdev(self, binding: VfBinding) -> None:
        with self.kernel.lock:
            binding.cdev_open = False
