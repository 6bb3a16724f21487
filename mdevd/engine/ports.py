# SPDX-License-Identifier: LGPL-2.1-or-later
"""The engine's ports: what it needs from its surroundings and what it tells them.

- `Kernel`: what the engine reads and changes in the kernel, and what a uevent means for it
  (`UeventMeaning`). `mdevd.kernel.Sysfs` is the mdev backend, `mdevd.nvidia_vf.NvidiaVf` the
  vendor-VFIO one; `mdevd.backends.Backends` puts several behind one `Kernel`.
- `DefinitionStore`: the persistent definitions (`mdevd.store`, `mdevd.compat.store`).
- `OperationHooks`: run around each operation (`mdevd.compat.hooks`: mdevctl's callouts);
  `NoHooks` when there are none.
- `Listener`: hears every change, synchronously, before the operation that caused it returns;
  `NullListener` hears nothing, and is a base for listeners that hear only some of it.
  `Subscribers` tells each of a list of listeners, in the order they subscribed.
- The words they exchange: `Event`, `Reason` and `DeviceEvent` (what happened to a device,
  and why), and `HookAction` (what the hooks are told an operation is).

Nothing here spells a D-Bus name: `DeviceEvent` carries an error's short name (`Busy`, the
`MdevdError.name`), and the bus layer makes the full name of it when it sends the signal.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

# NOTHING and UeventMeaning, the words a backend answers an event with, are plain data kept
# in the model (the kernel layer must not import the engine); re-exported here.
from mdevd.model import NOTHING as NOTHING
from mdevd.model import ActiveDevice, Attributes, Definition, DeviceState, Parent
from mdevd.model import UeventMeaning as UeventMeaning

#: Tells one registration of a parent from the next (`Sysfs.registration_id`).
RegistrationId = tuple[int, int]


class Event(enum.StrEnum):
    """What happened to a device (the `event` of the `DeviceEvent` signal)."""

    DEFINED = "defined"
    UNDEFINED = "undefined"
    STARTED = "started"
    STOPPED = "stopped"
    UPDATED = "updated"
    START_FAILED = "start-failed"


class Reason(enum.StrEnum):
    """Why it happened (the `reason` detail of the `DeviceEvent` signal)."""

    #: A client's call.
    API = "api"
    #: Autostart, when the daemon started, a parent registered or a definition appeared.
    AUTOSTART = "autostart"
    #: A change in the definition directories (outside the API).
    CONFIG = "config"
    #: Someone else's change in the kernel (another tool, a driver unload).
    KERNEL = "kernel"
    #: The lifetime of a transient device ended: its owner's connection closed, or its unit
    #: stopped (`mdevd.owners`).
    OWNER_GONE = "owner-gone"


class HookAction(enum.StrEnum):
    """What an operation is, in mdevctl's words, as the hooks are told it."""

    START = "start"
    STOP = "stop"
    DEFINE = "define"
    UNDEFINE = "undefine"
    MODIFY = "modify"


@dataclass(frozen=True, slots=True)
class DeviceEvent:
    """What happened to a device, and why."""

    kind: Event
    reason: Reason
    #: A failed start: the error's short name (`MdevdError.name`, e.g. `Busy`) and message.
    error_name: str = ""
    error_message: str = ""
    #: A transient failure that autostart retries: the seconds until it does.
    retry_in: float | None = None


class Kernel(Protocol):
    """What the engine reads and changes in the kernel (called from worker threads, except
    the methods marked as called on the loop: those never do I/O).

    Errors are the project's own (`mdevd.errors`): `ParentNotFound` for a parent that is not
    registered, `NotActive` for a device that is not there, `Exists`, `Busy`, and so on.
    """

    def interpret_uevent(
        self, action: str, subsystem: str, devpath: str, properties: dict[str, str]
    ) -> UeventMeaning:
        """What this uevent calls for (called on the loop: no I/O)."""
        ...

    def canonical_type(self, parent: str, type_id: str) -> str:
        """The spelling of `type_id` the parent lists (an `nvidia-vf` GPU's `1145` is
        `nvidia-1145`); unchanged when there is no other (called on the loop: no I/O)."""
        ...

    def create_events(self, parent: str) -> tuple[str, ...]:
        """The uevents of the device itself that a create on `parent` makes the kernel send,
        in order (none for a backend whose writes send none); called on the loop."""
        ...

    def remove_events(self, uuid: str) -> tuple[str, ...]:
        """The same for removing device `uuid`; called on the loop."""
        ...

    def parent_names(self) -> list[str]: ...

    def read_parent(self, parent: str) -> Parent: ...

    def read_parent_and_registration(self, parent: str) -> tuple[Parent, RegistrationId]: ...

    def read_available_instances(self, parent: str, type_ids: Sequence[str]) -> dict[str, int]:
        """The `available_instances` of these types only (a cheap look after a create)."""
        ...

    def probe_parent(self, devpath: str) -> bool:
        """Whether the device at `devpath` (a uevent's) offers types: it is a parent."""
        ...

    def list_devices(self) -> dict[str, ActiveDevice]: ...

    def read_device(self, uuid: str) -> ActiveDevice | None: ...

    def create(self, parent: str, type_id: str, uuid: str, placement: str = "") -> ActiveDevice:
        """Create device `uuid`; `placement` pins where on the parent (refused by a backend
        that places nothing)."""
        ...

    def remove(self, uuid: str, *, check_busy: bool = True) -> None:
        """Remove the device; with `check_busy`, refuse (`Busy`) one a VM holds."""
        ...

    def write_attribute(self, uuid: str, name: str, value: str) -> None: ...

    def open_vfio(self, uuid: str, cdev: bool = False) -> int:
        """An fd to the device's VFIO group node, or with `cdev` its VFIO device node; the
        caller owns it. `Busy` when held, `NotSupported` without a cdev."""
        ...


