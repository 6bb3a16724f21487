# SPDX-License-Identifier: LGPL-2.1-or-later
"""The sysfs view of the emulated kernel: every directory, attribute file and link.

`build` renders the model (`state.Kernel`) as an immutable map from path (relative to the mount
root, which plays /sys) to node. It is rebuilt whenever the model's generation changes, so a
lookup never sees half an operation. Attribute files carry `show`/`store` callables bound to the
model object they belong to; a file opened before its object went away keeps its callables, and
those answer ENODEV, as kernfs does for removed nodes.

The hidden `.sim/` directory is the test side: the control file, the uevent log, and the emulated
`/dev/vfio/<group>` nodes and VFIO device nodes (`/dev/vfio/devices/vfioN`).
"""

from __future__ import annotations

import errno
import functools
import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass

from mdevd.sim import control, sriov
from mdevd.sim.scenario import TypeSpec, pci_address
from mdevd.sim.state import Device, DeviceState, Kernel, Parent, Registration, fail

MODE_RO = 0o444
MODE_WO = 0o200
MODE_RW = 0o644


@dataclass(frozen=True, slots=True)
class Directory:
    entries: tuple[str, ...]
    #: Nonzero for a directory the kernel creates afresh with its object (a registration's
    #: mdev_supported_types, a device): its inode number changes with each new object.
    identity: int = 0


@dataclass(frozen=True, slots=True)
class Symlink:
    target: str


@dataclass(frozen=True, slots=True)
class Attribute:
    mode: int
    show: Callable[[], bytes] | None = None
    store: Callable[[bytes], None] | None = None
    #: Called when the file is opened; raises OSError to refuse the open.
    on_open: Callable[[], None] | None = None
    #: Called when an open of it (one that `on_open` let through) is released.
    on_release: Callable[[], None] | None = None
    #: Errors of this file carry a message the opener may read back (the control file).
    reports_errors: bool = False


Node = Directory | Symlink | Attribute
Tree = dict[str, Node]


class _Builder:
    def __init__(self) -> None:
        self._children: dict[str, set[str]] = {"": set()}
        self._nodes: dict[str, Node] = {}
        self._identities: dict[str, int] = {}

    def dir(self, path: str, identity: int = 0) -> None:
        if identity:
            self._identities[path] = identity
        if path in self._children:
            return
        self._children[path] = set()
        parent, _, name = path.rpartition("/")
        self.dir(parent)
        self._children[parent].add(name)

    def _leaf(self, path: str, node: Node) -> None:
        parent, _, name = path.rpartition("/")
        self.dir(parent)
        self._children[parent].add(name)
        self._nodes[path] = node

    def file(self, path: str, node: Attribute) -> None:
        self._leaf(path, node)

    def link(self, path: str, target: str) -> None:
        """A symlink to `target` (a path from the root), stored relative like sysfs's."""
        self._leaf(path, Symlink(_relative(target, posixpath.dirname(path))))

    def text(self, path: str, content: str) -> None:
        data = content.encode()
        self.file(path, Attribute(MODE_RO, show=lambda: data))

    def merge(self, other: _Builder) -> None:
        """Add everything `other` built (a fragment) to this tree."""
        self._nodes.update(other._nodes)
        self._identities.update(other._identities)
        for path, names in other._children.items():
            mine = self._children.get(path)
            if mine is None:
                self._children[path] = set(names)
            else:
                mine |= names

    def finish(self) -> Tree:
        tree: Tree = dict(self._nodes)
        for path, names in self._children.items():
            tree[path] = Directory(tuple(sorted(names)), self._identities.get(path, 0))
        return tree


@functools.lru_cache(maxsize=1 << 16)
def _relative(target: str, directory: str) -> str:
    # The same links are made at every rebuild, and relpath was most of a rebuild's time.
    return posixpath.relpath(target, directory or ".")


#: The driver core's runtime-PM files (`power/`) of a device no driver manages power for, as
#: Linux 6.1 shows them: 0644 ones are writable there, here they refuse writes (EACCES).
_POWER_FILES = (
    ("async", MODE_RW, b"disabled\n"),
    ("autosuspend_delay_ms", MODE_RW, None),  # EIO: runtime PM does not use autosuspend
    ("control", MODE_RW, b"auto\n"),
    ("runtime_active_kids", MODE_RO, b"0\n"),
    ("runtime_active_time", MODE_RO, b"0\n"),
    ("runtime_enabled", MODE_RO, b"disabled\n"),
    ("runtime_status", MODE_RO, b"unsupported\n"),
    ("runtime_suspended_time", MODE_RO, b"0\n"),
    ("runtime_usage", MODE_RO, b"0\n"),
)


