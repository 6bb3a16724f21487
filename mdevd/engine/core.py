# SPDX-License-Identifier: LGPL-2.1-or-later
"""The engine's core: the one place that decides what happens to a device.

It holds the daemon's view of every UUID (its definition, its kernel presence, or both),
reconciles definitions with the kernel, runs create-then-attributes transactions with rollback,
serializes mutations per parent, and tells its subscribers (the D-Bus layer first) about every
change before the operation that caused it returns, so a client that gets a reply already has
the signals (contract rule 1).

Kernel events (uevents, read by `mdevd.udev`) only say *that* something may have changed: the
engine then rescans the kernel and reports the difference, so lost, duplicated or reordered
events cannot leave it with a wrong view; the operation ledger (`ledger`) keeps its own
operations' effects from being taken for someone else's. A parent's registration is known by
the identity of its types directory (`Sysfs.registration_id`), so autostart (`autostart`) runs
once per registration however many events announce it (mdevctl runs twice: its issue #53), and
runs again after an unregister/register pair even if no rescan saw the parent gone.

Kernel and store I/O run in a worker pool (`runner`): a sysfs write can block (a device held by
a VM) and must never stall the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid as uuid_module
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, NoReturn

from mdevd import defaults, validate
from mdevd.engine.autostart import Autostart, Outcome, is_transient
from mdevd.engine.ledger import OperationLedger
from mdevd.engine.ownership import Ownerships
from mdevd.engine.ports import (
    DefinitionStore,
    DeviceEvent,
    Event,
    HookAction,
    Kernel,
    Listener,
    NoHooks,
    OperationHooks,
    Reason,
    RegistrationId,
    Subscribers,
)
from mdevd.engine.runner import BackgroundTasks, Coalescer, IoRunner, IoTimeout, KeyedLocks
from mdevd.engine.view import device_state, same_definition
from mdevd.errors import (
    AlreadyActive,
    AttributeRejected,
    Exists,
    InvalidArgument,
    MdevdError,
    NotActive,
    NotDefined,
    NotFound,
    ParentNotFound,
    TypeNotSupported,
)
from mdevd.model import ActiveDevice, Attributes, Definition, DeviceState, Parent
from mdevd.owners import LIFETIME_MANUAL, Owner, OwnerRecord

log = logging.getLogger("mdevd.engine")


@dataclass(frozen=True, slots=True)
class EngineSettings:
    #: How long one kernel or store operation may take before the caller gets `Timeout`.
    io_timeout: float = defaults.IO_TIMEOUT
    #: Worker threads for sysfs and file I/O. More than the parents that can block at once.
    io_workers: int = defaults.IO_WORKERS
    #: Seconds before each retry of an autostart that failed for a transient reason (types not
    #: listed yet, EBUSY); their number bounds the retries. Permanent failures are not retried.
    autostart_retry_delays: tuple[float, ...] = defaults.AUTOSTART_RETRY_DELAYS
    #: How long a device whose lifetime ended waits to be released by whoever holds it open,
    #: and how often it is tried meanwhile (seconds).
    release_wait: float = defaults.OWNER_GONE_RELEASE_WAIT
    release_poll: float = 1.0


@dataclass(frozen=True, slots=True)
class KernelSnapshot:
    parents: dict[str, Parent]
    registrations: dict[str, RegistrationId]
    devices: dict[str, ActiveDevice]


class Engine:
    def __init__(
        self,
        kernel: Kernel,
        store: DefinitionStore,
        settings: EngineSettings | None = None,
        hooks: OperationHooks | None = None,
        owners: OwnerRecord | None = None,
    ) -> None:
        self.kernel = kernel
        self.store = store
        self.settings = settings or EngineSettings()
        self.hooks: OperationHooks = hooks or NoHooks()
        self._subscribers = Subscribers()
        self._io = IoRunner(self.settings.io_timeout, self.settings.io_workers)
        self.uuid_locks = KeyedLocks()
        self._parent_locks = KeyedLocks()
        #: What the engine's own operations are doing, so that what the kernel says meanwhile
        #: is not taken for someone else's doing.
        self.ledger = OperationLedger()
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
        # Guards the definitions on disk and in memory together: a reload never sees a file
        # the API has written but not yet recorded (and reports it as an outside change).
        self._config_lock = asyncio.Lock()
        # Tasks that finish what a timed-out operation left, and probes of new devices.
        self._background = BackgroundTasks()
        self.problems: list[str] = []
        # Kernel rescans, one at a time: a full rescan pending, and devices to look at (an mdev
        # device's own event needs only that device read back).
        self._resyncs = Coalescer(
            self._sync_what_is_due, "resynchronizing with the kernel failed", log
        )
        self._full_resync_due = False
        self._devices_due: set[str] = set()
        self._reloads = Coalescer(
            lambda: self.reload(Reason.CONFIG), "reloading the definitions failed", log
        )
        # The latest registration of each parent a rescan saw; kept when the parent goes (a
        # registration's identity never comes back), so autostart cannot run twice for one.
        self._registrations: dict[str, RegistrationId] = {}
        self._autostart = Autostart(
            wanted=self._autostart_wanted,
            current=self._registration_current,
            start=self._autostart_device,
            refresh_parent=self._refresh_parent,
            retry_delays=self.settings.autostart_retry_delays,
        )
        self._probing: set[str] = set()
        #: Who made or defined each device through mdevd, and their lifetimes.
        self.ownership = Ownerships(
            owners,
            self._io,
            self._stop_for_owner,
            self._background,
            release_wait=self.settings.release_wait,
            release_poll=self.settings.release_poll,
        )

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
        with self.ledger.kernel_read():
            snapshot = await self._io.run(self._snapshot_kernel)
        self._parents = snapshot.parents
        self._active = snapshot.devices
        # Owners of devices gone while the daemon was not running are gone with them.
        await self.ownership.load(lambda uuid: uuid in self._active or uuid in self._definitions)
        for uuid in sorted(set(self._definitions) | set(self._active)):
            self._publish(uuid)
        runs = [
            self._autostart.begin(name, registration)
            for name, registration in sorted(snapshot.registrations.items())
        ]
        self._registrations.update(snapshot.registrations)
        await self._autostart.first_rounds(runs)

    def close(self) -> None:
        self._autostart.close()
        self._resyncs.cancel()
        self._reloads.cancel()
        self.ownership.close()
        self._io.close()

    def subscribe(self, listener: Listener) -> None:
        """Tell `listener` every change from now on, after the subscribers before it."""
        self._subscribers.subscribe(listener)

    def unsubscribe(self, listener: Listener) -> None:
        self._subscribers.unsubscribe(listener)

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

    def remembered(self) -> set[str]:
        """The UUIDs the engine keeps something of besides their state: a last error, the
        attributes a transient device was created with, those written to a running device.
        None of it may outlive the device, or memory grows with every UUID ever used."""
        return (
            set(self._last_error) | set(self._transient_attributes) | set(self._written_attributes)
        )

    # ---- mutations -------------------------------------------------------------------------

    async def create_device(
        self,
        parent: str,
        type_id: str,
        *,
        uuid: str | None = None,
        attributes: Attributes = (),
        force: bool = False,
        placement: str = "",
        owner: Owner | None = None,
    ) -> DeviceState:
        """Create a transient device now: not persisted, gone when stopped. `placement` pins
        where on the parent (a backend that places nothing refuses it); `owner` says who asked,
        and for how long the device lives."""
        parent, type_id, attributes, placement = self._check_target(
            parent, type_id, attributes, placement
        )
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
            config = Definition(uuid, parent, type_id, False, attributes, placement=placement)
            try:
                async with self.hooks.transaction(HookAction.START, config, force=force):
                    await self._create_in_kernel(
                        uuid, parent, type_id, attributes, placement=placement
                    )
            except MdevdError as exc:
                if uuid in self._active:  # its rollback failed: it exists after all
                    self._start_failed(uuid, exc, Reason.API)
                raise
            self._transient_attributes[uuid] = attributes
            await self.ownership.record(uuid, owner, defined=False)
            state = self._publish_present(uuid)
            self._event(state, Event.STARTED, Reason.API)
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
        placement: str = "",
        owner: Owner | None = None,
    ) -> DeviceState:
        """Persist a definition (durable before the reply); `start` also starts it.
        `placement` pins where on the parent the device goes (`Definition.placement`); `owner`
        says who defined it (a defined device lives until undefined: no lifetime)."""
        if owner is not None and owner.lifetime != LIFETIME_MANUAL:
            raise InvalidArgument("a lifetime is for transient devices; a definition stays")
        parent, type_id, attributes, placement = self._check_target(
            parent, type_id, attributes, placement
        )
        uuid = validate.uuid(uuid) if uuid is not None else _new_uuid()
        wanted = Definition(uuid, parent, type_id, autostart, attributes, placement=placement)
        async with self._locks(uuid, parent):
            existing = self._published.get(uuid)
            if existing is not None:
                same_target = (existing.parent, existing.type_id) == (parent, type_id)
                if existing.defined:
                    # The same definition again (a retry) is no conflict, wherever it is kept.
                    current = self._definitions[uuid]
                    if replace(current, source_file="", source_line=0) != wanted:
                        raise Exists(_conflict_message(uuid, existing))
                elif not same_target:
                    raise Exists(_conflict_message(uuid, existing))
            if uuid not in self._definitions:
                async with self.hooks.transaction(HookAction.DEFINE, wanted, force=force):
                    await self._save(wanted)
                if owner is not None or self.ownership.get(uuid) is None:
                    await self.ownership.record(uuid, owner, defined=True)
                state = self._publish_present(uuid)
                self._event(state, Event.DEFINED, Reason.API)
            if start and uuid not in self._active:
                await self._start_locked(uuid, Reason.API, force=force)
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
            return await self._start_locked(uuid, Reason.API, force=force)

    async def stop_device(
        self,
        uuid: str,
        *,
        force: bool = False,
        caller_holds_group: bool = False,
        reason: Reason = Reason.API,
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
            async with self.hooks.transaction(HookAction.STOP, running, force=force):
                self.ledger.begin_operation(uuid)
                removed: tuple[str, ...] = ()
                try:
                    await self._io.run(self.kernel.remove, uuid, check_busy=not caller_holds_group)
                    removed = self.kernel.remove_events(uuid)
                except NotActive:
                    pass  # someone else removed it first: the effect the caller wanted
                finally:
                    self._end_operation(uuid, removed)
            self._active.pop(uuid, None)
            self._transient_attributes.pop(uuid, None)
            self._written_attributes.pop(uuid, None)
            await self._refresh_counts(device.parent)
            state = self._publish(uuid)
            self._event(state or replace(state_before, active=False), Event.STOPPED, reason)
            if state is None:
                self._subscribers.device_removed(uuid)
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
                HookAction.DEFINE, config, force=force, fill_attributes=True
            ) as config:
                await self._save(config)
            state = self._publish_present(uuid)
            self._event(state, Event.DEFINED, Reason.API)
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
                async with self.hooks.transaction(HookAction.UNDEFINE, definition, force=force):
                    await self._io.run(self.store.remove, uuid)
                del self._definitions[uuid]
            if uuid in self._active:
                self._transient_attributes[uuid] = definition.attributes
            state = self._publish(uuid)
            self._event(
                state or replace(before, defined=False, config_file=""), Event.UNDEFINED, Reason.API
            )
            if state is None:
                self._subscribers.device_removed(uuid)
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
            async with self.hooks.transaction(HookAction.MODIFY, new, force=force):
                if new != definition:
                    await self._save(new)
            state = self._publish_present(uuid)
            self._event(state, Event.UPDATED, Reason.API)
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
            self._event(state, Event.UPDATED, Reason.API)
            return state

    # ---- owners and lifetimes (`ownership`) ------------------------------------------------

    def end_lifetime(self, uuid: str) -> None:
        """The device's owner is gone: remove it (`Ownerships.end_lifetime`)."""
        self.ownership.end_lifetime(uuid)

    async def _stop_for_owner(self, uuid: str) -> bool:
        """Stop a device whose lifetime ended; False when it is no transient device now (it
        was defined meanwhile, or is gone). `Busy` while it is held."""
        if uuid not in self._active or uuid in self._definitions:
            return False
        await self.stop_device(uuid, reason=Reason.OWNER_GONE)
        return True

    async def open_device(self, uuid: str, *, cdev: bool = False) -> int:
        """An fd to an active device's VFIO group (or, with `cdev`, its VFIO device node) for
        its caller to hand over; the fd is the only grant, nothing on disk changes. `Busy`
        while anyone holds it (vfio lets one process open a group)."""
        uuid = validate.uuid(uuid)
        if uuid not in self._active:
            if uuid in self._definitions:
                raise NotActive(f"device {uuid} is not active")
            raise NotFound(f"device {uuid} is neither defined nor active")
        return await self._io.run(self.kernel.open_vfio, uuid, cdev)

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

    async def reload(self, reason: Reason = Reason.CONFIG) -> list[str]:
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
                if not same_definition(old.get(uuid), definitions.get(uuid))
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
                event = Event.UPDATED
                if was is None or now is None:
                    event = Event.DEFINED if was is None else Event.UNDEFINED
                shown = state or (before and replace(before, defined=False, config_file=""))
                if shown is not None:
                    self._event(shown, event, reason)
                if state is None:
                    self._subscribers.device_removed(uuid)
        to_start: dict[str, list[str]] = {}
        for uuid in changed:
            definition = self._definitions.get(uuid)
            if definition is not None and definition.autostart and uuid not in self._active:
                to_start.setdefault(definition.parent, []).append(uuid)
        runs = []
        for parent, uuids in sorted(to_start.items()):
            registration = self._registrations.get(parent)
            if registration is not None and parent in self._parents:
                runs.append(self._autostart.begin(parent, registration, uuids, supersede=False))
        await self._autostart.first_rounds(runs)
        return problems

    def request_reload(self) -> None:
        """Reload soon (the definition directories changed): one reload at a time, and one
        more if asked meanwhile. A bad moment on disk is logged, and does not end the
        watching."""
        self._reloads.request()

    # ---- kernel events ---------------------------------------------------------------------

    def handle_uevent(
        self, action: str, subsystem: str, devpath: str, properties: dict[str, str]
    ) -> None:
        """Take one uevent (from udev) and schedule what it calls for. Never blocks.

        The backends say what an event means (`Kernel.interpret_uevent`): a rescan, a device's
        own event (which the ledger may explain as the engine's own doing), a device to probe
        for types, or a parent that may be gone.
        """
        meaning = self.kernel.interpret_uevent(action, subsystem, devpath, properties)
        if meaning.rescan or (meaning.parent_gone and meaning.parent_gone in self._parents):
            self.request_resync()
        if meaning.device and self.ledger.device_uevent(meaning.device, meaning.action):
            self._request_device_sync(meaning.device)
        if meaning.probe:
            self._probe_for_parent(meaning.probe)

    def _probe_for_parent(self, devpath: str) -> None:
        if devpath in self._probing:
            return
        self._probing.add(devpath)

        async def probe() -> None:
            try:
                if await self._io.run(self.kernel.probe_parent, devpath):
                    self.request_resync()
            except Exception:  # an event can only ask for a look; it must not kill the loop
                log.exception("probing %s for types failed", devpath)
            finally:
                self._probing.discard(devpath)

        self._background.spawn(probe())

    def request_resync(self) -> None:
        """Rescan the whole kernel soon. Coalesced: one rescan runs at a time, and one more
        if asked meanwhile."""
        self._full_resync_due = True
        self._resyncs.request()

    def _request_device_sync(self, uuid: str) -> None:
        self._devices_due.add(uuid)
        self._resyncs.request()

    async def wait_idle(self) -> None:
        """Wait until no resync or reload is pending and no autostart runs."""
        while True:
            tasks = self._autostart.tasks()
            for coalescer in (self._resyncs, self._reloads):
                if coalescer.running is not None:
                    tasks.append(coalescer.running)
            if not tasks:
                return
            await asyncio.wait(tasks)

    async def _sync_what_is_due(self) -> None:
        """One step of the rescans (`_resyncs` runs it until nothing is due): a full rescan
        if one is due, else a read-back of the devices due. A failure is logged, and the
        next request retries: a resync must never end the event path."""
        if self._full_resync_due:
            self._full_resync_due = False
            # The rescan below reads everything: no event before it needs more, and after a
            # loss (overflow) an expected event may never come.
            self._devices_due.clear()
            self.ledger.forget_expected()
            await self.resync()
        elif self._devices_due:
            due = sorted(self._devices_due)
            self._devices_due.clear()
            await self._sync_devices(due)

    async def resync(self) -> None:
        """Re-read the kernel and report what others changed (other tools, driver unloads);
        then autostart the devices of parents that registered since the last look."""
        with self.ledger.kernel_read():
            await self._resync()

    async def _resync(self) -> None:
        started = self.ledger.start_parent_read()
        snapshot = await self._io.run(self._snapshot_kernel)
        # A parent read applied while the snapshot was being read is newer than it if it
        # started after it (an operation's own look at its effect); one that started before
        # is older, and the snapshot wins (else a parent seen gone stayed in view for good).
        newer = self.ledger.accept_snapshot(started, set(self._parents) | set(snapshot.parents))
        parents = {name: parent for name, parent in snapshot.parents.items() if name not in newer}
        kept = {name: self._parents[name] for name in newer if name in self._parents}
        parents.update(kept)
        for name in sorted(set(self._parents) - set(parents)):
            del self._parents[name]
            self._subscribers.parent_removed(name)
            self._parent_presence_changed(name)
        for name, parent in sorted(parents.items()):
            if self._parents.get(name) != parent:
                appeared = name not in self._parents
                self._parents[name] = parent
                self._subscribers.parent_changed(parent)
                if appeared:
                    self._parent_presence_changed(name)
        # An operation's own effect is newer than what the snapshot shows of its device.
        settled = [
            uuid
            for uuid in sorted(set(self._active) | set(snapshot.devices))
            if self.ledger.settled(uuid)
        ]
        for uuid in settled:
            self._apply_kernel_device(uuid, snapshot.devices.get(uuid))
        for name, registration in sorted(snapshot.registrations.items()):
            # A parent an operation has meanwhile seen gone waits for the next look.
            if name in self._parents and self._registrations.get(name) != registration:
                self._registrations[name] = registration
                self._autostart.begin(name, registration)

    async def _sync_devices(self, uuids: Sequence[str]) -> None:
        """Read back only these devices (their own uevents said they changed), and their
        parents' types when they did."""
        with self.ledger.kernel_read():
            await self._sync_device_list(uuids)

    async def _sync_device_list(self, uuids: Sequence[str]) -> None:
        wanted = [uuid for uuid in uuids if not self.ledger.in_flight(uuid)]
        if not wanted:
            return
        found = await self._io.run(lambda: {uuid: self.kernel.read_device(uuid) for uuid in wanted})
        parents: set[str] = set()
        for uuid in wanted:
            if not self.ledger.settled(uuid):
                continue  # an operation's own effect, newer than what was read
            was = self._active.get(uuid)
            if self._apply_kernel_device(uuid, found[uuid]):
                parents.update(d.parent for d in (was, found[uuid]) if d is not None)
        for parent in sorted(parents):
            with contextlib.suppress(MdevdError):
                await self._refresh_parent(parent)

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
            event = Event.STARTED if now is not None else Event.STOPPED
            shown = state or (before and replace(before, active=False))
            if shown is not None:
                self._event(shown, event, Reason.KERNEL)
        if state is None:
            self._subscribers.device_removed(uuid)
        return True

    # ---- autostart -------------------------------------------------------------------------

    def _autostart_wanted(self, parent: str) -> list[str]:
        return [d.uuid for d in self._definitions.values() if d.parent == parent and d.autostart]

    def _registration_current(self, parent: str, registration: RegistrationId) -> bool:
        return parent in self._parents and self._registrations.get(parent) == registration

    async def _autostart_device(self, uuid: str, parent: str, retry_in: float | None) -> Outcome:
        """One autostart attempt at one device (`Autostart` decides when, and how often)."""
        async with self._locks(uuid, parent):
            definition = self._definitions.get(uuid)
            if (
                definition is None
                or not definition.autostart
                or definition.parent != parent
                or uuid in self._active
            ):
                return Outcome.SKIPPED
            try:
                await self._start_locked(
                    uuid,
                    Reason.AUTOSTART,
                    retry_in=retry_in,
                    adopt_existing=True,
                    refresh_parent=False,  # once per round, by the run
                )
            except ParentNotFound as exc:
                log.info("device %s: autostart stopped: %s", uuid, exc.message)
                return Outcome.PARENT_GONE
            except MdevdError as exc:
                transient = self._transient(exc, parent)
                log.warning(
                    "device %s: autostart failed%s: %s",
                    uuid,
                    f" (retry in {retry_in:g} s)" if transient and retry_in is not None else "",
                    exc.message,
                )
                return Outcome.RETRY if transient else Outcome.FAILED
            return Outcome.DONE

    def _transient(self, error: MdevdError, parent: str) -> bool:
        return is_transient(error, self._parents.get(parent))

    # ---- internals -------------------------------------------------------------------------

    async def _start_locked(
        self,
        uuid: str,
        reason: Reason,
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
            async with self.hooks.transaction(HookAction.START, definition, force=force):
                await self._create_in_kernel(
                    uuid,
                    definition.parent,
                    definition.type_id,
                    definition.attributes,
                    refresh_parent=refresh_parent,
                    placement=definition.placement,
                )
        except MdevdError as exc:
            if adopt_existing and isinstance(exc, Exists):
                device = await self._io.run(self.kernel.read_device, uuid)
                if device is not None:
                    self._active[uuid] = device
                    self._last_error.pop(uuid, None)
                    state = self._publish_present(uuid)
                    self._event(state, Event.STARTED, Reason.KERNEL)
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
        self._event(state, Event.STARTED, reason)
        return state

    async def _refuse_running(self, config: Definition, error: MdevdError, force: bool) -> NoReturn:
        """Refuse to start `config`'s device, which runs, inside the hooks' transaction.

        mdevctl's start runs `pre` before it finds the device running, then `post` and the
        notifiers with the failure; s390 tools and site scripts may count on hearing of it.
        The answer is the same error (a `pre` veto comes first, as in mdevctl); nothing
        changed, so no event and no LastError. An identical create of a running transient
        device is not refused (a retry: the caller's create succeeded) and never gets here.
        """
        async with self.hooks.transaction(HookAction.START, config, force=force):
            raise error
        raise error  # the hooks never swallow a failure; for the type checker

    def _start_failed(
        self, uuid: str, error: MdevdError, reason: Reason, *, retry_in: float | None = None
    ) -> None:
        state = self._publish_present(uuid)
        self._announce(
            state,
            DeviceEvent(
                Event.START_FAILED,
                reason,
                error_name=error.name,
                error_message=error.message,
                retry_in=retry_in,
            ),
        )

    async def _create_in_kernel(
        self,
        uuid: str,
        parent: str,
        type_id: str,
        attributes: Attributes,
        *,
        refresh_parent: bool = True,
        placement: str = "",
    ) -> None:
        """Create (at `placement`, if given), then write attributes in order; on failure
        remove again, report the first error (never the rollback's: mdevctl hides the original
        one). Then read the parent's types again (their counts changed), unless
        `refresh_parent` is False (the caller creates many and refreshes once)."""
        self.ledger.begin_operation(uuid)
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
                device = await self._io.run(self.kernel.create, parent, type_id, uuid, placement)
            except IoTimeout as timeout:
                late_create = timeout.pending
                raise
            effect = self.kernel.create_events(parent)
            written = 0
            try:
                for name, value in attributes:
                    await self._io.run(self.kernel.write_attribute, uuid, name, value)
                    written += 1
            except MdevdError as first_error:
                try:
                    await self._io.run(self.kernel.remove, uuid, check_busy=False)
                    effect += self.kernel.remove_events(uuid)
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
            async with self.uuid_locks.hold(uuid):
                try:
                    try:
                        await pending
                    except MdevdError:
                        return  # the create failed after all: nothing exists
                    log.warning("device %s: created after its create timed out: removing it", uuid)
                    try:
                        await self._io.run(self.kernel.remove, uuid, check_busy=False)
                    except MdevdError as error:
                        log.error("device %s: removing it failed: %s", uuid, error.message)
                finally:
                    self._end_operation(uuid, ())
                    # Whatever the kernel holds now is reported by a fresh look at it.
                    self.request_resync()

        self._background.spawn(undo())

    def _end_operation(self, uuid: str, effect: Sequence[str]) -> None:
        """An operation on `uuid` is over; `effect` are the mdev uevents it made the kernel
        send. Events that came while it ran and are not among them were someone else's: the
        device is read back."""
        if self.ledger.end_operation(uuid, effect):
            self._request_device_sync(uuid)

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
            await self._io.run(self.kernel.write_attribute, config.uuid, name, value)

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
        started = self.ledger.start_parent_read()
        try:
            counts = await self._io.run(
                self.kernel.read_available_instances, name, list(known.types)
            )
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
        started = self.ledger.start_parent_read()
        try:
            parent: Parent | None = await self._io.run(self.kernel.read_parent, name)
        except ParentNotFound:
            parent = None
        self._apply_parent_read(name, started, parent)

    def _apply_parent_read(self, name: str, started: int, parent: Parent | None) -> None:
        if not self.ledger.accept_parent_read(name, started):
            return  # a read that started later is in: this one may show the parent before it
        if parent is None:
            if self._parents.pop(name, None) is not None:
                self._subscribers.parent_removed(name)
                self._parent_presence_changed(name)
        elif self._parents.get(name) != parent:
            appeared = name not in self._parents
            self._parents[name] = parent
            self._subscribers.parent_changed(parent)
            if appeared:
                self._parent_presence_changed(name)

    def _parent_presence_changed(self, name: str) -> None:
        """A parent came or went: the devices defined on it and not active change (autostart
        ones their status, every one its backend, which is its parent's)."""
        for uuid in sorted(
            d.uuid
            for d in self._definitions.values()
            if d.parent == name and d.uuid not in self._active
        ):
            self._publish(uuid)

    async def _load_store(
        self, quiet: set[str] | None = None
    ) -> tuple[dict[str, Definition], list[str]]:
        """Load the definitions; log each problem, except those in `quiet` (already logged)."""
        loaded = await self._io.run(self.store.load)
        problems = [str(problem) for problem in loaded.problems]
        for problem in problems:
            if quiet is None or problem not in quiet:
                log.warning("configuration: %s", problem)
        # A file may spell a type as the admin knows it (an NVIDIA id, `1145`): held as the
        # parent lists it, so the running device and its definition compare equal.
        return {
            uuid: replace(d, type_id=self.kernel.canonical_type(d.parent, d.type_id))
            for uuid, d in loaded.definitions.items()
        }, problems

    async def _save(self, definition: Definition) -> None:
        async with self._config_lock:
            saved = await self._io.run(self.store.save, definition)
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

    def _check_target(
        self, parent: str, type_id: str, attributes: Iterable[tuple[str, str]], placement: str
    ) -> tuple[str, str, Attributes, str]:
        """A create's or define's target, checked, with the type spelled as the parent lists it
        (an NVIDIA id `1145` is `nvidia-1145`)."""
        parent = validate.parent_name(parent)
        type_id = self.kernel.canonical_type(parent, validate.type_id(type_id))
        return parent, type_id, _check_attributes(attributes), validate.pci_address(placement)

    @contextlib.asynccontextmanager
    async def _locks(self, uuid: str, parent: str) -> AsyncIterator[None]:
        # Always the UUID first, then the parent: one order, no deadlock.
        async with self.uuid_locks.hold(uuid), self._parent_locks.hold(parent):
            yield

    def _state(self, uuid: str) -> DeviceState | None:
        return device_state(
            uuid,
            self._definitions.get(uuid),
            self._active.get(uuid),
            transient_attributes=self._transient_attributes.get(uuid, ()),
            written_attributes=self._written_attributes.get(uuid),
            last_error=self._last_error.get(uuid, ""),
            parents=self._parents,
            owner=self.ownership.get(uuid),
        )

    def _publish(self, uuid: str) -> DeviceState | None:
        """Recompute one UUID's state and tell the listener if it changed."""
        if uuid in self._definitions:
            # However it became defined (DefineDevice, Device.Define, a file an admin wrote),
            # a defined device lives until undefined: a lifetime it had as a transient one
            # ends here, or it would end the device after an Undefine, or at a restart.
            self.ownership.defined(uuid)
        state = self._state(uuid)
        previous = self._published.get(uuid)
        if state is None:
            self._published.pop(uuid, None)
            self._last_error.pop(uuid, None)
            self.ownership.forget(uuid)  # gone: its owner with it
            return None
        self._published[uuid] = state
        if state != previous:
            self._subscribers.device_changed(state)
        return state

    def _publish_present(self, uuid: str) -> DeviceState:
        """`_publish` for a UUID the caller just defined or started: it has a state."""
        state = self._publish(uuid)
        if state is None:
            raise AssertionError(f"device {uuid} vanished from the engine's view")
        return state

    def _event(self, state: DeviceState, kind: Event, reason: Reason) -> None:
        self._announce(state, DeviceEvent(kind, reason))

    def _announce(self, state: DeviceState, event: DeviceEvent) -> None:
        log.info(
            "device %s: %s (%s)",
            state.uuid,
            event.kind.value,
            event.reason.value,
            extra={
                "MDEV_UUID": state.uuid,
                "MDEV_PARENT": state.parent,
                "MDEV_TYPE": state.type_id,
                "MDEVD_EVENT": event.kind.value,
            },
        )
        self._subscribers.device_event(state, event)


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


def _conflict_message(uuid: str, existing: DeviceState) -> str:
    what = ", ".join(
        word for word, on in (("defined", existing.defined), ("active", existing.active)) if on
    )
    return (
        f"device {uuid} already exists ({what}) as type {existing.type_id}"
        f" on parent {existing.parent}"
    )
