# SPDX-License-Identifier: LGPL-2.1-or-later
"""The kernel's mdev sysfs interface: the only module that touches /sys (and /dev/vfio).

Every path is built under a configurable root (`/sys` in production, an emulated kernel's mount
in tests) from names that passed `mdevd.validate` first, and every errno the kernel answers is
turned into one of the project's typed errors. The facts this follows (paths, errnos,
uevents, the 36/37-byte UUID write) are in docs/kernel-abi.md.

The functions are synchronous: sysfs I/O is fast except where the kernel blocks (removing a
device a VM holds open), so the daemon calls them from worker threads, never on its event loop.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from mdevd import defaults, validate
from mdevd.errors import (
    AttributeRejected,
    Busy,
    CreateRefused,
    Exists,
    InvalidArgument,
    InvalidName,
    KernelIOError,
    NoInstancesAvailable,
    NotActive,
    NotSupported,
    ParentNotFound,
    TypeNotSupported,
)
from mdevd.explain import CreateFacts, checked, create_refused
from mdevd.model import NOTHING, ActiveDevice, MdevType, Parent, UeventMeaning

#: Files in a device directory that belong to the driver core, not to the device's driver
#: (one list, in mdevd.validate, for every path that accepts attribute names).
RESERVED_DEVICE_FILES = validate.RESERVED_DEVICE_FILES

#: Upper bound on what a sysfs attribute read returns (sysfs show() fills at most one page).
_READ_LIMIT = 4096

#: The uevents (of the mdev device itself) that creating and removing a device make the kernel
#: send, in order (docs/kernel-abi.md).
CREATE_EVENTS = ("add", "bind")
REMOVE_EVENTS = ("unbind", "remove")

#: Subsystems whose devices are never mdev parents (a device's vfio nodes).
_NEVER_PARENTS = frozenset({"vfio", "vfio-dev"})


class Sysfs:
    """Reads and changes the kernel's mdev state under `root`.

    `dev_root` is where `/dev/vfio/<group>` lives, used to tell whether a VM holds a device.
    """

    def __init__(
        self, root: Path | str = defaults.SYSFS_ROOT, dev_root: Path | str = defaults.DEV_ROOT
    ) -> None:
        self.root = Path(root)
        self.dev_root = Path(dev_root)
        self._kernel_sends_mdev_state = False

    # ---- what the mdev core's events mean --------------------------------------------------

    def interpret_uevent(
        self, action: str, subsystem: str, devpath: str, properties: dict[str, str]
    ) -> UeventMeaning:
        """What may change the mdev view: any event of an mdev device (made or removed by us
        or by other tools), a parent's `change` with MDEV_STATE whatever its subsystem (`pci`,
        `css`, `mtty`...: never `mdev_bus`), the `add` or `bind` of a device that has
        `mdev_supported_types` (kernels without MDEV_STATE), and the `remove` or `unbind` of a
        known parent. Called on the loop: decides from the event alone."""
        name = devpath.rsplit("/", 1)[-1]
        if "MDEV_STATE" in properties:
            self._kernel_sends_mdev_state = True
            return UeventMeaning(rescan=True)
        if subsystem == "mdev":
            if not validate.is_uuid(name):
                return UeventMeaning(rescan=True)
            return UeventMeaning(device=name.lower(), action=action)
        if subsystem in _NEVER_PARENTS:
            return NOTHING
        if action in ("add", "bind") and not self._kernel_sends_mdev_state:
            # Kernels that announce registration with MDEV_STATE need no fallback (and the
            # add of a driver's own parent device comes just before that change event).
            return UeventMeaning(probe=devpath)
        if action in ("remove", "unbind"):
            return UeventMeaning(parent_gone=name)
        return NOTHING

    def canonical_type(self, parent: str, type_id: str) -> str:
        return type_id  # a type directory has one name

    def create_events(self, parent: str) -> tuple[str, ...]:
        return CREATE_EVENTS

    def remove_events(self, uuid: str) -> tuple[str, ...]:
        return REMOVE_EVENTS

    # ---- paths (every one built from validated names) -------------------------------------

    def _parent_dir(self, parent: str) -> Path:
        return self.root / "class" / "mdev_bus" / validate.parent_name(parent)

    def _type_dir(self, parent: str, type_id: str) -> Path:
        return self._parent_dir(parent) / "mdev_supported_types" / validate.type_id(type_id)

    def _device_link(self, uuid: str) -> Path:
        return self.root / "bus" / "mdev" / "devices" / validate.uuid(uuid)

    # ---- parents and types -----------------------------------------------------------------

    def parent_names(self) -> list[str]:
        """Names of the devices registered with the mdev core, sorted."""
        return sorted(listdir(self.root / "class" / "mdev_bus"))

    def list_parents(self) -> dict[str, Parent]:
        """Every registered parent with its types. Parents vanishing meanwhile are skipped."""
        parents: dict[str, Parent] = {}
        for name in self.parent_names():
            try:
                parents[name] = self.read_parent(name)
            except ParentNotFound:
                continue
        return parents

    def parent_exists(self, parent: str) -> bool:
        return self._parent_dir(parent).is_dir()

    def registration_id(self, parent: str) -> tuple[int, int]:
        """What tells one registration of `parent` with the mdev core from the next.

        The core creates `mdev_supported_types` anew at each registration, and kernfs numbers
        its nodes cyclically, so the directory's inode changes even when an unregistration and
        a registration both happened between two looks (their uevents lost, or not yet read).
        """
        try:
            st = os.stat(self._parent_dir(parent) / "mdev_supported_types")
        except OSError as exc:
            raise ParentNotFound(f"parent {parent} is not registered with mdev") from exc
        return (st.st_dev, st.st_ino)

    def probe_parent(self, devpath: str) -> bool:
        """Whether the device at `devpath` (a uevent's DEVPATH, `/devices/...`) offers mdev
        types: how a parent shows itself on kernels that send no MDEV_STATE event."""
        parts = devpath.strip("/").split("/")
        if parts[0] != "devices":
            return False
        try:
            # Every component is a plain name: nothing in an event can lead outside the root.
            checked = [validate.parent_name(part) for part in parts]
        except InvalidName:
            return False
        return self.root.joinpath(*checked, "mdev_supported_types").is_dir()

    def read_parent(self, parent: str) -> Parent:
        return self.read_parent_and_registration(parent)[0]

    def read_parent_and_registration(self, parent: str) -> tuple[Parent, tuple[int, int]]:
        """The parent with its types, and its `registration_id`, in one look.

        The identity is read first, so a registration that ends while the types are being
        read shows up as a new one at the next look, never the reverse. Files are opened
        relative to the parent's directory: an emulated sysfs pays for every path component.
        """
        sysfs_path = _resolve_link(self._parent_dir(parent))
        try:
            if sysfs_path is None:
                raise FileNotFoundError(parent)
            fd = os.open(sysfs_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise ParentNotFound(f"parent {parent} is not registered with mdev") from exc
        try:
            try:
                st = os.stat("mdev_supported_types", dir_fd=fd)
            except OSError as exc:
                raise ParentNotFound(f"parent {parent} is not registered with mdev") from exc
            subsystem = _link_basename_at(fd, "subsystem")
            types = self._read_types_at(fd, parent)
        finally:
            os.close(fd)
        return (
            Parent(name=parent, sysfs_path=sysfs_path, subsystem=subsystem, types=types),
            (st.st_dev, st.st_ino),
        )

    def read_types(self, parent: str) -> dict[str, MdevType]:
        try:
            fd = os.open(self._parent_dir(parent), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise ParentNotFound(f"parent {parent} is not registered with mdev") from exc
        try:
            return self._read_types_at(fd, parent)
        finally:
            os.close(fd)

    def _read_types_at(self, parent_fd: int, parent: str) -> dict[str, MdevType]:
        try:
            types_fd = os.open(
                "mdev_supported_types",
                os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC,
                dir_fd=parent_fd,
            )
        except (FileNotFoundError, NotADirectoryError):
            return {}
        except OSError as exc:
            raise _io_error(f"reading the types of parent {parent}", exc) from exc
        types: dict[str, MdevType] = {}
        try:
            for type_id in sorted(os.listdir(types_fd)):
                try:
                    types[type_id] = _read_type_at(types_fd, parent, validate.type_id(type_id))
                except (InvalidName, TypeNotSupported):
                    continue
        finally:
            os.close(types_fd)
        return types

    def read_type(self, parent: str, type_id: str) -> MdevType:
        types_dir = self._type_dir(parent, type_id).parent
        try:
            types_fd = os.open(types_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            if not self.parent_exists(parent):
                raise ParentNotFound(f"parent {parent} is not registered with mdev") from exc
            raise TypeNotSupported(f"parent {parent} does not support type {type_id}") from exc
        except OSError as exc:
            raise _io_error(f"reading type {type_id} of parent {parent}", exc) from exc
        try:
            return _read_type_at(types_fd, parent, type_id)
        except TypeNotSupported:
            if not self.parent_exists(parent):
                raise ParentNotFound(f"parent {parent} is not registered with mdev") from None
            raise
        finally:
            os.close(types_fd)

    def available_instances(self, parent: str, type_id: str) -> int:
        return self.read_type(parent, type_id).available_instances

    def read_available_instances(self, parent: str, type_ids: Sequence[str]) -> dict[str, int]:
        """`available_instances` of each of `type_ids`, and nothing else.

        After a create or a removal only the counts change (pools are shared across types), so
        this is what follows the daemon's own operations: one file per type instead of a whole
        read of the parent. `ParentNotFound` or `TypeNotSupported` when the parent or a type
        is gone (then a full read is due).
        """
        types_dir = self._parent_dir(parent) / "mdev_supported_types"
        try:
            types_fd = os.open(types_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise ParentNotFound(f"parent {parent} is not registered with mdev") from exc
        counts: dict[str, int] = {}
        try:
            for type_id in type_ids:
                name = validate.type_id(type_id)
                try:
                    fd = os.open(
                        f"{name}/available_instances", os.O_RDONLY | os.O_CLOEXEC, dir_fd=types_fd
                    )
                except FileNotFoundError as exc:
                    raise TypeNotSupported(
                        f"parent {parent} does not support type {type_id}"
                    ) from exc
                except OSError as exc:
                    raise _io_error(f"reading type {type_id} of parent {parent}", exc) from exc
                try:
                    counts[type_id] = _parse_count(
                        os.read(fd, _READ_LIMIT).decode(errors="replace").strip()
                    )
                except OSError as exc:
                    raise _io_error(f"reading type {type_id} of parent {parent}", exc) from exc
                finally:
                    os.close(fd)
        finally:
            os.close(types_fd)
        return counts

    # ---- devices ---------------------------------------------------------------------------

    def device_uuids(self) -> list[str]:
        """UUIDs of the mdevs present in the kernel, sorted. Foreign names are ignored."""
        names = listdir(self.root / "bus" / "mdev" / "devices")
        return sorted(name for name in names if validate.is_uuid(name))

    def list_devices(self) -> dict[str, ActiveDevice]:
        devices: dict[str, ActiveDevice] = {}
        for uuid in self.device_uuids():
            device = self.read_device(uuid)
            if device is not None:
                devices[uuid] = device
        return devices

    def read_device(self, uuid: str) -> ActiveDevice | None:
        """The device as the kernel shows it now, or None when it is not present."""
        sysfs_path = _resolve_link(self._device_link(uuid))
        if sysfs_path is None:
            return None
        try:
            fd = os.open(sysfs_path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            type_id = _link_basename_at(fd, "mdev_type")
            if not type_id:
                # Between create's write and the driver core linking the type, or mid-removal.
                return None
            group = _link_basename_at(fd, "iommu_group")
        finally:
            os.close(fd)
        return ActiveDevice(
            uuid=validate.uuid(uuid),
            parent=os.path.basename(os.path.dirname(sysfs_path)),
            type_id=type_id,
            sysfs_path=sysfs_path,
            iommu_group=int(group) if group.isdigit() else -1,
        )

    def create(self, parent: str, type_id: str, uuid: str, placement: str = "") -> ActiveDevice:
        """Create a device: one write of the lower-case UUID into the type's `create`.

        The kernel creates synchronously: when the write returns, the device exists. The mdev
        core places devices itself: a `placement` is refused.
        """
        uuid = validate.uuid(uuid)
        if placement:
            raise InvalidArgument(
                f"device {uuid}: parent {parent} is an mdev parent, where the kernel places"
                f" devices itself; placement {placement!r} applies to nvidia-vf parents only"
            )
        create_file = self._type_dir(parent, type_id) / "create"
        what = f"device {uuid}"
        try:
            fd = os.open(create_file, os.O_WRONLY | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            if not self.parent_exists(parent):
                raise ParentNotFound(f"{what}: parent {parent} is not registered") from exc
            raise TypeNotSupported(
                f"{what}: parent {parent} does not support type {type_id}"
            ) from exc
        except OSError as exc:
            raise _io_error(f"{what}: opening {type_id}/create on {parent}", exc) from exc
        try:
            written = os.write(fd, uuid.encode())
        except OSError as exc:
            raise self._create_error(parent, type_id, uuid, exc) from exc
        finally:
            os.close(fd)
        if written != len(uuid):
            raise KernelIOError(f"{what}: short write to {type_id}/create ({written} bytes)")
        device = self.read_device(uuid)
        if device is None:
            raise KernelIOError(f"{what}: created on {parent} but gone from sysfs at once")
        return device

    def _create_error(self, parent: str, type_id: str, uuid: str, exc: OSError) -> Exception:
        """The error for a failed create. "Full" has no single errno (ENOSPC where the driver
        counts, EUSERS where the core does, EPERM from vfio-ap's probe...): any failure but a
        taken UUID or a parent going away counts as full when the type then shows no instance
        left; with instances left, the driver's own error stands."""
        what = f"device {uuid}"
        code = exc.errno
        name = errno.errorcode.get(code, str(code)) if code is not None else "?"
        if code == errno.EEXIST:
            return Exists(f"{what}: a device with this UUID already exists")
        if code == errno.ENODEV:
            return ParentNotFound(f"{what}: parent {parent} is going away")
        try:
            left: int | None = self.available_instances(parent, type_id)
        except Exception:  # the verdict is the errno's alone then
            left = None
        if left == 0 or code in (errno.ENOSPC, errno.EUSERS):
            shown = f"available_instances {left}; " if left is not None else ""
            return NoInstancesAvailable(
                f"{what}: no instances of type {type_id} left on parent {parent}"
                f" ({shown}the kernel answered {name})"
            )
        if code == errno.EBUSY:
            return Busy(f"{what}: parent {parent} is busy")
        # The driver refused and gave no reason (the UUID was validated before the write, so
        # EINVAL is not about it): the message says what sysfs shows instead.
        facts = self.create_facts(parent, type_id)
        if code == errno.EINVAL:
            return CreateRefused(create_refused(uuid, name, facts))
        error = _io_error(f"{what}: creating type {type_id} on {parent}", exc)
        return KernelIOError(f"{error.message}. {checked(facts)}", errno=code)

    def create_facts(self, parent: str, type_id: str) -> CreateFacts:
        """What sysfs shows of `parent` after it refused a create of `type_id`: whether it is
        registered, its driver, its active devices by type, the type's `available_instances`.
        Never raises: what cannot be read is left unknown."""
        parent_dir = self._parent_dir(parent)
        sysfs_path = _resolve_link(parent_dir)
        registered = sysfs_path is not None and parent_dir.is_dir()
        if sysfs_path is None:
            return CreateFacts(parent, type_id, registered=False)
        try:
            fd = os.open(sysfs_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return CreateFacts(parent, type_id, registered=False)
        try:
            driver = _link_basename_at(fd, "driver")
            active: dict[str, int] = {}
            available: int | None = None
            type_ids: list[str] = []
            try:
                types_fd = os.open(
                    "mdev_supported_types", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd
                )
            except OSError:
                types_fd = -1
            if types_fd >= 0:
                try:
                    type_ids = sorted(n for n in os.listdir(types_fd) if _is_type_id(n))
                    for name in type_ids:
                        count = _count_entries_at(types_fd, f"{name}/devices")
                        if count is not None:
                            active[name] = count
                    with contextlib.suppress(OSError, InvalidName):
                        available = _parse_count(
                            _read_text_at(
                                types_fd, f"{validate.type_id(type_id)}/available_instances"
                            )
                        )
                finally:
                    os.close(types_fd)
        finally:
            os.close(fd)
        return CreateFacts(
            parent,
            type_id,
            registered=registered,
            bound_driver=driver,
            active_types=active,
            available_instances=available,
            type_ids=tuple(type_ids),
        )

    def remove(self, uuid: str, *, check_busy: bool = True) -> None:
        """Remove a device from the kernel.

        The kernel blocks the write until a VM releases the device; with `check_busy` the vfio
        group is probed first (as libvirt does) so that an in-use device is reported as `Busy`
        instead of hanging the caller.
        """
        uuid = validate.uuid(uuid)
        device = self.read_device(uuid)
        if device is None:
            raise NotActive(f"device {uuid} is not present in the kernel")
        if check_busy and device.iommu_group >= 0 and self.group_in_use(device.iommu_group):
            raise Busy(f"device {uuid} is in use (vfio group {device.iommu_group} is open)")
        try:
            # Through the bus link, which the kernel resolves, not the path read from it.
            fd = os.open(self._device_link(uuid) / "remove", os.O_WRONLY | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise NotActive(f"device {uuid} is not present in the kernel") from exc
        except OSError as exc:
            raise _io_error(f"device {uuid}: opening remove", exc) from exc
        try:
            os.write(fd, b"1")
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                raise Busy(f"device {uuid} is busy and cannot be removed now") from exc
            if exc.errno in (errno.ENODEV, errno.ENOENT):
                raise NotActive(f"device {uuid} went away during removal") from exc
            raise _io_error(f"device {uuid}: removing", exc) from exc
        finally:
            os.close(fd)

    def group_in_use(self, group: int) -> bool:
        return vfio_group_in_use(self.dev_root, group)

    def open_vfio(self, uuid: str, cdev: bool = False) -> int:
        device = self.read_device(uuid)
        if device is None:
            raise NotActive(f"device {uuid} is not present in the kernel")
        return open_vfio(self.dev_root, device, cdev)

    # ---- device attributes -----------------------------------------------------------------

    @contextmanager
    def _attribute_fd(self, uuid: str, name: str, flags: int) -> Iterator[int]:
        """Open an attribute as a regular file directly inside the device directory.

        The directory is reached through the kernel's own `bus/mdev/devices/<uuid>` link; the
        attribute itself is opened relative to it with O_NOFOLLOW, so neither `..` (refused by
        validation) nor a symlink planted in the directory can lead the write elsewhere.
        """
        uuid = validate.uuid(uuid)
        name = validate.attribute_name(name)
        if name in RESERVED_DEVICE_FILES:
            raise AttributeRejected(f"device {uuid}: {name!r} is not a device attribute")
        try:
            dir_fd = os.open(self._device_link(uuid), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise NotActive(f"device {uuid} is not present in the kernel") from exc
        except OSError as exc:
            raise _io_error(f"device {uuid}: opening its directory", exc) from exc
        try:
            try:
                fd = os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            except FileNotFoundError as exc:
                raise AttributeRejected(f"device {uuid} has no attribute {name!r}") from exc
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise AttributeRejected(
                        f"device {uuid}: attribute {name!r} is a symbolic link"
                    ) from exc
                if exc.errno in (errno.EISDIR, errno.EACCES, errno.EPERM):
                    raise AttributeRejected(
                        f"device {uuid}: attribute {name!r} cannot be opened ({exc.strerror})"
                    ) from exc
                raise _io_error(f"device {uuid}: opening attribute {name!r}", exc) from exc
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise AttributeRejected(
                        f"device {uuid}: attribute {name!r} is not a regular file"
                    )
                yield fd
            finally:
                os.close(fd)
        finally:
            os.close(dir_fd)

    def write_attribute(self, uuid: str, name: str, value: str) -> None:
        """Write one attribute value in a single write(2), as sysfs expects."""
        value = validate.attribute_value(value, name)
        with self._attribute_fd(uuid, name, os.O_WRONLY) as fd:
            data = value.encode()
            try:
                written = os.write(fd, data)
            except OSError as exc:
                if exc.errno in (errno.EINVAL, errno.ERANGE, errno.EADDRINUSE, errno.ENODEV):
                    raise AttributeRejected(
                        f"device {uuid}: attribute {name!r} rejected value {value!r}"
                        f" ({exc.strerror})"
                    ) from exc
                if exc.errno == errno.EBUSY:
                    raise Busy(f"device {uuid}: attribute {name!r} is busy") from exc
                raise _io_error(f"device {uuid}: writing attribute {name!r}", exc) from exc
            if written != len(data):
                raise AttributeRejected(
                    f"device {uuid}: attribute {name!r} took {written} of {len(data)} bytes"
                )

    def read_attribute(self, uuid: str, name: str) -> str:
        with self._attribute_fd(uuid, name, os.O_RDONLY) as fd:
            try:
                data = os.read(fd, _READ_LIMIT)
            except OSError as exc:
                if exc.errno in (errno.EACCES, errno.EPERM, errno.EINVAL):
                    raise AttributeRejected(
                        f"device {uuid}: attribute {name!r} is not readable"
                    ) from exc
                raise _io_error(f"device {uuid}: reading attribute {name!r}", exc) from exc
        return data.decode(errors="replace")


# ---- helpers -------------------------------------------------------------------------------


_VFIO_CDEV = re.compile(r"vfio[0-9]{1,9}")


def open_vfio(dev_root: Path, device: ActiveDevice, cdev: bool = False) -> int:
    """Open the device's VFIO group node (`<dev_root>/vfio/<group>`), or with `cdev` its VFIO
    device node (`<dev_root>/vfio/devices/vfioN`, kernels 6.6+ with VFIO_DEVICE_CDEV), for
    the caller to hand over; the caller owns the fd. `Busy` when a VM (or anyone) holds the
    group, which vfio lets only one process open."""
    what = f"device {device.uuid}"
    if cdev:
        vfio_dev = Path(device.sysfs_path) / "vfio-dev"
        # The vfio-dev device exists since 6.1; its `dev` (a char device's numbers) only with
        # CONFIG_VFIO_DEVICE_CDEV, which makes the node.
        names = [
            n
            for n in listdir(vfio_dev)
            if _VFIO_CDEV.fullmatch(n) and os.path.exists(vfio_dev / n / "dev")
        ]
        if not names:
            raise NotSupported(
                f"{what} has no VFIO device node (the kernel needs 6.6 or later with"
                " CONFIG_VFIO_DEVICE_CDEV); open its group instead"
            )
        node = dev_root / "vfio" / "devices" / names[0]
    else:
        if device.iommu_group < 0:
            raise NotSupported(f"{what} has no IOMMU group (yet)")
        node = dev_root / "vfio" / str(int(device.iommu_group))
    try:
        return os.open(node, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            raise Busy(f"{what} is in use ({node.name} is open)") from exc
        if exc.errno in (errno.ENOENT, errno.ENODEV, errno.ENXIO):
            raise NotActive(f"{what}: {node} is gone") from exc
        raise _io_error(f"{what}: opening {node}", exc) from exc


def vfio_group_in_use(dev_root: Path, group: int) -> bool:
    """True when `<dev_root>/vfio/<group>` is held open (opening it again answers EBUSY):
    how libvirt, too, tells that a VM has a device."""
    try:
        fd = os.open(dev_root / "vfio" / str(int(group)), os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return exc.errno == errno.EBUSY
    os.close(fd)
    return False


def listdir(directory: Path) -> list[str]:
    """A directory's names; none when it is absent (a device gone meanwhile)."""
    try:
        return os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _resolve_link(path: Path) -> str | None:
    """Where a sysfs link leads, absolute; the path itself if it is no link; None if absent.

    sysfs links are relative and lead to real directories, so one readlink does what
    realpath does with an lstat of every component (each a FUSE request on an emulated
    sysfs, for every component above it too).
    """
    absolute = os.path.abspath(path)
    try:
        target = os.readlink(absolute)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return absolute if os.path.isdir(absolute) else None
        return None
    return os.path.normpath(os.path.join(os.path.dirname(absolute), target))


def _link_basename_at(directory_fd: int, name: str) -> str:
    try:
        return os.path.basename(os.readlink(name, dir_fd=directory_fd))
    except OSError:
        return ""


def _is_type_id(name: str) -> bool:
    try:
        validate.type_id(name)
    except InvalidName:
        return False
    return True


def _count_entries_at(directory_fd: int, name: str) -> int | None:
    """How many entries the directory `name` (relative to `directory_fd`) has; None if it
    cannot be read."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=directory_fd)
    except OSError:
        return None
    try:
        return len(os.listdir(fd))
    except OSError:
        return None
    finally:
        os.close(fd)


def _read_text_at(directory_fd: int, name: str) -> str:
    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=directory_fd)
    try:
        return os.read(fd, _READ_LIMIT).decode(errors="replace").strip()
    finally:
        os.close(fd)


def _read_type_at(types_fd: int, parent: str, type_id: str) -> MdevType:
    """One type, read relative to its parent's open `mdev_supported_types`."""
    try:
        fd = os.open(type_id, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=types_fd)
    except FileNotFoundError as exc:
        raise TypeNotSupported(f"parent {parent} does not support type {type_id}") from exc
    except OSError as exc:
        raise _io_error(f"reading type {type_id} of parent {parent}", exc) from exc
    try:
        try:
            available = _read_text_at(fd, "available_instances")
            device_api = _read_text_at(fd, "device_api")
        except FileNotFoundError as exc:
            raise TypeNotSupported(f"parent {parent} does not support type {type_id}") from exc
        except OSError as exc:
            raise _io_error(f"reading type {type_id} of parent {parent}", exc) from exc

        def optional(name: str) -> str:
            try:
                return _read_text_at(fd, name)
            except OSError:
                return ""

        return MdevType(
            type_id=type_id,
            name=optional("name") or type_id,
            description=optional("description"),
            device_api=device_api,
            available_instances=_parse_count(available),
        )
    finally:
        os.close(fd)


def _parse_count(text: str) -> int:
    try:
        return max(0, int(text))
    except ValueError:
        return 0


def _io_error(context: str, exc: OSError) -> KernelIOError:
    code = exc.errno
    name = errno.errorcode.get(code, str(code)) if code is not None else "?"
    return KernelIOError(f"{context}: {exc.strerror or exc} ({name})", errno=code)