def _no_autosuspend() -> bytes:
    fail(errno.EIO, "autosuspend is not used")


def _power_files(builder: _Builder, devpath: str) -> None:
    """`power/`, which the driver core gives every device and takes first when it goes."""
    for name, mode, content in _POWER_FILES:
        show = _no_autosuspend if content is None else (lambda data=content: data)
        builder.file(f"{devpath}/power/{name}", Attribute(mode, show=show))


def _uevent_file(
    kernel: Kernel, devpath: str, subsystem: str, properties: Callable[[], dict[str, str]]
) -> Attribute:
    def show() -> bytes:
        return "".join(f"{k}={v}\n" for k, v in properties().items()).encode()

    def store(data: bytes) -> None:
        kernel.synthetic_uevent(devpath, subsystem, properties(), data)

    return Attribute(MODE_RW, show=show, store=store)


def _type_files(
    builder: _Builder, kernel: Kernel, parent: Parent, spec: TypeSpec, registration: Registration
) -> None:
    base = f"{parent.spec.devpath}/mdev_supported_types/{spec.type_id}"
    builder.dir(f"{base}/devices")

    def create(data: bytes) -> None:
        kernel.create_device(parent, spec, registration, data)

    def available() -> bytes:
        with kernel.lock:
            if parent.registration is not registration:
                fail(errno.ENODEV, "type is gone")
            return f"{kernel.available_instances(parent, spec)}\n".encode()

    builder.file(f"{base}/create", Attribute(MODE_WO, store=create))
    builder.file(f"{base}/available_instances", Attribute(MODE_RO, show=available))
    builder.text(f"{base}/name", f"{spec.name}\n")
    builder.text(f"{base}/device_api", f"{spec.device_api}\n")
    if spec.description is not None:
        builder.text(f"{base}/description", f"{spec.description}\n")


def _device_files(builder: _Builder, kernel: Kernel, device: Device) -> None:
    parent = device.parent
    path = device.devpath
    builder.dir(path, identity=device.serial)
    # Present until the driver has let go, i.e. also while a removal waits for the VM.
    builder.link(f"{path}/iommu_group", f"kernel/iommu_groups/{device.iommu_group}")
    builder.link(f"{path}/driver", f"bus/mdev/drivers/{parent.spec.driver}")
    _vfio_dev_files(
        builder,
        kernel,
        path,
        device.vfio_dev_devpath,
        device.vfio_dev_index,
        Attribute(
            0o600,
            on_open=lambda: kernel.open_vfio_cdev(device),
            on_release=lambda: kernel.close_vfio_cdev(device),
        ),
    )
    _iommu_group_member(builder, device.iommu_group, path)
    _vfio_group_files(
        builder,
        kernel,
        device.iommu_group,
        device.vfio_minor,
        Attribute(
            0o600,
            on_open=lambda: kernel.open_vfio_group(device),
            on_release=lambda: kernel.close_vfio_group(device),
        ),
    )
    if device.state is not DeviceState.ACTIVE:
        # The core unlinks the type, the bus and the attributes before waiting for the driver.
        return
    type_dir = f"{parent.spec.devpath}/mdev_supported_types/{device.mdev_type.type_id}"
    builder.link(f"{path}/mdev_type", type_dir)
    builder.link(f"{type_dir}/devices/{device.uuid}", path)
    builder.link(f"bus/mdev/devices/{device.uuid}", path)
    builder.link(f"bus/mdev/drivers/{parent.spec.driver}/{device.uuid}", path)
    builder.link(f"{path}/subsystem", "bus/mdev")

    def bound() -> dict[str, str]:
        return {"DRIVER": parent.spec.driver} if device.state is DeviceState.ACTIVE else {}

    builder.file(f"{path}/uevent", _uevent_file(kernel, path, "mdev", bound))

    def remove(data: bytes) -> None:
        kernel.remove_device(device, data)

    builder.file(f"{path}/remove", Attribute(MODE_WO, store=remove))
    _power_files(builder, path)
    spec = device.mdev_type
    for name, value in spec.readonly:
        builder.text(f"{path}/{name}", value.replace("{uuid}", device.uuid) + "\n")
    for attribute in spec.attributes:
        builder.file(f"{path}/{attribute.name}", _attribute_file(kernel, device, attribute.name))
    if spec.vfio_ap is not None:
        for action in ("assign", "unassign"):
            for what in ("adapter", "domain", "control_domain"):
                name = f"{action}_{what}"
                builder.file(f"{path}/{name}", _attribute_file(kernel, device, name))

        def matrix() -> bytes:
            with kernel.lock:
                _check_active(device)
                return Kernel.ap_matrix(device).encode()

        def control_domains() -> bytes:
            with kernel.lock:
                _check_active(device)
                return "".join(f"{d:04x}\n" for d in sorted(device.ap_control_domains)).encode()

        builder.file(f"{path}/matrix", Attribute(MODE_RO, show=matrix))
        builder.file(f"{path}/control_domains", Attribute(MODE_RO, show=control_domains))