class LoadedDefinitions(Protocol):
    @property
    def definitions(self) -> dict[str, Definition]: ...

    @property
    def problems(self) -> Sequence[object]: ...


class DefinitionStore(Protocol):
    """What the engine needs from the persistent store (mdevd.store implements it)."""

    def load(self) -> LoadedDefinitions:
        """Every valid definition by UUID, and the problems found (one bad file never hides
        the good ones)."""
        ...

    def save(self, definition: Definition) -> Definition:
        """Persist durably (atomic, fsynced); return it with `source_file` set."""
        ...

    def remove(self, uuid: str) -> None: ...


class OperationHooks(Protocol):
    """Runs around each operation, whoever asked for it (mdevd.compat.hooks: mdevctl's
    callouts)."""

    def transaction(
        self,
        action: HookAction,
        device: Definition,
        *,
        force: bool = False,
        fill_attributes: bool = False,
    ) -> AbstractAsyncContextManager[Definition]:
        """Before the operation: may refuse it (raise). Yields the device's config (with
        `fill_attributes`, the running device's attributes as the hooks know them); after
        the operation it learns whether it succeeded (the body raised or not)."""
        ...

    async def query_attributes(self, device: Definition) -> Attributes | None:
        """The running device's attributes as the hooks know them; None if they do not."""
        ...

    async def live_update(self, device: Definition) -> bool:
        """Apply `device`'s attributes to the running device; False: the engine should."""
        ...


class NoHooks:
    """Hooks that let every operation through and know nothing: the engine's default."""

    @contextlib.asynccontextmanager
    async def transaction(
        self,
        action: HookAction,
        device: Definition,
        *,
        force: bool = False,
        fill_attributes: bool = False,
    ) -> AsyncIterator[Definition]:
        yield device

    async def query_attributes(self, device: Definition) -> Attributes | None:
        return None

    async def live_update(self, device: Definition) -> bool:
        return False


class Listener(Protocol):
    """Receives every change, synchronously, before the causing operation returns."""

    def device_changed(self, state: DeviceState) -> None: ...

    def device_removed(self, uuid: str) -> None: ...

    def parent_changed(self, parent: Parent) -> None: ...

    def parent_removed(self, name: str) -> None: ...

    def device_event(self, state: DeviceState, event: DeviceEvent) -> None: ...


class NullListener:
    """A listener that ignores everything: a base for listeners that hear only some of it."""

    def device_changed(self, state: DeviceState) -> None:
        pass

    def device_removed(self, uuid: str) -> None:
        pass

    def parent_changed(self, parent: Parent) -> None:
        pass

    def parent_removed(self, name: str) -> None:
        pass

    def device_event(self, state: DeviceState, event: DeviceEvent) -> None:
        pass


class Subscribers:
    """The engine's listeners: each change goes to every subscriber, in the order they
    subscribed (a listener that must hear a change before another subscribes first)."""

    def __init__(self) -> None:
        self._listeners: tuple[Listener, ...] = ()

    def subscribe(self, listener: Listener) -> None:
        if any(other is listener for other in self._listeners):
            raise ValueError(f"{listener!r} is subscribed already")
        self._listeners = (*self._listeners, listener)

    def unsubscribe(self, listener: Listener) -> None:
        """Stop telling `listener`; from the next change on (one being told goes on)."""
        self._listeners = tuple(other for other in self._listeners if other is not listener)

    def __iter__(self) -> Iterator[Listener]:
        return iter(self._listeners)

    def device_changed(self, state: DeviceState) -> None:
        for listener in self._listeners:
            listener.device_changed(state)

    def device_removed(self, uuid: str) -> None:
        for listener in self._listeners:
            listener.device_removed(uuid)

    def parent_changed(self, parent: Parent) -> None:
        for listener in self._listeners:
            listener.parent_changed(parent)

    def parent_removed(self, name: str) -> None:
        for listener in self._listeners:
            listener.parent_removed(name)

    def device_event(self, state: DeviceState, event: DeviceEvent) -> None:
        for listener in self._listeners:
            listener.device_event(state, event)
