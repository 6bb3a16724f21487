# SPDX-License-Identifier: LGPL-2.1-or-later
"""The emulated kernel's behaviour: the mdev core, the parent drivers and vfio, as one model.

Everything observable goes through `Kernel`: creating and removing devices (with the errnos and
uevents of Linux 6.1's mdev core and sample drivers), parents registering and unregistering,
device attributes, vfio groups held by a VM, and the faults and delays the control channel
injects. One condition variable guards the model; operations that block in the real kernel
(removing a device a VM holds) wait on it, so every other operation keeps working meanwhile.
uevents are emitted while the lock is held, so their sequence numbers follow the model's order.

`generation` changes with every visible change; the sysfs view (`tree`) is rebuilt from it.
"""

from __future__ import annotations

import errno
import itertools
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, NoReturn, TypeVar

from mdevd.sim import control
from mdevd.sim.scenario import ParentSpec, Scenario, TypeSpec
from mdevd.sim.uevent import UeventSender

if TYPE_CHECKING:
    from mdevd.sim.sriov import NvidiaVfio

#: sysfs hands a store() at most one page.
PAGE_SIZE = 4096

_UUID_RE = re.compile(
    rb"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
_ULONG_MAX = 2**64 - 1
_K = TypeVar("_K")

#: Actions a write to a `uevent` file may synthesize (lib/kobject_uevent.c, kobject_actions).
SYNTHETIC_ACTIONS = ("add", "remove", "change", "move", "online", "offline", "bind", "unbind")

#: Numbers for kernel objects that sysfs shows with a fresh inode each time they are created
#: (kernfs numbers its nodes cyclically, so a number does not come back soon).
_object_serials = itertools.count(1)


def new_serial() -> int:
    """A fresh identity for a kernel object's directory (its inode numbers derive from it)."""
    return next(_object_serials)


def fail(code: int, message: str) -> NoReturn:
    raise OSError(code, message)


def kstrtoul(data: bytes) -> int:
    """The kernel's kstrtoul(buf, 0, &val): what `remove` and vfio-ap's attributes accept.

    Base from the prefix (0x hex, 0 octal, else decimal), an optional leading '+', one optional
    trailing newline, nothing else. EINVAL for anything unparsable, ERANGE beyond unsigned long.
    """
    text = data.split(b"\0", 1)[0]  # sysfs buffers are C strings
    if text.startswith(b"+"):
        text = text[1:]
    base = 10
    if text.startswith(b"0"):
        if text[1:2] in (b"x", b"X") and text[2:3] and text[2:3] in b"0123456789abcdefABCDEF":
            base, text = 16, text[2:]
        else:
            base = 8
    digits = b"0123456789abcdef"[:base]
    length = 0
    while length < len(text) and text[length : length + 1].lower() in digits:
        length += 1
    rest = text[length:]
    if length == 0 or rest not in (b"", b"\n"):
        fail(errno.EINVAL, "not a number")
    value = int(text[:length], base)
    if value > _ULONG_MAX:
        fail(errno.ERANGE, "number out of range")
    return value


def parse_create_uuid(data: bytes) -> str:
    """What the mdev core's `create` store accepts: 36 or 37 bytes, the first 36 a UUID.

    The 37th byte is ignored whatever it is (the core only parses the first 36), which is what
    lets `echo $uuid > create` work. Returns the UUID in lower case, the device's name.
    """
    if len(data) not in (36, 37):
        fail(errno.EINVAL, f"a UUID is written as 36 or 37 bytes, not {len(data)}")
    head = data[:36]
    if not _UUID_RE.fullmatch(head):
        fail(errno.EINVAL, "not a UUID")
    return head.decode("ascii").lower()


class DeviceState(Enum):
    ACTIVE = "active"
    #: `remove` was written; the driver waits for the VM to let go. Still counted, still holding
    #: its UUID, but gone from bus/mdev/devices and without its mdev_type link.
    REMOVING = "removing"
    GONE = "gone"


@dataclass(eq=False)
class Registration:
    """One period during which a parent is registered with the mdev core.

    Files opened under one registration answer ENODEV once it is over, as kernfs does for files
    whose node was removed, even if the parent registers again.
    """

    #: False from the moment unregistration starts: creates then fail with ENODEV.
    active: bool = True
    #: mdev_supported_types is populated (at once, unless `delay types` holds it back).
    types_ready: bool = True
    #: Identity of this registration's sysfs directories (their inode numbers derive from it).
    serial: int = field(default_factory=lambda: next(_object_serials))


@dataclass(eq=False)
class Device:
    uuid: str
    parent: Parent
    mdev_type: TypeSpec
    iommu_group: int
    vfio_minor: int
    vfio_dev_index: int
    state: DeviceState = DeviceState.ACTIVE
    #: A VM holds the vfio group: opening /dev/vfio/N fails with EBUSY, removal blocks.
    held: bool = False
    #: Someone has /dev/vfio/N open without using the device (libvirt does, to keep VMs out
    #: while it removes the device): vfio allows one opener, so other opens fail with EBUSY;
    #: removal does not wait for it.
    group_open: bool = False
    #: Someone has the VFIO device node /dev/vfio/devices/vfioN open (in Linux: bound it to
    #: an iommufd): the group and the node are then busy for everyone else.
    cdev_open: bool = False
    #: Last value written to each generic attribute.
    values: dict[str, str] = field(default_factory=dict)
    serial: int = field(default_factory=lambda: next(_object_serials))
    ap_adapters: set[int] = field(default_factory=set)
    ap_domains: set[int] = field(default_factory=set)
    ap_control_domains: set[int] = field(default_factory=set)

    @property
    def devpath(self) -> str:
        return f"{self.parent.spec.devpath}/{self.uuid}"

    @property
    def vfio_dev_devpath(self) -> str:
        return f"{self.devpath}/vfio-dev/vfio{self.vfio_dev_index}"

    @property
    def vfio_group_devpath(self) -> str:
        return f"devices/virtual/vfio/{self.iommu_group}"


@dataclass(eq=False)
class Parent:
    spec: ParentSpec
    #: The parent device exists in sysfs (always for a PCI GPU, while loaded for mtty).
    present: bool
    registration: Registration | None
    #: Creation order, which is also the order unregistration removes them in.
    devices: list[Device] = field(default_factory=list)


@dataclass
class _Fault:
    error: int
    remaining: int


class Kernel:
    def __init__(self, scenario: Scenario, uevents: UeventSender) -> None:
        self.scenario = scenario
        self.uevents = uevents
        self.lock = threading.Condition()
        self.generation = 0
        self.parents: dict[str, Parent] = {}
        for spec in scenario.parents:
            self.parents[spec.name] = Parent(
                spec=spec,
                present=spec.registered or not spec.owned_by_driver,
                registration=Registration() if spec.registered else None,
            )
        #: Every UUID the mdev core knows, on any parent, including devices being removed.
        self.devices: dict[str, Device] = {}
        self._create_faults: dict[tuple[str, str], _Fault] = {}
        self._attribute_faults: dict[tuple[str, str], _Fault] = {}
        self._remove_faults: dict[str, _Fault] = {}
        self._delays: dict[str, float] = {}
        self._stopping = threading.Event()
        #: Whether parents announce (un)registration with MDEV_STATE change events.
        self.mdev_state_events = scenario.mdev_state_events
        self._timers: list[threading.Timer] = []
        # Imported here: sriov builds on this module's primitives.
        from mdevd.sim.sriov import NvidiaVfio

        #: NVIDIA's vendor-VFIO GPUs (`[[nvidia_gpu]]`): their VFs take iommu groups and vfio
        #: minors from the same pools as mdev devices.
        self.nvidia: NvidiaVfio = NvidiaVfio(self)
        self.nvidia.populate()

    # -- queries (call with the lock held) -------------------------------------------------

    def groups(self) -> dict[int, Device]:
        return {d.iommu_group: d for d in self.devices.values()}

    def _core_available(self, parent: Parent, spec: TypeSpec) -> int | None:
        limits = []
        if parent.spec.max_instances is not None:
            limits.append(parent.spec.max_instances - len(parent.devices))
        if spec.max_instances is not None:
            same = sum(1 for d in parent.devices if d.mdev_type is spec)
            limits.append(spec.max_instances - same)
        if parent.spec.homogeneous and any(d.mdev_type is not spec for d in parent.devices):
            limits.append(0)
        return max(0, min(limits)) if limits else None

    def _pool_available(self, parent: Parent, spec: TypeSpec) -> int | None:
        if spec.pool is None:
            return None
        used = sum(d.mdev_type.cost for d in parent.devices if d.mdev_type.pool == spec.pool)
        return max(0, parent.spec.pools[spec.pool] - used) // spec.cost

    def available_instances(self, parent: Parent, spec: TypeSpec) -> int:
        counts = [
            c
            for c in (self._core_available(parent, spec), self._pool_available(parent, spec))
            if c is not None
        ]
        return min(counts)

    # -- helpers ---------------------------------------------------------------------------

    def _changed(self) -> None:
        self.generation += 1
        self.lock.notify_all()

    def changed(self) -> None:
        """Something visible changed (for the sriov module; the lock is held)."""
        self._changed()

    def allocate_iommu_group(self) -> int:
        """The lowest free iommu group number, as the kernel's IDA hands them out."""
        used = set(self.groups()) | self.nvidia.iommu_groups()
        return self._lowest_free(used, self.scenario.first_iommu_group)

    def allocate_vfio(self) -> tuple[int, int]:
        """The lowest free vfio group minor and vfio-dev index."""
        minors = {d.vfio_minor for d in self.devices.values()}
        indexes = {d.vfio_dev_index for d in self.devices.values()}
        for binding in self.nvidia.bindings():
            minors.add(binding.vfio_minor)
            indexes.add(binding.vfio_dev_index)
        return self._lowest_free(minors), self._lowest_free(indexes)

    def emit_vfio_group(self, action: str, group: int, minor: int) -> None:
        """The `add` or `remove` of a vfio group's char device, /dev/vfio/<group>."""
        self.uevents.emit(
            action,
            f"devices/virtual/vfio/{group}",
            "vfio",
            MAJOR=str(self.scenario.vfio_major),
            MINOR=str(minor),
            DEVNAME=f"/dev/vfio/{group}",
        )

    def delay_setting(self, kind: str) -> float | None:
        """The `delay` set for `kind` through the control channel, or None."""
        return self._delays.get(kind)

    def _delay(self, kind: str) -> None:
        with self.lock:
            seconds = self._delays.get(kind, 0.0)
        if seconds:
            self._stopping.wait(seconds)

    def _parent(self, name: str) -> Parent:
        parent = self.parents.get(name)
        if parent is None:
            fail(errno.ENOENT, f"no parent {name!r} in the scenario")
        return parent

    def _device(self, uuid: str) -> Device:
        device = self.devices.get(uuid.lower())
        if device is None:
            fail(errno.ENOENT, f"no device {uuid}")
        return device

    @staticmethod
    def _take(faults: dict[_K, _Fault], *keys: _K) -> int:
        """Consume one use of the first fault set for any of `keys`; its errno, or 0."""
        for key in keys:
            fault = faults.get(key)
            if fault is not None:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    del faults[key]
                return fault.error
        return 0

    @staticmethod
    def _lowest_free(used: Iterator[int] | set[int], start: int = 0) -> int:
        taken = set(used)
        number = start
        while number in taken:
            number += 1
        return number

    # -- the mdev core and the parent drivers ----------------------------------------------

    def create_device(
        self, parent: Parent, spec: TypeSpec, registration: Registration, data: bytes
    ) -> None:
        """A write to mdev_supported_types/<type>/create."""
        self._delay("create")
        uuid = parse_create_uuid(data)
        with self.lock:
            if parent.registration is not registration:
                fail(errno.ENODEV, f"parent {parent.spec.name} is no longer registered")
            if uuid in self.devices:
                fail(errno.EEXIST, f"{uuid} already exists")
            core = self._core_available(parent, spec)
            if core is not None and core <= 0:
                fail(errno.EUSERS, f"no instances of {spec.type_id} left")
            if not registration.active:
                fail(errno.ENODEV, f"parent {parent.spec.name} is being unregistered")
            devpath = f"{parent.spec.devpath}/{uuid}"
            # device_add() has happened before the driver's probe can fail: the failure is
            # visible as an add immediately followed by a remove, never a bind.
            self.uevents.emit("add", devpath, "mdev")
            error = self._take(self._create_faults, (parent.spec.name, spec.type_id))
            pool = self._pool_available(parent, spec)
            if not error and pool is not None and pool <= 0:
                error = parent.spec.pool_errno
            mixed = parent.spec.mixed_type_errno
            if not error and mixed and any(d.mdev_type is not spec for d in parent.devices):
                error = mixed  # the driver's own rule, which available_instances does not show
            if error:
                self.uevents.emit("remove", devpath, "mdev")
                fail(error, f"the {parent.spec.driver} driver refused {uuid}")
            minor, index = self.allocate_vfio()
            device = Device(
                uuid=uuid,
                parent=parent,
                mdev_type=spec,
                iommu_group=self.allocate_iommu_group(),
                vfio_minor=minor,
                vfio_dev_index=index,
            )
            parent.devices.append(device)
            self.devices[uuid] = device
            self._changed()
            self.uevents.emit(
                "add",
                device.vfio_group_devpath,
                "vfio",
                MAJOR=str(self.scenario.vfio_major),
                MINOR=str(device.vfio_minor),
                DEVNAME=f"/dev/vfio/{device.iommu_group}",
            )
            self.uevents.emit("add", device.vfio_dev_devpath, "vfio-dev")
            self.uevents.emit("bind", devpath, "mdev", DRIVER=parent.spec.driver)

    def remove_device(self, device: Device, data: bytes) -> None:
        """A write to <device>/remove."""
        self._delay("remove")
        value = kstrtoul(data[:PAGE_SIZE])
        with self.lock:
            if device.state is not DeviceState.ACTIVE:
                fail(errno.ENODEV, f"{device.uuid} is being removed or gone")
            if not value:
                return
            error = self._take(self._remove_faults, device.uuid, "*")
            if error:
                fail(error, f"the {device.parent.spec.driver} driver refused to remove it")
            self._remove(device)

    def _remove(self, device: Device) -> None:
        """Remove a device, waiting while a VM holds it. Called with the lock held."""
        device.state = DeviceState.REMOVING
        self._changed()
        while device.held and not self._stopping.is_set():
            self.lock.wait()
        self.uevents.emit("remove", device.vfio_dev_devpath, "vfio-dev")
        self.uevents.emit(
            "remove",
            device.vfio_group_devpath,
            "vfio",
            MAJOR=str(self.scenario.vfio_major),
            MINOR=str(device.vfio_minor),
            DEVNAME=f"/dev/vfio/{device.iommu_group}",
        )
        # The driver is already detached when the core announces the unbind: no DRIVER.
        self.uevents.emit("unbind", device.devpath, "mdev")
        self.uevents.emit("remove", device.devpath, "mdev")
        device.state = DeviceState.GONE
        device.held = False
        device.parent.devices.remove(device)
        del self.devices[device.uuid]
        self._changed()

    def write_attribute(self, device: Device, name: str, data: bytes) -> None:
        """A write to one of the type's device attributes."""
        self._delay("attribute")
        data = data[:PAGE_SIZE]
        with self.lock:
            if device.state is not DeviceState.ACTIVE:
                fail(errno.ENODEV, f"{device.uuid} is being removed or gone")
            error = self._take(self._attribute_faults, (device.uuid, name), ("*", name))
            if error:
                fail(error, f"the {device.parent.spec.driver} driver refused {name}")
            spec = device.mdev_type
            for attribute in spec.attributes:
                if attribute.name == name:
                    text = data.decode("utf-8", errors="replace")
                    text = text[:-1] if text.endswith("\n") else text
                    if not attribute.accept.fullmatch(text):
                        fail(errno.EINVAL, f"{name} does not take {text!r}")
                    device.values[name] = text
                    self._changed()
                    return
            if spec.vfio_ap is not None:
                self._write_ap_attribute(device, name, data)
                return
            fail(errno.ENOENT, f"{device.uuid} has no attribute {name}")

    def _write_ap_attribute(self, device: Device, name: str, data: bytes) -> None:
        """vfio-ap's assign_* and unassign_* stores (drivers/s390/crypto/vfio_ap_ops.c)."""
        ap = device.mdev_type.vfio_ap
        assert ap is not None
        action, _, what = name.partition("_")
        sets = {
            "adapter": (device.ap_adapters, ap.max_adapter),
            "domain": (device.ap_domains, ap.max_domain),
            "control_domain": (device.ap_control_domains, ap.max_domain),
        }
        if action not in ("assign", "unassign") or what not in sets:
            fail(errno.ENOENT, f"{device.uuid} has no attribute {name}")
        # The driver refuses changes while a guest uses the matrix.
        if device.held:
            fail(errno.EBUSY, f"{device.uuid} is in use by a guest")
        number = kstrtoul(data)
        target, highest = sets[what]
        if number > highest:
            fail(errno.ENODEV, f"{what} {number} is above the highest, {highest}")
        if action == "unassign":
            target.discard(number)
        else:
            added = number not in target
            target.add(number)
            if what != "control_domain" and self._ap_shared(device):
                if added:
                    target.discard(number)
                fail(errno.EADDRINUSE, f"{what} {number} is assigned to another device")
        self._changed()

    def _ap_shared(self, device: Device) -> bool:
        """Two matrix devices may not share an APQN (adapter x domain)."""
        return any(
            other is not device
            and device.ap_adapters & other.ap_adapters
            and device.ap_domains & other.ap_domains
            for other in device.parent.devices
        )

    @staticmethod
    def ap_matrix(device: Device) -> str:
        """vfio-ap's `matrix` file: APQNs, or only adapters or domains when one side is empty."""
        adapters, domains = sorted(device.ap_adapters), sorted(device.ap_domains)
        if adapters and domains:
            return "".join(f"{a:02x}.{d:04x}\n" for a in adapters for d in domains)
        if adapters:
            return "".join(f"{a:02x}.\n" for a in adapters)
        return "".join(f".{d:04x}\n" for d in domains)

    # -- parents coming and going ----------------------------------------------------------

    def register(self, name: str) -> None:
        """What loading the parent's driver does.

        With MDEV_STATE events (current kernels): `add` of a parent that did not exist, then
        `change` MDEV_STATE=registered. Without them (older kernels) the only trace is the
        parent's `add` (a driver's own device, such as mtty) or the driver's `bind` (a PCI GPU
        that stays), sent once registered. Either way the types are there by the event, unless
        `delay types` holds them back (a driver that fills them in later).
        """
        with self.lock:
            parent = self._parent(name)
            if parent.registration is not None:
                fail(errno.EALREADY, f"{name} is already registered")
            appeared = not parent.present
            properties = self.parent_properties(parent)
            if appeared and self.mdev_state_events:
                parent.present = True
                self._changed()
                self.uevents.emit("add", parent.spec.devpath, parent.spec.subsystem, **properties)
            types_delay = self._delays.get("types", 0.0)
            registration = Registration(types_ready=not types_delay)
            parent.present = True
            parent.registration = registration
            self._changed()
            if types_delay:
                self._later(types_delay, self._populate_types, parent, registration)
            if self.mdev_state_events:
                self.uevents.emit(
                    "change",
                    parent.spec.devpath,
                    parent.spec.subsystem,
                    **properties,
                    MDEV_STATE="registered",
                )
            elif appeared:
                self.uevents.emit("add", parent.spec.devpath, parent.spec.subsystem, **properties)
            else:
                self.uevents.emit(
                    "bind",
                    parent.spec.devpath,
                    parent.spec.subsystem,
                    **{"DRIVER": parent.spec.driver, **properties},
                )

    def _later(self, seconds: float, function: Callable[..., None], *args: object) -> None:
        timer = threading.Timer(seconds, function, args)
        timer.daemon = True
        self._timers = [t for t in self._timers if t.is_alive()] + [timer]
        timer.start()

    def _populate_types(self, parent: Parent, registration: Registration) -> None:
        with self.lock:
            if parent.registration is registration and not registration.types_ready:
                registration.types_ready = True
                self._changed()

    def unregister(self, name: str) -> None:
        """What unloading the parent's driver does: blocks while a VM holds one of its devices."""
        with self.lock:
            parent = self._parent(name)
            registration = parent.registration
            if registration is None or not registration.active:
                fail(errno.EALREADY, f"{name} is not registered")
            registration.active = False
            self._changed()
            while True:
                active = [d for d in parent.devices if d.state is DeviceState.ACTIVE]
                if active:
                    self._remove(active[0])
                elif parent.devices and not self._stopping.is_set():
                    self.lock.wait()  # another writer's removal is still blocked
                else:
                    break
            parent.registration = None
            self._changed()
            if self.mdev_state_events:
                self.uevents.emit(
                    "change",
                    parent.spec.devpath,
                    parent.spec.subsystem,
                    **self.parent_properties(parent),
                    MDEV_STATE="unregistered",
                )
            elif not parent.spec.owned_by_driver:
                # The driver is gone when the core announces the unbind: no DRIVER.
                unbound = self.parent_properties(parent)
                unbound.pop("DRIVER", None)
                self.uevents.emit("unbind", parent.spec.devpath, parent.spec.subsystem, **unbound)
            if parent.spec.owned_by_driver:
                parent.present = False
                self._changed()
                self.uevents.emit(
                    "remove",
                    parent.spec.devpath,
                    parent.spec.subsystem,
                    **self.parent_properties(parent),
                )

    @staticmethod
    def parent_properties(parent: Parent) -> dict[str, str]:
        return dict(parent.spec.uevent)

    # -- vfio ------------------------------------------------------------------------------

    def hold(self, uuid: str) -> None:
        with self.lock:
            self._device(uuid).held = True
            self._changed()

    def release(self, uuid: str) -> None:
        with self.lock:
            self._device(uuid).held = False
            self._changed()

    def open_vfio_group(self, device: Device) -> None:
        """Opening /dev/vfio/<group>: one opener at a time (a VM holding it counts as one);
        everyone else gets EBUSY until it is closed (`close_vfio_group`)."""
        with self.lock:
            if device.state is DeviceState.GONE:
                fail(errno.ENODEV, f"iommu group {device.iommu_group} is gone")
            if device.held or device.group_open or device.cdev_open:
                fail(errno.EBUSY, f"iommu group {device.iommu_group} is in use")
            device.group_open = True

    def close_vfio_group(self, device: Device) -> None:
        """The last reference to an open /dev/vfio/<group> went away."""
        with self.lock:
            device.group_open = False

    def open_vfio_cdev(self, device: Device) -> None:
        """Opening /dev/vfio/devices/vfioN: EBUSY while the group is open or held or the node
        is already open (Linux refuses the iommufd bind then, `vfio_device_block_group`, and
        one bind at a time: the emulation, without ioctls, refuses the open)."""
        with self.lock:
            if device.state is DeviceState.GONE:
                fail(errno.ENODEV, f"vfio device {device.vfio_dev_index} is gone")
            if device.held or device.group_open or device.cdev_open:
                fail(errno.EBUSY, f"vfio{device.vfio_dev_index}: its group is in use")
            device.cdev_open = True

    def close_vfio_cdev(self, device: Device) -> None:
        with self.lock:
            device.cdev_open = False

    # -- uevent files ----------------------------------------------------------------------

    def synthetic_uevent(
        self, devpath: str, subsystem: str, properties: dict[str, str], data: bytes
    ) -> None:
        """A write to a `uevent` file: `ACTION [UUID [KEY=VALUE...]]` (what `udevadm trigger`
        writes), answered by that event carrying SYNTH_UUID and SYNTH_ARG_* properties."""
        words = data.decode("utf-8", errors="replace").split()
        if not words or words[0] not in SYNTHETIC_ACTIONS:
            fail(errno.EINVAL, "unknown uevent action")
        extra = dict(properties)
        if len(words) > 1:
            if not _UUID_RE.fullmatch(words[1].encode()):
                fail(errno.EINVAL, "synthetic uevent UUID is not a UUID")
            extra["SYNTH_UUID"] = words[1]
            for pair in words[2:]:
                key, sep, value = pair.partition("=")
                if not sep or not key.isalnum():
                    fail(errno.EINVAL, f"bad synthetic uevent argument {pair!r}")
                extra[f"SYNTH_ARG_{key}"] = value
        else:
            extra["SYNTH_UUID"] = "0"
        with self.lock:
            self.uevents.emit(words[0], devpath, subsystem, **extra)

    # -- the control channel ---------------------------------------------------------------

    def execute(self, command: control.Command) -> None:
        match command:
            case control.Register(parent):
                self.register(parent)
            case control.Unregister(parent):
                self.unregister(parent)
            case control.FaultCreate(parent, type_id, error, count):
                with self.lock:
                    if self._parent(parent).spec.type(type_id) is None:
                        fail(errno.ENOENT, f"parent {parent} has no type {type_id}")
                    self._create_faults[(parent, type_id)] = _Fault(error, count)
            case control.FaultAttribute(uuid, name, error, count):
                with self.lock:
                    self._attribute_faults[(uuid, name)] = _Fault(error, count)
            case control.FaultRemove(uuid, error, count):
                with self.lock:
                    self._remove_faults[uuid] = _Fault(error, count)
            case control.Delay(kind, seconds):
                with self.lock:
                    self._delays[kind] = seconds
            case control.Hold(uuid):
                self.hold(uuid)
            case control.Release(uuid):
                self.release(uuid)
            case control.MdevStateEvents(enabled):
                with self.lock:
                    self.mdev_state_events = enabled
            case control.Clear():
                with self.lock:
                    self._create_faults.clear()
                    self._attribute_faults.clear()
                    self._remove_faults.clear()
                    self._delays.clear()
                    self.nvidia.clear()
            case control.NvidiaDriver(pf, loaded):
                if loaded:
                    self.nvidia.load(pf)
                else:
                    self.nvidia.unload(pf)
            case control.HoldVf(vf):
                self.nvidia.hold(vf)
            case control.ReleaseVf(vf):
                self.nvidia.release(vf)
            case control.FaultVgpuType(vf, error, count):
                self.nvidia.fault_vgpu_type(vf, error, count)

    def stop(self) -> None:
        """Unblock every waiting operation: the filesystem is going away."""
        self._stopping.set()
        for timer in self._timers:
            timer.cancel()
        with self.lock:
            self.lock.notify_all()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()