#: The major number of VFIO device nodes (the kernel allocates one at boot; 237 is typical).
VFIO_CDEV_MAJOR = 237


def _vfio_dev_files(
    builder: _Builder,
    kernel: Kernel,
    device_path: str,
    vfio_dev_devpath: str,
    index: int,
    node: Attribute,
) -> None:
    """`<device>/vfio-dev/vfioN`, the VFIO device (since 6.1), and its class/vfio-dev link.
    With the scenario's `vfio_cdev` (CONFIG_VFIO_DEVICE_CDEV), also its char device: a `dev`
    file, MAJOR/MINOR/DEVNAME in its uevent, and `node`, /dev/vfio/devices/vfioN; without
    it, as on Debian 12's kernels, none of these."""
    builder.dir(vfio_dev_devpath)
    _power_files(builder, vfio_dev_devpath)
    builder.link(f"{vfio_dev_devpath}/subsystem", "class/vfio-dev")
    builder.link(f"{vfio_dev_devpath}/device", device_path)
    cdev_props: dict[str, str] = {}
    if kernel.scenario.vfio_cdev:
        builder.text(f"{vfio_dev_devpath}/dev", f"{VFIO_CDEV_MAJOR}:{index}\n")
        cdev_props = {
            "MAJOR": str(VFIO_CDEV_MAJOR),
            "MINOR": str(index),
            "DEVNAME": f"vfio/devices/vfio{index}",
        }
        builder.file(f"{control.VFIO_CDEV_DIR}/vfio{index}", node)
    builder.file(
        f"{vfio_dev_devpath}/uevent",
        _uevent_file(kernel, vfio_dev_devpath, "vfio-dev", lambda: cdev_props),
    )
    builder.link(f"class/vfio-dev/vfio{index}", vfio_dev_devpath)


def _iommu_group_member(builder: _Builder, group: int, device_path: str) -> None:
    builder.link(
        f"kernel/iommu_groups/{group}/devices/{posixpath.basename(device_path)}", device_path
    )
    builder.text(f"kernel/iommu_groups/{group}/type", "DMA\n")


def _vfio_group_files(
    builder: _Builder, kernel: Kernel, group: int, minor: int, node: Attribute
) -> None:
    """The vfio group's char device (devices/virtual/vfio/N) and `node`, its /dev/vfio/N."""
    group_path = f"devices/virtual/vfio/{group}"
    major = kernel.scenario.vfio_major
    builder.text(f"{group_path}/dev", f"{major}:{minor}\n")
    _power_files(builder, group_path)
    builder.link(f"{group_path}/subsystem", "class/vfio")
    group_props = {"MAJOR": str(major), "MINOR": str(minor), "DEVNAME": f"vfio/{group}"}
    builder.file(
        f"{group_path}/uevent", _uevent_file(kernel, group_path, "vfio", lambda: group_props)
    )
    builder.link(f"class/vfio/{group}", group_path)
    builder.file(f"{control.VFIO_DIR}/{group}", node)


def _check_active(device: Device) -> None:
    if device.state is not DeviceState.ACTIVE:
        fail(errno.ENODEV, f"{device.uuid} is gone")


def _attribute_file(kernel: Kernel, device: Device, name: str) -> Attribute:
    def store(data: bytes) -> None:
        kernel.write_attribute(device, name, data)

    return Attribute(MODE_WO, store=store)


