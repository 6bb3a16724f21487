# SPDX-License-Identifier: LGPL-2.1-or-later
"""The engine: the one place that decides what happens to a device.

It holds the daemon's view of every UUID (its definition, its kernel presence, or both),
reconciles definitions with the kernel, runs create-then-attributes transactions with rollback,
serializes mutations per parent, and tells a listener (the D-Bus layer) about every change
before the operation that caused it returns, so a client that gets a reply already has the
signals (contract rule 1).

Kernel events (uevents, read by `mdevd.udev`) only say *that* something may have changed: the
engine then rescans the kernel and reports the difference, so lost, duplicated or reordered
events cannot leave it with a wrong view. A parent's registration is known by the identity of
its types directory (`Sysfs.registration_id`), so autostart runs once per registration however
many events announce it (mdevctl runs twice: its issue #53), and runs again after an
unregister/register pair even if no rescan saw the parent gone.

Kernel and store I/O run in a worker pool: a sysfs write can block (a device held by a VM) and
must never stall the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import uuid as uuid_module
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, replace
from typing import Any, NoReturn, Protocol, TypeVar

from mdevd import defaults, validate
from mdevd.errors import (
    AlreadyActive,
    AttributeRejected,
    Busy,
    Exists,
    InvalidArgument,
    MdevdError,
    NotActive,
    NotDefined,
    NotFound,
    ParentNotFound,
    Timeout,
    TypeNotSupported,
)
from mdevd.kernel import Sysfs
from mdevd.model import (
    NO_PENDING_CHANGES,
    ActiveDevice,
    Attributes,
    Definition,
    DeviceState,
    Parent,
    PendingChanges,
    Status,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Why something happened, as `DeviceEvent`'s `reason` detail says it.
REASON_API = "api"
REASON_AUTOSTART = "autostart"
REASON_CONFIG = "config"
REASON_KERNEL = "kernel"


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


class Listener(Protocol):
    """Receives every change, synchronously, before the causing operation returns."""

    def device_changed(self, state: DeviceState) -> None: ...

    def device_removed(self, uuid: str) -> None: ...

    def parent_changed(self, parent: Parent) -> None: ...

    def parent_removed(self, name: str) -> None: ...

    def device_event(self, state: DeviceState, event: str, details: dict[str, str]) -> None: ...


class OperationHooks(Protocol):
    """Runs around each operation, whoever asked for it (mdevd.compat.hooks: mdevctl's
    callouts). `action` is mdevctl's word: start, stop, define, undefine, modify."""

    def transaction(
        self, action: str, device: Definition, *, force: bool = False, fill_attributes: bool = False
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


class _NoHooks:
    @contextlib.asynccontextmanager
    async def transaction(
        self, action: str, device: Definition, *, force: bool = False, fill_attributes: bool = False
    ) -> AsyncIterator[Definition]:
        yield device

    async def query_attributes(self, device: Definition) -> Attributes | None:
        return None

    async def live_update(self, device: Definition) -> bool:
        return False


class NullListener:
    """A listener that ignores everything: the engine's default, and a base for listeners
    that hear only some of it."""

    def device_changed(self, state: DeviceState) -> None:
        pass

    def device_removed(self, uuid: str) -> None:
        pass

    def parent_changed(self, parent: Parent) -> None:
        pass

    def parent_removed(self, name: str) -> None:
        pass

    def device_event(self, state: DeviceState, event: str, details: dict[str, str]) -> None:
        pass


#: Tells one registration of a parent from the next (`Sysfs.registration_id`).
RegistrationId = tuple[int, int]


@dataclass(frozen=True, slots=True)
class EngineSettings:
    #: How long one kernel or store operation may take before the caller gets `Timeout`.
    io_timeout: float = defaults.IO_TIMEOUT
    #: Worker threads for sysfs and file I/O. More than the parents that can block at once.
    io_workers: int = defaults.IO_WORKERS
    #: Seconds before each retry of an autostart that failed for a transient reason (types not
    #: listed yet, EBUSY); their number bounds the retries. Permanent failures are not retried.
    autostart_retry_delays: tuple[float, ...] = defaults.AUTOSTART_RETRY_DELAYS


@dataclass(frozen=True, slots=True)
class KernelSnapshot:
    parents: dict[str, Parent]
    registrations: dict[str, RegistrationId]
    devices: dict[str, ActiveDevice]


@dataclass(eq=False)
class _AutostartRun:
    """Autostart of some definitions of one parent during one of its registrations."""

    parent: str
    registration: RegistrationId
    #: Set when the parent registers again: a run waiting to retry gives up at once.
    superseded: asyncio.Event = field(default_factory=asyncio.Event)
    #: Resolved once every device had its first attempt.
    first_round: asyncio.Future[None] | None = None
    task: asyncio.Task[None] | None = None


class Engine:
    def __init__(
        self,
        kernel: Sysfs,
        store: DefinitionStore,
        settings: EngineSettings | None = None,
        hooks: OperationHooks | None = None,
    ) -> None:
        self.kernel = kernel
        self.store = store
        self.settings = settings or EngineSettings()
        self.listener: Listener = NullListener()
        self.hooks: OperationHooks = hooks or _NoHooks()
        self._executor = ThreadPoolExecutor(
            max_workers=self.settings.io_workers, thread_name_prefix="mdevd-io"
        )
        self._definitions: dict[str, Definition] = {}
        self._active: dict[str, ActiveDevice] = {}
        self._parents: dict[str, Parent] = {}
        # Attributes a transient device was created with: the kernel cannot tell them back.
        self._transient_attributes: dict[str, Attributes] = {}
        # Attributes mdevd wrote to a running device (at its create, and live since), for the
        # devices it started since it itself started: what a definition is compared with to
        # tell a pending attribute change. Unknown for devices found running.
        self._written_attributes: dict[str, Attributes] = {}
        self._last_error: dict[str, str] = {}
        self._published: dict[str, DeviceState] = {}
        self._parent_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        # Per UUID: the lock and how many tasks hold or wait for it. An entry goes when the
        # last one leaves, or every UUID ever created would keep a lock for good.
        self._uuid_locks: dict[str, tuple[asyncio.Lock, int]] = {}
        # UUIDs an operation is creating or removing right now, and those it changed since the
        # current rescan started (that rescan's view of them may predate the change): a rescan
        # must not report an operation's own effect as a change made by someone else.
        self._in_flight: set[str] = set()
        self._touched: set[str] = set()
        self._touched_parents: set[str] = set()
        # Kernel reads (snapshots, device re-reads) in progress: touches matter only while one
        # is, so they are only recorded then (else the sets would grow with every UUID ever
        # operated on, between reads).
        self._kernel_reads = 0
        # Reads of a parent run in worker threads and can finish out of order (one a uevent
        # asked for, started before an operation's effect, after the operation's own): each
        # is numbered as it starts, and one that started before the read last applied is stale.
        self._parent_reads_started = 0
        self._parent_read_applied: dict[str, int] = {}
        # mdev uevents that arrived while an operation on their device ran, and those an
        # operation made the kernel send that have not arrived yet (they need no reading back).
        self._early_events: dict[str, list[str]] = {}
        self._expected_events: dict[str, list[str]] = {}
        # Guards the definitions on disk and in memory together: a reload never sees a file
        # the API has written but not yet recorded (and reports it as an outside change).
        self._config_lock = asyncio.Lock()
        # Tasks that finish what a timed-out operation left (a reference keeps them alive).
        self._background: set[asyncio.Task[None]] = set()
        self.problems: list[str] = []
        # Kernel rescans: one task at a time; a full rescan pending, and devices to look at
        # (an mdev device's own event needs only that device read back).
        self._resync_task: asyncio.Task[None] | None = None
        self._full_resync_due = False
        self._devices_due: set[str] = set()
        self._reload_task: asyncio.Task[None] | None = None
        self._reload_again = False
        # The latest registration of each parent a rescan saw; kept when the parent goes (a
        # registration's identity never comes back), so autostart cannot run twice for one.
        self._registrations: dict[str, RegistrationId] = {}
        self._autostart_runs: dict[str, list[_AutostartRun]] = {}
        self._probing: set[str] = set()
        self._kernel_sends_mdev_state = False

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Load definitions, read the kernel, adopt what runs, autostart what should run.

        Adoption never removes or recreates a device that exists: a restarted daemon finds the
        VMs' devices as it left them. Returns once every autostart device had its first
        attempt; retries of transient failures continue in the background.
        """
        definitions, problems = await self._load_store()
        self._definitions = definitions
        self.problems = problems
        async with self._kernel_read():
            snapshot = await self._io(self._snapshot_kernel)
        self._parents = snapshot.parents
        self._active = snapshot.devices
        for uuid in sorted(set(self._definitions) | set(self._active)):
            self._publish(uuid)
        runs = [
            self._begin_autostart(name, registration)
            for name, registration in sorted(snapshot.registrations.items())
        ]
        self._registrations.update(snapshot.registrations)
        await self._first_rounds(runs)

    def close(self) -> None:
        for runs in self._autostart_runs.values():
            for run in runs:
                if run.task is not None:
                    run.task.cancel()
        for task in (self._resync_task, self._reload_task):
            if task is not None:
                task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def attach(self, listener: Listener) -> None:
        self.listener = listener

    # ---- queries (memory only, never block) ------------------------------------------------

    def devices(self) -> dict[str, DeviceState]:
        return dict(self._published)

    def device(self, uuid: str) -> DeviceState:
        uuid = validate.uuid(uuid)
        state = self._published.get(uuid)
        if state is None:
            raise NotFound(f"device {uuid} is neither defined nor active")
        return state

    def parents(self) -> dict[str, Parent]:
        return dict(self._parents)

    # ---- mutations -------------------------------------------------------------------------

    async def create_device(
        self,
        parent: str,
        type_id: str,
        *,
        uuid: str | None = None,
        attributes: Attributes = (),
        force: bool = False,
    ) -> DeviceState:
        """Create a transient device now: not persisted, gone when stopped."""
        parent, type_id, attributes = _check_target(parent, type_id, attributes)
        uuid = validate.uuid(uuid) if uuid is not None else _new_uuid()
        async with self._locks(uuid, parent):
            existing = self._published.get(uuid)
            if existing is not None:
                if (
                    existing.active
                    and not existing.defined
                    and (existing.parent, existing.type_id, existing.attributes)
                    == (parent, type_id, attributes)
                ):
                    return existing  # a retry of a create that already succeeded
                conflict = Exists(_conflict_message(uuid, existing))
                if existing.active:
                    await self._refuse_running(
                        Definition(uuid, parent, type_id, False, attributes), conflict, force
                    )
                raise conflict
            config = Definition(uuid, parent, type_id, False, attributes)
            try:
                async with self.hooks.transaction("start", config, force=force):
                    await self._create_in_kernel(uuid, parent, type_id, attributes)
            except MdevdError as exc:
                if uuid in self._active:  # its rollback failed: it exists after all
                    self._start_failed(uuid, exc, REASON_API)
                raise
            self._transient_attributes[uuid] = attributes
            state = self._publish_present(uuid)
            self._event(state, "started", REASON_API)
            return state

    async def define_device(
        self,
        parent: str,
        type_id: str,
        *,
        uuid: str | None = None,
        attributes: Attributes = (),
        autostart: bool = False,
        start: bool = False,
        force: bool = False,
    ) -> DeviceState:
        """Persist a definition (durable before the reply); `start` also starts it."""
        parent, type_id, attributes = _check_target(parent, type_id, attributes)
        uuid = validate.uuid(uuid) if uuid is not None else _new_uuid()
        wanted = Definition(uuid, parent, type_id, autostart, attributes)
        async with self._locks(uuid, parent):
            existing = self._published.get(uuid)
            if existing is not None:
                same_target = (existing.parent, existing.type_id) == (parent, type_id)
                if existing.defined:
                    current = self._definitions[uuid]
                    if (current.parent, current.type_id, current.autostart, current.attributes) != (
                        parent,
                        type_id,
                        autostart,
                        attributes,
                    ):
                        raise Exists(_conflict_message(uuid, existing))
                elif not same_target:
                    raise Exists(_conflict_message(uuid, existing))
            if uuid not in self._definitions:
                async with self.hooks.transaction("define", wanted, force=force):
                    await self._save(wanted)
                state = self._publish_present(uuid)
                self._event(state, "defined", REASON_API)
            if start and uuid not in self._active:
                await self._start_locked(uuid, REASON_API, force=force)
            return self._published[uuid]

    async def start_device(self, uuid: str, *, force: bool = False) -> DeviceState:
        uuid = validate.uuid(uuid)
        definition = self._definitions.get(uuid)
        if definition is None:
            if uuid in self._active:
                already = AlreadyActive(f"device {uuid} is already active")
                await self._refuse_running(self._config(uuid), already, force)
            raise NotDefined(f"device {uuid} is not defined")
        async with self._locks(uuid, definition.parent):
            return await self._start_locked(uuid, REASON_API, force=force)

    async def stop_device(
        self, uuid: str, *, force: bool = False, caller_holds_group: bool = False
    ) -> DeviceState | None:
        """Remove the device from the kernel; the definition, if any, stays.

        An open vfio group means a VM uses the device (Busy), unless `caller_holds_group`:
        the caller opened it itself, and so no VM can have it (vfio allows one opener).
        """
        uuid = validate.uuid(uuid)
        device = self._active.get(uuid)
        if device is None:
            if uuid in self._definitions:
                raise NotActive(f"device {uuid} is not active")
            raise NotFound(f"device {uuid} is neither defined nor active")
        async with self._locks(uuid, device.parent):
            device = self._active.get(uuid)
            if device is None:
                raise NotActive(f"device {uuid} is not active")
            state_before = self._published[uuid]
            # What sysfs shows, as mdevctl tells its scripts: type, "manual", no attributes.
            running = Definition(uuid, device.parent, device.type_id)
            async with self.hooks.transaction("stop", running, force=force):
                self._begin_operation(uuid)
                removed: tuple[str, ...] = ()
                try:
                    await self._io(self.kernel.remove, uuid, check_busy=not caller_holds_group)
                    removed = _REMOVE_EVENTS
                except NotActive:
                    pass  # someone else removed it first: the effect the caller wanted
                finally:
                    self._end_operation(uuid, removed)
            self._active.pop(uuid, None)
            self._transient_attributes.pop(uuid, None)
            self._written_attributes.pop(uuid, None)
            await self._refresh_counts(device.parent)
            state = self._publish(uuid)
            self._event(state or replace(state_before, active=False), "stopped", REASON_API)
            if state is None:
                self.listener.device_removed(uuid)
            return state

    async def define_active(
        self, uuid: str, *, autostart: bool = False, force: bool = False
    ) -> DeviceState:
        """Persist a running transient device as it is."""
        uuid = validate.uuid(uuid)
        device = self._active.get(uuid)
        if uuid in self._definitions:
            raise Exists(f"device {uuid} is already defined")
        if device is None:
            raise NotActive(f"device {uuid} is not active")
        async with self._locks(uuid, device.parent):
            if uuid in self._definitions:
                raise Exists(f"device {uuid} is already defined")
            attributes = self._transient_attributes.get(uuid, ())
            config = Definition(uuid, device.parent, device.type_id, autostart, attributes)
            # The hooks may know the running device's attributes better (mdevctl's `get
            # attributes`: vfio-ap's are write-only in sysfs, and may have changed since).
            async with self.hooks.transaction(
                "define", config, force=force, fill_attributes=True
            ) as config:
                await self._save(config)
            state = self._publish_present(uuid)
            self._event(state, "defined", REASON_API)
            return state

    def _definition_of(self, uuid: str) -> Definition:
        """The definition of `uuid`: NotDefined for a device that only runs, else NotFound."""
        definition = self._definitions.get(uuid)
        if definition is None:
            if uuid in self._active:
                raise NotDefined(f"device {uuid} is not defined")
            raise NotFound(f"device {uuid} is neither defined nor active")
        return definition

    async def undefine(self, uuid: str, *, force: bool = False) -> DeviceState | None:
        """Drop the definition; a running device keeps running (as a transient one)."""
        uuid = validate.uuid(uuid)
        parent = self._definition_of(uuid).parent
        async with self._locks(uuid, parent):
            definition = self._definitions.get(uuid)
            if definition is None:  # undefined while we waited for the lock
                raise NotDefined(f"device {uuid} is not defined")
            before = self._published[uuid]
            async with self._config_lock:
                async with self.hooks.transaction("undefine", definition, force=force):
                    await self._io(self.store.remove, uuid)
                del self._definitions[uuid]
            if uuid in self._active:
                self._transient_attributes[uuid] = definition.attributes
            state = self._publish(uuid)
            self._event(
                state or replace(before, defined=False, config_file=""), "undefined", REASON_API
            )
            if state is None:
                self.listener.device_removed(uuid)
            return state

    async def update(
        self,
        uuid: str,
        *,
        type_id: str | None = None,
        autostart: bool | None = None,
        attributes: Attributes | None = None,
        live: bool = False,
        force: bool = False,
    ) -> DeviceState:
        """Change a definition; with `live`, also write the attributes to the running device."""
        uuid = validate.uuid(uuid)
        definition = self._definition_of(uuid)
        if type_id is not None:
            type_id = validate.type_id(type_id)
        if attributes is not None:
            attributes = _check_attributes(attributes)
            # Refused before any write or callout, live or not: a persist-only update must
            # not store what creating the device (or a live update) would refuse.
            for name, _ in attributes:
                try:
                    validate.device_attribute_name(name)
                except AttributeRejected as e:
                    raise AttributeRejected(f"device {uuid}: {e.message}") from None
        async with self._locks(uuid, definition.parent):
            definition = self._definitions[uuid]
            active = uuid in self._active
            if live and not active:
                raise NotActive(f"device {uuid} is not active: a live update needs it running")
            if live and type_id is not None and type_id != definition.type_id:
                raise InvalidArgument(
                    f"device {uuid}: the type of a running device cannot change live"
                )
            new = replace(
                definition,
                type_id=definition.type_id if type_id is None else type_id,
                autostart=definition.autostart if autostart is None else autostart,
                attributes=definition.attributes if attributes is None else attributes,
            )
            if new == definition and not live:
                return self._published[uuid]  # nothing to change: no write, no hooks, no event
            if live and attributes is not None:
                await self._write_live(new)
                self._written_attributes[uuid] = new.attributes
            async with self.hooks.transaction("modify", new, force=force):
                if new != definition:
                    await self._save(new)
            state = self._publish_present(uuid)
            self._event(state, "updated", REASON_API)
            return state

    async def update_running(self, uuid: str, attributes: Attributes) -> DeviceState:
        """Write `attributes` to the running device only; its definition, if any, stays.

        mdevctl's `modify --live` without `--defined`.
        """
        uuid = validate.uuid(uuid)
        attributes = _check_attributes(attributes)
        device = self._active.get(uuid)
        if device is None:
            if uuid in self._definitions:
                raise NotActive(f"device {uuid} is not active")
            raise NotFound(f"device {uuid} is neither defined nor active")
        async with self._locks(uuid, device.parent):
            if uuid not in self._active:
                raise NotActive(f"device {uuid} is not active")
            config = replace(self._config(uuid), attributes=attributes)
            await self._write_live(config)
            self._written_attributes[uuid] = attributes
            if uuid not in self._definitions:
                self._transient_attributes[uuid] = attributes
            state = self._publish_present(uuid)
            self._event(state, "updated", REASON_API)
            return state

    async def query_attributes(self, uuid: str) -> Attributes:
        """The running device's attributes: the hooks' answer (mdevctl's `get attributes`),
        else the ones mdevd wrote."""
        uuid = validate.uuid(uuid)
        if uuid not in self._active:
            if uuid in self._definitions:
                raise NotActive(f"device {uuid} is not active")
            raise NotFound(f"device {uuid} is neither defined nor active")
        answered = await self.hooks.query_attributes(self._config(uuid))
        return answered if answered is not None else self._published[uuid].attributes

    async def reload(self, reason: str = REASON_CONFIG) -> list[str]:
        """Re-read the definition directories; start new autostart definitions.

        Reports every definition that appeared, changed or went (`reason`: config). Definitions
        the API wrote are already known, so they are never reported back as outside changes.
        A removed definition leaves its running device alone. Returns once each newly started
        device had its first attempt.
        """
        async with self._config_lock:
            definitions, problems = await self._load_store(quiet=set(self.problems))
            self.problems = problems
            old = self._definitions
            changed = sorted(
                uuid
                for uuid in set(old) | set(definitions)
                if _essence(old.get(uuid)) != _essence(definitions.get(uuid))
            )
            for uuid in changed:
                before = self._published.get(uuid)
                was, now = old.get(uuid), definitions.get(uuid)
                if now is None:
                    self._definitions.pop(uuid, None)
                    if was is not None and uuid in self._active:
                        self._transient_attributes[uuid] = was.attributes
                else:
                    self._definitions[uuid] = now
                state = self._publish(uuid)
                event = "defined" if was is None else "undefined" if now is None else "updated"
                shown = state or (before and replace(before, defined=False, config_file=""))
                if shown is not None:
                    self._event(shown, event, reason)
                if state is None:
                    self.listener.device_removed(uuid)
        to_start: dict[str, list[str]] = {}
        for uuid in changed:
            definition = self._definitions.get(uuid)
            if definition is not None and definition.autostart and uuid not in self._active:
                to_start.setdefault(definition.parent, []).append(uuid)
        runs = []
        for parent, uuids in sorted(to_start.items()):
            registration = self._registrations.get(parent)
            if registration is not None and parent in self._parents:
                runs.append(self._begin_autostart(parent, registration, uuids, supersede=False))
        await self._first_rounds(runs)
        return problems

    def request_reload(self) -> None:
        """Reload soon (the definition directories changed); coalesced like resyncs."""
        if self._reload_task is not None and not self._reload_task.done():
            self._reload_again = True
            return
        self._reload_task = asyncio.get_running_loop().create_task(self._reload_loop())

    async def _reload_loop(self) -> None:
        while True:
            self._reload_again = False
            try:
                await self.reload(REASON_CONFIG)
            except Exception:  # a bad moment on disk must not end the watching
                log.exception("reloading the definitions failed")
            if not self._reload_again:
                return

    # ---- kernel events ---------------------------------------------------------------------

    def handle_uevent(
        self, action: str, subsystem: str, devpath: str, properties: dict[str, str]
    ) -> None:
        """Take one uevent (from udev) and schedule what it calls for. Never blocks.

        What counts is what may change the mdev view: any event of an mdev device (made or
        removed by us or by other tools), a parent's `change` with MDEV_STATE whatever its
        subsystem (`pci`, `css`, `mtty`...: never `mdev_bus`), the `add` or `bind` of a device
        that has `mdev_supported_types` (kernels without MDEV_STATE), and the `remove` or
        `unbind` of a known parent.
        """
        if "MDEV_STATE" in properties:
            self._kernel_sends_mdev_state = True
            self.request_resync()
        elif subsystem == "mdev":
            name = devpath.rsplit("/", 1)[-1]
            if not validate.is_uuid(name):
                self.request_resync()
            elif name.lower() in self._in_flight:
                # Most likely the running operation's own doing; it decides when it ends.
                self._early_events.setdefault(name.lower(), []).append(action)
            elif not self._expected(name.lower(), action):
                self._request_device_sync(name.lower())
        elif subsystem in _NEVER_PARENTS:
            return
        elif action in ("add", "bind") and not self._kernel_sends_mdev_state:
            # Kernels that announce registration with MDEV_STATE need no fallback (and the
            # add of a driver's own parent device comes just before that change event).
            self._probe_for_parent(devpath)
        elif action in ("remove", "unbind") and devpath.rsplit("/", 1)[-1] in self._parents:
            self.request_resync()

    def _probe_for_parent(self, devpath: str) -> None:
        if devpath in self._probing:
            return
        self._probing.add(devpath)

        async def probe() -> None:
            try:
                if await self._io(self.kernel.has_mdev_types, devpath):
                    self.request_resync()
            except Exception:  # an event can only ask for a look; it must not kill the loop
                log.exception("probing %s for mdev types failed", devpath)
            finally:
                self._probing.discard(devpath)

        asyncio.get_running_loop().create_task(probe())

    def request_resync(self) -> None:
        """Rescan the whole kernel soon. Coalesced: one rescan runs at a time, and one more
        if asked meanwhile."""
        self._full_resync_due = True
        self._ensure_sync_task()

    def _request_device_sync(self, uuid: str) -> None:
        self._devices_due.add(uuid)
        self._ensure_sync_task()

    def _ensure_sync_task(self) -> None:
        if self._resync_task is None or self._resync_task.done():
            self._resync_task = asyncio.get_running_loop().create_task(self._resync_loop())

    async def wait_idle(self) -> None:
        """Wait until no resync or reload is pending and no autostart runs."""
        while True:
            tasks = [
                run.task
                for runs in self._autostart_runs.values()
                for run in runs
                if run.task is not None and not run.task.done()
            ]
            for task in (self._resync_task, self._reload_task):
                if task is not None and not task.done():
                    tasks.append(task)
            if not tasks:
                return
            await asyncio.wait(tasks)

    async def _resync_loop(self) -> None:
        while self._full_resync_due or self._devices_due:
            try:
                if self._full_resync_due:
                    self._full_resync_due = False
                    # The rescan below reads everything: no event before it needs more, and
                    # after a loss (overflow) an expected event may never come.
                    self._devices_due.clear()
                    self._expected_events.clear()
                    await self.resync()
                else:
                    due = sorted(self._devices_due)
                    self._devices_due.clear()
                    await self._sync_devices(due)
            except Exception:  # a resync must never kill the event path; the next one retries
                log.exception("resynchronizing with the kernel failed")

    async def resync(self) -> None:
        """Re-read the kernel and report what others changed (other tools, driver unloads);
        then autostart the devices of parents that registered since the last look."""
        async with self._kernel_read():
            await self._resync()

    async def _resync(self) -> None:
        started = self._start_parent_read()
        snapshot = await self._io(self._snapshot_kernel)
        # A parent read applied while the snapshot was being read is newer than it if it
        # started after it (an operation's own look at its effect); one that started before
        # is older, and the snapshot wins (else a parent seen gone stayed in view for good).
        newer = {
            name
            for name in self._touched_parents
            if self._parent_read_applied.get(name, 0) > started
        }
        for name in set(self._parents) | set(snapshot.parents):
            if name not in newer:
                self._parent_read_applied[name] = started
        parents = {name: parent for name, parent in snapshot.parents.items() if name not in newer}
        kept = {name: self._parents[name] for name in newer if name in self._parents}
        parents.update(kept)
        for name in sorted(set(self._parents) - set(parents)):
            del self._parents[name]
            self.listener.parent_removed(name)
            self._parent_presence_changed(name)
        for name, parent in sorted(parents.items()):
            if self._parents.get(name) != parent:
                appeared = name not in self._parents
                self._parents[name] = parent
                self.listener.parent_changed(parent)
                if appeared:
                    self._parent_presence_changed(name)
        skip = self._in_flight | self._touched
        for uuid in sorted((set(self._active) | set(snapshot.devices)) - skip):
            self._apply_kernel_device(uuid, snapshot.devices.get(uuid))
        for name, registration in sorted(snapshot.registrations.items()):
            # A parent an operation has meanwhile seen gone waits for the next look.
            if name in self._parents and self._registrations.get(name) != registration:
                self._registrations[name] = registration
                self._begin_autostart(name, registration)

    async def _sync_devices(self, uuids: Sequence[str]) -> None:
        """Read back only these devices (their own uevents said they changed), and their
        parents' types when they did."""
        async with self._kernel_read():
            await self._sync_device_list(uuids)

    async def _sync_device_list(self, uuids: Sequence[str]) -> None:
        wanted = [uuid for uuid in uuids if uuid not in self._in_flight]
        if not wanted:
            return
        found = await self._io(lambda: {uuid: self.kernel.read_device(uuid) for uuid in wanted})
        parents: set[str] = set()
        for uuid in wanted:
            if uuid in self._in_flight or uuid in self._touched:
                continue  # an operation's own effect, newer than what was read
            was = self._active.get(uuid)
            if self._apply_kernel_device(uuid, found[uuid]):
                parents.update(d.parent for d in (was, found[uuid]) if d is not None)
        for parent in sorted(parents):
            with contextlib.suppress(MdevdError):
                await self._refresh_parent(parent)

    @contextlib.asynccontextmanager
    async def _kernel_read(self) -> AsyncIterator[None]:
        """Around a read of the kernel and the use of what it found: the operations that end
        meanwhile are recorded (`_touched`, `_touched_parents`), since the read may predate
        their effect; with no read in progress nothing is recorded, and nothing accumulates."""
        if self._kernel_reads == 0:
            self._touched.clear()
            self._touched_parents.clear()
        self._kernel_reads += 1
        try:
            yield
        finally:
            self._kernel_reads -= 1
            if self._kernel_reads == 0:
                self._touched.clear()
                self._touched_parents.clear()

    def _apply_kernel_device(self, uuid: str, now: ActiveDevice | None) -> bool:
        """Take the kernel's view of one device (None: absent); report a change made by
        someone else. Whether anything changed."""
        was = self._active.get(uuid)
        if was == now:
            return False
        before = self._published.get(uuid)
        if was is None or now is None or (was.parent, was.type_id) != (now.parent, now.type_id):
            # Gone, or someone else's device now: what mdevd wrote no longer describes it.
            self._written_attributes.pop(uuid, None)
        if now is None:
            del self._active[uuid]
            self._transient_attributes.pop(uuid, None)
        else:
            self._active[uuid] = now
        state = self._publish(uuid)
        if (was is None) != (now is None):
            event = "started" if now is not None else "stopped"
            shown = state or (before and replace(before, active=False))
            if shown is not None:
                self._event(shown, event, REASON_KERNEL)
        if state is None:
            self.listener.device_removed(uuid)
        return True

    # ---- autostart -------------------------------------------------------------------------

    def _begin_autostart(
        self,
        parent: str,
        registration: RegistrationId,
        uuids: Sequence[str] | None = None,
        *,
        supersede: bool = True,
    ) -> _AutostartRun:
        """Start a run for `uuids` (default: every autostart definition of the parent) in the
        background. A run for a new registration (`supersede`) first ends the earlier runs of
        the parent: one waiting to retry gives up, one starting a device finishes that one."""
        loop = asyncio.get_running_loop()
        run = _AutostartRun(parent, registration, first_round=loop.create_future())
        earlier = list(self._autostart_runs.get(parent, ()))
        if supersede:
            for other in earlier:
                other.superseded.set()
        runs = self._autostart_runs.setdefault(parent, [])
        runs.append(run)

        def finished(_: object) -> None:
            if run in runs:
                runs.remove(run)

        run.task = loop.create_task(self._autostart(run, uuids, earlier if supersede else []))
        run.task.add_done_callback(finished)
        return run

    @staticmethod
    async def _first_rounds(runs: Sequence[_AutostartRun]) -> None:
        for run in runs:
            if run.first_round is not None:
                await asyncio.shield(run.first_round)

    def _registration_current(self, run: _AutostartRun) -> bool:
        return (
            not run.superseded.is_set()
            and run.parent in self._parents
            and self._registrations.get(run.parent) == run.registration
        )

    async def _autostart(
        self, run: _AutostartRun, uuids: Sequence[str] | None, earlier: list[_AutostartRun]
    ) -> None:
        """Try each device once, in UUID order; retry the transient failures with backoff."""
        assert run.first_round is not None
        try:
            for other in earlier:
                if other.task is not None:
                    await asyncio.wait([other.task])
            if uuids is None:
                uuids = [
                    d.uuid
                    for d in self._definitions.values()
                    if d.parent == run.parent and d.autostart
                ]
            pending = sorted(uuids)
            delays = self.settings.autostart_retry_delays
            for attempt in range(len(delays) + 1):
                if attempt:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delays[attempt - 1]):
                            await run.superseded.wait()
                if not pending or not self._registration_current(run):
                    return
                retry_in = delays[attempt] if attempt < len(delays) else None
                retry = []
                created = False
                try:
                    for uuid in pending:
                        if not self._registration_current(run):
                            return
                        outcome = await self._autostart_device(uuid, run.parent, retry_in)
                        created = created or outcome is not _Outcome.SKIPPED
                        if outcome is _Outcome.RETRY:
                            retry.append(uuid)
                        elif outcome is _Outcome.PARENT_GONE:
                            return
                finally:
                    if created:  # the creates left the parent's counts to this one look
                        with contextlib.suppress(MdevdError):
                            await self._refresh_parent(run.parent)
                pending = retry
                if not run.first_round.done():
                    run.first_round.set_result(None)
        except Exception:  # one parent's autostart must not end the daemon's event handling
            log.exception("autostart on parent %s failed", run.parent)
        finally:
            if not run.first_round.done():
                run.first_round.set_result(None)

    async def _autostart_device(self, uuid: str, parent: str, retry_in: float | None) -> _Outcome:
        async with self._locks(uuid, parent):
            definition = self._definitions.get(uuid)
            if (
                definition is None
                or not definition.autostart
                or definition.parent != parent
                or uuid in self._active
            ):
                return _Outcome.SKIPPED
            try:
                await self._start_locked(
                    uuid,
                    REASON_AUTOSTART,
                    retry_in=retry_in,
                    adopt_existing=True,
                    refresh_parent=False,  # once per round, by the run
                )
            except ParentNotFound as exc:
                log.info("device %s: autostart stopped: %s", uuid, exc.message)
                return _Outcome.PARENT_GONE
            except MdevdError as exc:
                transient = self._transient(exc, parent)
                log.warning(
                    "device %s: autostart failed%s: %s",
                    uuid,
                    f" (retry in {retry_in:g} s)" if transient and retry_in is not None else "",
                    exc.message,
                )
                return _Outcome.RETRY if transient else _Outcome.FAILED
            return _Outcome.DONE

    def _transient(self, error: MdevdError, parent: str) -> bool:
        """Whether a failed start may succeed by itself soon: the parent is busy (EBUSY), or
        it is registered but lists no types yet (a driver still setting up). A type the
        parent's populated list lacks is permanent."""
        if isinstance(error, Busy):
            return True
        if isinstance(error, TypeNotSupported):
            known = self._parents.get(parent)
            return known is not None and not known.types
        return False

    # ---- internals -------------------------------------------------------------------------

    async def _start_locked(
        self,
        uuid: str,
        reason: str,
        *,
        retry_in: float | None = None,
        adopt_existing: bool = False,
        refresh_parent: bool = True,
        force: bool = False,
    ) -> DeviceState:
        """Start a defined device; a failure is a `start-failed` event and LastError, and is
        raised. With `retry_in`, a transient failure's event says when the retry comes. With
        `adopt_existing`, a device another tool created meanwhile under this UUID is taken as
        started (autostart wanted it running; it is not fought). `force` overrides a callout's
        veto."""
        definition = self._definitions.get(uuid)
        if uuid in self._active:
            already = AlreadyActive(f"device {uuid} is already active")
            if definition is None:
                raise already
            await self._refuse_running(definition, already, force)
        if definition is None:
            raise NotDefined(f"device {uuid} is not defined")
        try:
            async with self.hooks.transaction("start", definition, force=force):
                await self._create_in_kernel(
                    uuid,
                    definition.parent,
                    definition.type_id,
                    definition.attributes,
                    refresh_parent=refresh_parent,
                )
        except MdevdError as exc:
            if adopt_existing and isinstance(exc, Exists):
                device = await self._io(self.kernel.read_device, uuid)
                if device is not None:
                    self._active[uuid] = device
                    self._last_error.pop(uuid, None)
                    state = self._publish_present(uuid)
                    self._event(state, "started", REASON_KERNEL)
                    return state
            if uuid not in self._active:  # else the rollback failed, and LastError says so
                self._last_error[uuid] = f"{exc.name}: {exc.message}"
            retry = (
                retry_in
                if retry_in is not None and self._transient(exc, definition.parent)
                else None
            )
            self._start_failed(uuid, exc, reason, retry_in=retry)
            raise
        self._last_error.pop(uuid, None)
        state = self._publish_present(uuid)
        self._event(state, "started", reason)
        return state

    async def _refuse_running(self, config: Definition, error: MdevdError, force: bool) -> NoReturn:
        """Refuse to start `config`'s device, which runs, inside the hooks' transaction.

        mdevctl's start runs `pre` before it finds the device running, then `post` and the
        notifiers with the failure; s390 tools and site scripts may count on hearing of it.
        The answer is the same error (a `pre` veto comes first, as in mdevctl); nothing
        changed, so no event and no LastError. An identical create of a running transient
        device is not refused (a retry: the caller's create succeeded) and never gets here.
        """
        async with self.hooks.transaction("start", config, force=force):
            raise error
        raise error  # the hooks never swallow a failure; for the type checker

    def _start_failed(
        self, uuid: str, error: MdevdError, reason: str, *, retry_in: float | None = None
    ) -> None:
        state = self._publish_present(uuid)
        details = {
            "error_name": f"org.mdevd.Mdevd1.Error.{error.name}",
            "error_message": error.message,
        }
        if retry_in is not None:
            details["retry_in"] = f"{retry_in:g}"
        self._event(state, "start-failed", reason, **details)

    async def _create_in_kernel(
        self,
        uuid: str,
        parent: str,
        type_id: str,
        attributes: Attributes,
        *,
        refresh_parent: bool = True,
    ) -> None:
        """Create, then write attributes in order; on failure remove again, report the first
        error (never the rollback's: mdevctl hides the original one). Then read the parent's
        types again (their counts changed), unless `refresh_parent` is False (the caller
        creates many and refreshes once)."""
        self._begin_operation(uuid)
        effect: tuple[str, ...] = ()
        late_create: asyncio.Future[Any] | None = None
        try:
            known = self._parents.get(parent)
            if known is None or type_id not in known.types:
                # The cache may be stale (a parent registering right now): ask the kernel.
                await self._refresh_parent(parent)
            if parent not in self._parents:
                raise ParentNotFound(f"device {uuid}: parent {parent} is not present")
            if type_id not in self._parents[parent].types:
                raise TypeNotSupported(
                    f"device {uuid}: parent {parent} does not support type {type_id}"
                )
            try:
                device = await self._io(self.kernel.create, parent, type_id, uuid)
            except _IoTimeout as timeout:
                late_create = timeout.pending
                raise
            effect = _CREATE_EVENTS
            written = 0
            try:
                for name, value in attributes:
                    await self._io(self.kernel.write_attribute, uuid, name, value)
                    written += 1
            except MdevdError as first_error:
                try:
                    await self._io(self.kernel.remove, uuid, check_busy=False)
                    effect = _CREATE_EVENTS + _REMOVE_EVENTS
                except MdevdError as rollback_error:
                    log.error("device %s: rollback failed: %s", uuid, rollback_error.message)
                    # The device stays in the kernel, so it must stay in view: hidden, nobody
                    # could stop it. The caller publishes it with this as its LastError.
                    self._active[uuid] = device
                    self._written_attributes[uuid] = attributes[:written]
                    if uuid not in self._definitions:
                        self._transient_attributes[uuid] = attributes[:written]
                    self._last_error[uuid] = (
                        f"{first_error.name}: {first_error.message}; removing the device "
                        f"again failed: {rollback_error.message}"
                    )
                raise
            self._active[uuid] = device
            self._written_attributes[uuid] = attributes
        finally:
            if late_create is None:
                self._end_operation(uuid, effect)
            else:
                self._undo_late_create(uuid, late_create)
            if refresh_parent:
                with contextlib.suppress(MdevdError):
                    await self._refresh_counts(parent)

    def _undo_late_create(self, uuid: str, pending: asyncio.Future[Any]) -> None:
        """A create that timed out may still succeed in the kernel: then remove the device, as
        after any failed create, since its caller was told it failed.

        Until that is settled the UUID stays in flight (a resync must not adopt the device) and
        its lock is held, so a retry with the same UUID waits for the outcome. The parent's lock
        is not: the kernel may take long, and other devices of the parent need not wait.
        """

        async def undo() -> None:
            async with self._uuid_lock(uuid):
                try:
                    try:
                        await pending
                    except MdevdError:
                        return  # the create failed after all: nothing exists
                    log.warning("device %s: created after its create timed out: removing it", uuid)
                    try:
                        await self._io(self.kernel.remove, uuid, check_busy=False)
                    except MdevdError as error:
                        log.error("device %s: removing it failed: %s", uuid, error.message)
                finally:
                    self._end_operation(uuid, ())
                    # Whatever the kernel holds now is reported by a fresh look at it.
                    self.request_resync()

        task = asyncio.get_running_loop().create_task(undo())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _begin_operation(self, uuid: str) -> None:
        self._in_flight.add(uuid)
        self._expected_events.pop(uuid, None)

    def _end_operation(self, uuid: str, effect: Sequence[str]) -> None:
        """An operation on `uuid` is over; `effect` are the mdev uevents it made the kernel
        send. Events that came while it ran and are not among them were someone else's: the
        device is read back. Those still to come are expected, and not read back for."""
        self._in_flight.discard(uuid)
        if self._kernel_reads:
            self._touched.add(uuid)
        unexplained = list(self._early_events.pop(uuid, ()))
        still_to_come = []
        for action in effect:
            if action in unexplained:
                unexplained.remove(action)
            else:
                still_to_come.append(action)
        if still_to_come:
            if len(self._expected_events) >= _MAX_EXPECTED:
                # Events that never came (no event source, or lost ones): forget the oldest;
                # should it come after all, it only costs a re-read of its device.
                del self._expected_events[next(iter(self._expected_events))]
            self._expected_events[uuid] = still_to_come
        if unexplained:
            self._request_device_sync(uuid)

    def _expected(self, uuid: str, action: str) -> bool:
        """Whether this uevent is one an operation of ours caused (and takes it off)."""
        expected = self._expected_events.get(uuid)
        if not expected or action not in expected:
            return False
        expected.remove(action)
        if not expected:
            del self._expected_events[uuid]
        return True

    def _config(self, uuid: str) -> Definition:
        """What the hooks are told about a known device: its definition, else what runs."""
        definition = self._definitions.get(uuid)
        if definition is not None:
            return definition
        device = self._active[uuid]
        attributes = self._transient_attributes.get(uuid, ())
        return Definition(uuid, device.parent, device.type_id, False, attributes)

    async def _write_live(self, config: Definition) -> None:
        """Apply attributes to a running device: through the hooks when they can, else here."""
        if await self.hooks.live_update(config):
            return
        for name, value in config.attributes:
            await self._io(self.kernel.write_attribute, config.uuid, name, value)

    def _start_parent_read(self) -> int:
        self._parent_reads_started += 1
        return self._parent_reads_started

    async def _refresh_counts(self, name: str) -> None:
        """After the engine's own create or removal: only the types' counts changed.

        Reads `available_instances` of the known types alone (one file each instead of the
        whole parent); anything unexpected (the parent or a type gone) falls back to a full
        read. Numbered like every parent read, so an older read never undoes it.
        """
        known = self._parents.get(name)
        if known is None or not known.types:
            await self._refresh_parent(name)
            return
        started = self._start_parent_read()
        try:
            counts = await self._io(self.kernel.read_available_instances, name, list(known.types))
        except (ParentNotFound, TypeNotSupported):
            await self._refresh_parent(name)
            return
        current = self._parents.get(name)
        if current is None or set(current.types) != set(counts):
            await self._refresh_parent(name)  # it changed meanwhile: look at all of it
            return
        parent = replace(
            current,
            types={
                type_id: replace(mdev_type, available_instances=counts[type_id])
                for type_id, mdev_type in current.types.items()
            },
        )
        self._apply_parent_read(name, started, parent)

    async def _refresh_parent(self, name: str) -> None:
        started = self._start_parent_read()
        try:
            parent: Parent | None = await self._io(self.kernel.read_parent, name)
        except ParentNotFound:
            parent = None
        self._apply_parent_read(name, started, parent)

    def _apply_parent_read(self, name: str, started: int, parent: Parent | None) -> None:
        if self._parent_read_applied.get(name, 0) > started:
            return  # a read that started later is in: this one may show the parent before it
        self._parent_read_applied[name] = started
        if self._kernel_reads:
            self._touched_parents.add(name)
        if parent is None:
            if self._parents.pop(name, None) is not None:
                self.listener.parent_removed(name)
                self._parent_presence_changed(name)
        elif self._parents.get(name) != parent:
            appeared = name not in self._parents
            self._parents[name] = parent
            self.listener.parent_changed(parent)
            if appeared:
                self._parent_presence_changed(name)

    def _parent_presence_changed(self, name: str) -> None:
        """A parent came or went: the autostart devices waiting for it change status."""
        for uuid in sorted(
            d.uuid
            for d in self._definitions.values()
            if d.parent == name and d.autostart and d.uuid not in self._active
        ):
            self._publish(uuid)

    async def _load_store(
        self, quiet: set[str] | None = None
    ) -> tuple[dict[str, Definition], list[str]]:
        """Load the definitions; log each problem, except those in `quiet` (already logged)."""
        loaded = await self._io(self.store.load)
        problems = [str(problem) for problem in loaded.problems]
        for problem in problems:
            if quiet is None or problem not in quiet:
                log.warning("configuration: %s", problem)
        return dict(loaded.definitions), problems

    async def _save(self, definition: Definition) -> None:
        async with self._config_lock:
            saved = await self._io(self.store.save, definition)
            self._definitions[definition.uuid] = saved

    def _snapshot_kernel(self) -> KernelSnapshot:
        parents: dict[str, Parent] = {}
        registrations: dict[str, RegistrationId] = {}
        for name in self.kernel.parent_names():
            try:
                parents[name], registrations[name] = self.kernel.read_parent_and_registration(name)
            except ParentNotFound:
                continue
        return KernelSnapshot(parents, registrations, self.kernel.list_devices())

    async def _io(self, function: Callable[..., T], *args: object, **kwargs: object) -> T:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, lambda: function(*args, **kwargs))
        try:
            async with asyncio.timeout(self.settings.io_timeout):
                # Shielded: a worker thread cannot be stopped, and what it still does matters.
                return await asyncio.shield(future)
        except TimeoutError as exc:
            future.add_done_callback(_consume_outcome)
            name = getattr(function, "__name__", "operation")
            raise _IoTimeout(
                f"{name} did not finish within {self.settings.io_timeout:g} s", future
            ) from exc

    @contextlib.asynccontextmanager
    async def _locks(self, uuid: str, parent: str) -> AsyncIterator[None]:
        # Always the UUID first, then the parent: one order, no deadlock.
        async with self._uuid_lock(uuid), self._parent_locks[parent]:
            yield

    @contextlib.asynccontextmanager
    async def _uuid_lock(self, uuid: str) -> AsyncIterator[None]:
        lock, users = self._uuid_locks.get(uuid, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._uuid_locks[uuid] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._uuid_locks[uuid]
            if users == 1:
                del self._uuid_locks[uuid]
            else:
                self._uuid_locks[uuid] = (lock, users - 1)

    def _state(self, uuid: str) -> DeviceState | None:
        definition = self._definitions.get(uuid)
        device = self._active.get(uuid)
        if definition is None and device is None:
            return None
        if device is not None:
            parent, type_id = device.parent, device.type_id
        else:
            assert definition is not None
            parent, type_id = definition.parent, definition.type_id
        if definition is not None:
            attributes = definition.attributes
        else:
            attributes = self._transient_attributes.get(uuid, ())
        last_error = self._last_error.get(uuid, "")
        return DeviceState(
            uuid=uuid,
            parent=parent,
            type_id=type_id,
            active=device is not None,
            defined=definition is not None,
            autostart=definition.autostart if definition else False,
            attributes=attributes,
            sysfs_path=device.sysfs_path if device else "",
            iommu_group=device.iommu_group if device else -1,
            config_file=definition.source_file if definition else "",
            last_error=last_error,
            status=self._status(definition, device, last_error),
            pending=self._pending(definition, device),
        )

    def _status(
        self, definition: Definition | None, device: ActiveDevice | None, last_error: str
    ) -> Status:
        """The first that holds: active, waiting (for its parent, to autostart), failed (its
        last start did), inactive. A device that waits for its parent shows `waiting` even if
        a start failed before: autostart tries again when the parent comes."""
        if device is not None:
            return Status.ACTIVE
        if (
            definition is not None
            and definition.autostart
            and definition.parent not in self._parents
        ):
            return Status.WAITING
        if last_error:
            return Status.FAILED
        return Status.INACTIVE

    def _pending(
        self, definition: Definition | None, device: ActiveDevice | None
    ) -> PendingChanges:
        """What of the definition the running device does not have yet. The attributes are
        compared only when mdevd knows what it wrote (it started the device itself)."""
        if definition is None or device is None:
            return NO_PENDING_CHANGES
        written = self._written_attributes.get(definition.uuid)
        pending = PendingChanges(
            parent=definition.parent if definition.parent != device.parent else None,
            type_id=definition.type_id if definition.type_id != device.type_id else None,
            attributes=(
                definition.attributes
                if written is not None and written != definition.attributes
                else None
            ),
        )
        return pending if pending else NO_PENDING_CHANGES

    def _publish(self, uuid: str) -> DeviceState | None:
        """Recompute one UUID's state and tell the listener if it changed."""
        state = self._state(uuid)
        previous = self._published.get(uuid)
        if state is None:
            self._published.pop(uuid, None)
            self._last_error.pop(uuid, None)
            return None
        self._published[uuid] = state
        if state != previous:
            self.listener.device_changed(state)
        return state

    def _publish_present(self, uuid: str) -> DeviceState:
        """`_publish` for a UUID the caller just defined or started: it has a state."""
        state = self._publish(uuid)
        if state is None:
            raise AssertionError(f"device {uuid} vanished from the engine's view")
        return state

    def _event(self, state: DeviceState, event: str, reason: str, **details: str) -> None:
        log.info(
            "device %s: %s (%s)",
            state.uuid,
            event,
            reason,
            extra={
                "MDEV_UUID": state.uuid,
                "MDEV_PARENT": state.parent,
                "MDEV_TYPE": state.type_id,
                "MDEVD_EVENT": event,
            },
        )
        self.listener.device_event(state, event, {"reason": reason, **details})


class _IoTimeout(Timeout):
    """A kernel or store operation that did not finish in time; `pending` is its outcome."""

    def __init__(self, message: str, pending: asyncio.Future[Any]) -> None:
        super().__init__(message)
        self.pending = pending


def _consume_outcome(future: asyncio.Future[Any]) -> None:
    # Nobody may wait for a timed-out operation: retrieve its exception so that asyncio does
    # not report it as never retrieved.
    if not future.cancelled():
        future.exception()


#: The uevents (of the mdev device itself) that creating and removing a device make the kernel
#: send, in order (docs/kernel-abi.md).
_CREATE_EVENTS = ("add", "bind")
_REMOVE_EVENTS = ("unbind", "remove")

#: How many devices' own events may be awaited at once (each create or removal awaits two).
_MAX_EXPECTED = 4096

#: Subsystems whose devices are never mdev parents: the vfio nodes that come with each mdev.
_NEVER_PARENTS = frozenset({"vfio", "vfio-dev"})


class _Outcome(enum.Enum):
    SKIPPED = "skipped"  # nothing to do (running already, or no longer an autostart device)
    DONE = "done"
    FAILED = "failed"
    RETRY = "retry"
    PARENT_GONE = "parent-gone"


def _new_uuid() -> str:
    return str(uuid_module.uuid4())


def _check_attributes(attributes: Iterable[tuple[str, str]]) -> Attributes:
    checked: list[tuple[str, str]] = []
    for pair in attributes:
        if not isinstance(pair, Sequence) or isinstance(pair, str) or len(pair) != 2:
            raise InvalidArgument("attributes must be (name, value) pairs")
        name, value = pair
        checked.append((validate.attribute_name(name), validate.attribute_value(value, name)))
    return tuple(checked)


def _check_target(
    parent: str, type_id: str, attributes: Iterable[tuple[str, str]]
) -> tuple[str, str, Attributes]:
    return validate.parent_name(parent), validate.type_id(type_id), _check_attributes(attributes)


def _conflict_message(uuid: str, existing: DeviceState) -> str:
    what = ", ".join(
        word for word, on in (("defined", existing.defined), ("active", existing.active)) if on
    )
    return (
        f"device {uuid} already exists ({what}) as type {existing.type_id}"
        f" on parent {existing.parent}"
    )


def _essence(definition: Definition | None) -> tuple[object, ...] | None:
    if definition is None:
        return None
    return (
        definition.parent,
        definition.type_id,
        definition.autostart,
        definition.attributes,
        definition.source_file,
    )
