# SPDX-License-Identifier: LGPL-2.1-or-later
"""Several kernel backends behind the engine's one `Kernel` port.

The engine knows parents and devices by name and UUID only; this routes each call to the
backend that has the parent or the device (mdev first, so a name both claim stays mdev's: a
pre-Ada NVIDIA GPU is an mdev parent and has no VFs bound to `nvidia`). Which backend has what
is learnt from each read (a parent's list, a device's read) and asked again when unknown.
An event goes to every backend, and the engine acts on what any of them makes of it.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Protocol

from mdevd.errors import NotActive, ParentNotFound
from mdevd.model import NOTHING, ActiveDevice, Parent, UeventMeaning


class Backend(Protocol):
    """One kernel interface (`mdevd.kernel.Sysfs`, `mdevd.nvidia_vf.NvidiaVf`): the engine's
    `Kernel` port, which this class also implements for all of them together."""

    def interpret_uevent(
        self, action: str, subsystem: str, devpath: str, properties: dict[str, str]
    ) -> UeventMeaning: ...

    def canonical_type(self, parent: str, type_id: str) -> str: ...

    def create_events(self, parent: str) -> tuple[str, ...]: ...

    def remove_events(self, uuid: str) -> tuple[str, ...]: ...

    def parent_names(self) -> list[str]: ...

    def read_parent(self, parent: str) -> Parent: ...

    def read_parent_and_registration(self, parent: str) -> tuple[Parent, tuple[int, int]]: ...

    def read_available_instances(self, parent: str, type_ids: Sequence[str]) -> dict[str, int]: ...

    def probe_parent(self, devpath: str) -> bool: ...

    def list_devices(self) -> dict[str, ActiveDevice]: ...

    def read_device(self, uuid: str) -> ActiveDevice | None: ...

    def create(self, parent: str, type_id: str, uuid: str, placement: str = "") -> ActiveDevice: ...

    def remove(self, uuid: str, *, check_busy: bool = True) -> None: ...

    def write_attribute(self, uuid: str, name: str, value: str) -> None: ...

    def open_vfio(self, uuid: str, cdev: bool = False) -> int: ...


class Backends:
    """The engine's `Kernel`, made of `backends` (highest precedence first)."""

    def __init__(self, backends: Sequence[Backend]) -> None:
        if not backends:
            raise ValueError("at least one backend is needed")
        self.backends = tuple(backends)
        self._lock = threading.Lock()
        self._parent_backend: dict[str, Backend] = {}
        self._device_backend: dict[str, Backend] = {}

    # ---- routing ---------------------------------------------------------------------------

    def _of_parent(self, parent: str) -> Backend | None:
        with self._lock:
            return self._parent_backend.get(parent)

    def _learn_parent(self, parent: str, backend: Backend) -> None:
        with self._lock:
            self._parent_backend[parent] = backend

    def _for_parent(self, parent: str) -> list[Backend]:
        """The backend known to have `parent` first, then the others (it may have moved:
        a driver swapped between mdev and VFs)."""
        known = self._of_parent(parent)
        return [b for b in (known,) if b is not None] + [b for b in self.backends if b is not known]

    def _for_device(self, uuid: str) -> list[Backend]:
        with self._lock:
            known = self._device_backend.get(uuid)
        return [b for b in (known,) if b is not None] + [b for b in self.backends if b is not known]

    def _learn_device(self, uuid: str, backend: Backend | None) -> None:
        with self._lock:
            if backend is None:
                self._device_backend.pop(uuid, None)
            else:
                self._device_backend[uuid] = backend

    # ---- on the loop -----------------------------------------------------------------------

    def interpret_uevent(
        self, action: str, subsystem: str, devpath: str, properties: dict[str, str]
    ) -> UeventMeaning:
        meaning = NOTHING
        for backend in self.backends:
            meaning = meaning | backend.interpret_uevent(action, subsystem, devpath, properties)
        return meaning

    def canonical_type(self, parent: str, type_id: str) -> str:
        known = self._of_parent(parent)
        if known is not None:
            return known.canonical_type(parent, type_id)
        for backend in self.backends:  # a parent not seen yet: the first that respells it
            spelled = backend.canonical_type(parent, type_id)
            if spelled != type_id:
                return spelled
        return type_id

    def create_events(self, parent: str) -> tuple[str, ...]:
        known = self._of_parent(parent)
        return (known or self.backends[0]).create_events(parent)

    def remove_events(self, uuid: str) -> tuple[str, ...]:
        return self._for_device(uuid)[0].remove_events(uuid)

    # ---- parents ---------------------------------------------------------------------------

    def parent_names(self) -> list[str]:
        names: dict[str, Backend] = {}
        for backend in self.backends:
            for name in backend.parent_names():
                names.setdefault(name, backend)
        with self._lock:
            self._parent_backend = dict(names)
        return sorted(names)

    def read_parent(self, parent: str) -> Parent:
        for backend in self._for_parent(parent):
            try:
                found = backend.read_parent(parent)
            except ParentNotFound:
                continue
            self._learn_parent(parent, backend)
            return found
        raise ParentNotFound(f"parent {parent} is not present")

    def read_parent_and_registration(self, parent: str) -> tuple[Parent, tuple[int, int]]:
        for backend in self._for_parent(parent):
            try:
                found = backend.read_parent_and_registration(parent)
            except ParentNotFound:
                continue
            self._learn_parent(parent, backend)
            return found
        raise ParentNotFound(f"parent {parent} is not present")

    def read_available_instances(self, parent: str, type_ids: Sequence[str]) -> dict[str, int]:
        for backend in self._for_parent(parent):
            try:
                return backend.read_available_instances(parent, type_ids)
            except ParentNotFound:
                continue
        raise ParentNotFound(f"parent {parent} is not present")

    def probe_parent(self, devpath: str) -> bool:
        return any(backend.probe_parent(devpath) for backend in self.backends)

    # ---- devices ---------------------------------------------------------------------------

    def list_devices(self) -> dict[str, ActiveDevice]:
        devices: dict[str, ActiveDevice] = {}
        owners: dict[str, Backend] = {}
        for backend in self.backends:
            for uuid, device in backend.list_devices().items():
                if uuid not in devices:
                    devices[uuid] = device
                    owners[uuid] = backend
        with self._lock:
            self._device_backend = owners
        return devices

    def read_device(self, uuid: str) -> ActiveDevice | None:
        for backend in self._for_device(uuid):
            device = backend.read_device(uuid)
            if device is not None:
                self._learn_device(uuid, backend)
                return device
        self._learn_device(uuid, None)
        return None

    def create(self, parent: str, type_id: str, uuid: str, placement: str = "") -> ActiveDevice:
        backend = self._for_parent(parent)[0]
        device = backend.create(parent, type_id, uuid, placement)
        self._learn_device(uuid, backend)
        return device

    def remove(self, uuid: str, *, check_busy: bool = True) -> None:
        for backend in self._for_device(uuid):
            try:
                backend.remove(uuid, check_busy=check_busy)
            except NotActive:
                continue
            self._learn_device(uuid, None)
            return
        raise NotActive(f"device {uuid} is not present in the kernel")

    def write_attribute(self, uuid: str, name: str, value: str) -> None:
        self._for_device(uuid)[0].write_attribute(uuid, name, value)

    def open_vfio(self, uuid: str, cdev: bool = False) -> int:
        for backend in self._for_device(uuid):
            try:
                return backend.open_vfio(uuid, cdev)
            except NotActive:
                continue
        raise NotActive(f"device {uuid} is not present in the kernel")