def _parent_files(builder: _Builder, kernel: Kernel, parent: Parent) -> None:
    spec = parent.spec
    builder.dir(spec.devpath)
    _power_files(builder, spec.devpath)
    builder.link(f"{spec.devpath}/subsystem", spec.subsystem_path)
    builder.file(
        f"{spec.devpath}/uevent",
        _uevent_file(
            kernel, spec.devpath, spec.subsystem, lambda: kernel.parent_properties(parent)
        ),
    )
    if spec.subsystem_path.startswith("class/"):
        builder.link(f"{spec.subsystem_path}/{spec.name}", spec.devpath)
    else:
        builder.link(f"{spec.subsystem_path}/devices/{spec.name}", spec.devpath)
    registration = parent.registration
    if registration is None:
        return
    if registration.active:
        builder.link(f"class/mdev_bus/{spec.name}", spec.devpath)
    builder.dir(f"{spec.devpath}/mdev_supported_types", identity=registration.serial)
    if registration.types_ready:
        for type_spec in spec.types:
            _type_files(builder, kernel, parent, type_spec, registration)
    for device in parent.devices:
        builder.merge(_device_fragment(kernel, device))


#: Each device's part of the tree (by the device's serial), kept while the device and its
#: being active stay the same: rebuilding every device's nodes at every change made creating
#: the n-th device cost O(n). `build` drops the parts of devices that are gone. (Not a
#: WeakKeyDictionary: a fragment's callbacks refer to their device, so its key never died, and
#: every device ever created stayed in memory, ~40 KB each.)
_fragments: dict[int, tuple[bool, _Builder]] = {}


def _device_fragment(kernel: Kernel, device: Device) -> _Builder:
    active = device.state is DeviceState.ACTIVE
    cached = _fragments.get(device.serial)
    if cached is not None and cached[0] == active:
        return cached[1]
    fragment = _Builder()
    _device_files(fragment, kernel, device)
    _fragments[device.serial] = (active, fragment)
    return fragment


def _forget_gone_devices(kernel: Kernel) -> None:
    known = {device.serial for device in kernel.devices.values()}
    for serial in _fragments.keys() - known:
        del _fragments[serial]


# -- NVIDIA vendor-VFIO GPUs and their SR-IOV VFs (sriov.py) --------------------------------------

NVIDIA_DRIVER_DIR = f"bus/pci/drivers/{sriov.DRIVER}"
_VF_ATTRIBUTES = ("gpu_instance_id", "placement_id", "vgpu_params", "warm_update")


def _pci_device_files(
    builder: _Builder,
    kernel: Kernel,
    gpu: sriov.Gpu,
    devpath: str,
    address: str,
    device_id: str,
    bound: Callable[[], bool],
    identity: int = 0,
) -> None:
    """What the PCI core and the driver core give the PF and each VF."""
    builder.dir(devpath, identity=identity)
    _power_files(builder, devpath)
    builder.link(f"{devpath}/subsystem", "bus/pci")
    builder.file(
        f"{devpath}/uevent",
        _uevent_file(
            kernel, devpath, "pci", lambda: kernel.nvidia.properties(gpu, address, bound())
        ),
    )
    builder.text(f"{devpath}/vendor", "0x10de\n")
    builder.text(f"{devpath}/device", f"{device_id}\n")
    pci_class = dict(gpu.spec.uevent).get("PCI_CLASS")
    if pci_class is not None and re.fullmatch(r"[0-9A-Fa-f]{1,6}", pci_class):
        builder.text(f"{devpath}/class", f"0x{int(pci_class, 16):06x}\n")
    builder.link(f"bus/pci/devices/{address}", devpath)
    if bound():
        builder.link(f"{devpath}/driver", NVIDIA_DRIVER_DIR)
        builder.link(f"{NVIDIA_DRIVER_DIR}/{address}", devpath)


def _pf_files(builder: _Builder, kernel: Kernel, gpu: sriov.Gpu) -> None:
    spec = gpu.spec
    path = spec.devpath
    _pci_device_files(builder, kernel, gpu, path, spec.name, spec.device, lambda: gpu.bound)
    builder.text(f"{path}/sriov_totalvfs", f"{spec.total_vfs}\n")

    def numvfs() -> bytes:
        with kernel.lock:
            return f"{len(gpu.vfs)}\n".encode()

    def set_numvfs(data: bytes) -> None:
        kernel.nvidia.write_sriov_numvfs(gpu, data)

    builder.file(f"{path}/sriov_numvfs", Attribute(MODE_RW, show=numvfs, store=set_numvfs))
    pf, first = pci_address(spec.name), pci_address(spec.vf_addresses[0])
    assert pf is not None and first is not None
    builder.text(f"{path}/sriov_offset", f"{first[1] - pf[1]}\n")
    builder.text(f"{path}/sriov_stride", "1\n")
    builder.text(f"{path}/sriov_vf_device", f"{spec.vf_device[2:]}\n")
    for vf in gpu.vfs:
        if vf.linked:
            builder.link(f"{path}/virtfn{vf.index}", vf.devpath)


def _vf_files(builder: _Builder, kernel: Kernel, vf: sriov.VirtualFunction) -> None:
    gpu, path, binding = vf.gpu, vf.devpath, vf.binding
    _pci_device_files(
        builder,
        kernel,
        gpu,
        path,
        vf.address,
        gpu.spec.vf_device,
        lambda: vf.binding is not None,
        identity=vf.serial,
    )
    if vf.linked:
        builder.link(f"{path}/physfn", gpu.spec.devpath)
    builder.link(f"{path}/iommu_group", f"kernel/iommu_groups/{vf.iommu_group}")
    _iommu_group_member(builder, vf.iommu_group, path)
    if binding is None:
        return
    nvidia = kernel.nvidia
    builder.dir(f"{path}/nvidia", identity=binding.serial)
    builder.file(
        f"{path}/nvidia/creatable_vgpu_types",
        Attribute(MODE_RO, show=lambda: nvidia.creatable_vgpu_types(vf, binding)),
    )

    def set_type(data: bytes) -> None:
        nvidia.write_current_vgpu_type(vf, binding, data)

    builder.file(
        f"{path}/nvidia/current_vgpu_type",
        Attribute(MODE_RW, show=lambda: nvidia.current_vgpu_type(vf, binding), store=set_type),
    )
    for name in _VF_ATTRIBUTES:

        def show(name: str = name) -> bytes:
            return nvidia.plain_value(vf, binding, name)

        def store(data: bytes, name: str = name) -> None:
            nvidia.write_plain_value(vf, binding, name, data)

        builder.file(f"{path}/nvidia/{name}", Attribute(MODE_RW, show=show, store=store))
    _vfio_dev_files(
        builder,
        kernel,
        path,
        vf.vfio_dev_devpath,
        binding.vfio_dev_index,
        Attribute(
            0o600,
            on_open=lambda: nvidia.open_vfio_cdev(vf, binding),
            on_release=lambda: nvidia.close_vfio_cdev(binding),
        ),
    )
    _vfio_group_files(
        builder,
        kernel,
        vf.iommu_group,
        binding.vfio_minor,
        Attribute(
            0o600,
            on_open=lambda: nvidia.open_vfio_group(vf, binding),
            on_release=lambda: nvidia.close_vfio_group(binding),
        ),
    )


#: Each VF's part of the tree (by the VF's serial), kept while its binding and links stay the
#: same, so that a GPU with 32 VFs does not rebuild them all at every change.
_vf_fragments: dict[int, tuple[tuple[int, bool], _Builder]] = {}


def _vf_fragment(kernel: Kernel, vf: sriov.VirtualFunction) -> _Builder:
    key = (vf.binding.serial if vf.binding is not None else 0, vf.linked)
    cached = _vf_fragments.get(vf.serial)
    if cached is not None and cached[0] == key:
        return cached[1]
    fragment = _Builder()
    _vf_files(fragment, kernel, vf)
    _vf_fragments[vf.serial] = (key, fragment)
    return fragment


def _nvidia_files(builder: _Builder, kernel: Kernel) -> None:
    builder.dir(NVIDIA_DRIVER_DIR)
    for gpu in kernel.nvidia.gpus.values():
        _pf_files(builder, kernel, gpu)
        for vf in gpu.vfs:
            builder.merge(_vf_fragment(kernel, vf))
    known = {vf.serial for vf in kernel.nvidia.vfs.values()}
    for serial in _vf_fragments.keys() - known:
        del _vf_fragments[serial]


def build(kernel: Kernel, control_file: Attribute) -> Tree:
    """Render the model. Call with `kernel.lock` held."""
    builder = _Builder()
    for path in (
        "class/mdev_bus",
        "bus/mdev/devices",
        "kernel/iommu_groups",
        "devices/virtual",
        control.VFIO_DIR,
    ):
        builder.dir(path)
    if kernel.scenario.vfio_cdev:
        builder.dir(control.VFIO_CDEV_DIR)
    for parent in kernel.parents.values():
        builder.dir(f"bus/mdev/drivers/{parent.spec.driver}")
        if parent.present:
            _parent_files(builder, kernel, parent)
    if kernel.nvidia.gpus:
        _nvidia_files(builder, kernel)
    builder.file(control.CONTROL_PATH, control_file)
    builder.file(control.UEVENT_LOG_PATH, Attribute(MODE_RO, show=kernel.uevents.log_text))
    _forget_gone_devices(kernel)
    return builder.finish()
