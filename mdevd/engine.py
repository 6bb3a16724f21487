"""The engine: the one place that decides what happens to a device.

It holds the daemon's view of every UUID (its definition, its kernel presence, or both),
reconciles definitions with the kernel, runs create-then-attributes transactions with rollback,
serializes mutations per parent, and tells a listener (the D-Bus layer) about every change
before the operation that caused it returns, so a client that gets a reply already has the
signals (contract rule 1).

Kernel and store I/O run in a worker pool: a sysfs write can block (a device held by a VM) and
must never stall the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid as uuid_module
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, replace
from typing import Protocol, TypeVar

from mdevd import validate
from mdevd.errors import (
    AlreadyActive,
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
from mdevd.model import ActiveDevice, Attributes, Definition, DeviceState, Parent

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


class _NullListener:
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


@dataclass(frozen=True, slots=True)
class EngineSettings:
    #: How long one kernel or store operation may take before the caller gets `Timeout`.
    io_timeout: float = 30.0
    #: Worker threads for sysfs and file I/O. More than the parents that can block at once.
    io_workers: int = 16


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
        self.listener: Listener = _NullListener()
        self.hooks: OperationHooks = hooks or _NoHooks()
        self._executor = ThreadPoolExecutor(
            max_workers=self.settings.io_workers, thread_name_prefix="mdevd-io"
        )
        self._definitions: dict[str, Definition] = {}
        self._active: dict[str, ActiveDevice] = {}
        self._parents: dict[str, Parent] = {}
        # Attributes a transient device was created with: the kernel cannot tell them back.
        self._transient_attributes: dict[str, Attributes] = {}
        self._last_error: dict[str, str] = {}
        self._published: dict[str, DeviceState] = {}
        self._parent_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._uuid_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        # UUIDs an operation is creating or removing right now: a concurrent resync must not
        # report the operation's own effect as a change made by someone else.
        self._in_flight: set[str] = set()
        self.problems: list[str] = []
        self._resync_task: asyncio.Task[None] | None = None
        self._resync_again = False
        self._autostart_due: set[str] = set()

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Load definitions, read the kernel, adopt what runs, autostart what should run.

        Adoption never removes or recreates a device that exists: a restarted daemon finds the
        VMs' devices as it left them.
        """
        definitions, problems = await self._load_store()
        self._definitions = definitions
        self.problems = problems
        parents, active = await self._io(self._snapshot_kernel)
        self._parents = parents
        self._active = active
        for uuid in sorted(set(self._definitions) | set(self._active)):
            self._publish(uuid)
        for parent in sorted(self._parents):
            await self.autostart_parent(parent)

    def close(self) -> None:
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
                raise Exists(_conflict_message(uuid, existing))
            config = Definition(uuid, parent, type_id, False, attributes)
            async with self.hooks.transaction("start", config, force=force):
                await self._create_in_kernel(uuid, parent, type_id, attributes)
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
                raise AlreadyActive(f"device {uuid} is already active")
            raise NotDefined(f"device {uuid} is not defined")
        async with self._locks(uuid, definition.parent):
            return await self._start_locked(uuid, REASON_API, force=force)

    async def stop_device(self, uuid: str, *, force: bool = False) -> DeviceState | None:
        """Remove the device from the kernel; the definition, if any, stays."""
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
                self._in_flight.add(uuid)
                try:
                    await self._io(self.kernel.remove, uuid)
                except NotActive:
                    pass  # someone else removed it first: the effect the caller wanted
                finally:
                    self._in_flight.discard(uuid)
            self._active.pop(uuid, None)
            self._transient_attributes.pop(uuid, None)
            await self._refresh_parent(device.parent)
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

    async def undefine(self, uuid: str, *, force: bool = False) -> DeviceState | None:
        """Drop the definition; a running device keeps running (as a transient one)."""
        uuid = validate.uuid(uuid)
        definition = self._definitions.get(uuid)
        if definition is None:
            if uuid in self._active:
                raise NotDefined(f"device {uuid} is not defined")
            raise NotFound(f"device {uuid} is neither defined nor active")
        async with self._locks(uuid, definition.parent):
            definition = self._definitions.get(uuid)
            if definition is None:
                raise NotDefined(f"device {uuid} is not defined")
            before = self._published[uuid]
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
        definition = self._definitions.get(uuid)
        if definition is None:
            if uuid in self._active:
                raise NotDefined(f"device {uuid} is not defined")
            raise NotFound(f"device {uuid} is neither defined nor active")
        if type_id is not None:
            type_id = validate.type_id(type_id)
        if attributes is not None:
            attributes = _check_attributes(attributes)
        async with self._locks(uuid, definition.parent):
            definition = self._definitions[uuid]
            active = uuid in self._active
            if live and active and type_id is not None and type_id != definition.type_id:
                raise InvalidArgument(
                    f"device {uuid}: the type of a running device cannot change live"
                )
            new = replace(
                definition,
                type_id=definition.type_id if type_id is None else type_id,
                autostart=definition.autostart if autostart is None else autostart,
                attributes=definition.attributes if attributes is None else attributes,
            )
            if live and active and attributes is not None:
                await self._write_live(new)
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

        A removed definition leaves its running device alone.
        """
        definitions, problems = await self._load_store()
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
        for uuid in changed:
            definition = self._definitions.get(uuid)
            if (
                definition is not None
                and definition.autostart
                and uuid not in self._active
                and definition.parent in self._parents
            ):
                async with self._locks(uuid, definition.parent):
                    await self._start_quietly(uuid, REASON_AUTOSTART)
        return problems

    async def autostart_parent(self, parent: str) -> None:
        """Start each autostart definition of `parent` that is not running, in UUID order."""
        wanted = sorted(
            d.uuid
            for d in self._definitions.values()
            if d.parent == parent and d.autostart and d.uuid not in self._active
        )
        for uuid in wanted:
            async with self._locks(uuid, parent):
                if uuid in self._active or uuid not in self._definitions:
                    continue
                await self._start_quietly(uuid, REASON_AUTOSTART)

    # ---- kernel events ---------------------------------------------------------------------

    def handle_uevent(
        self, action: str, subsystem: str, devpath: str, properties: dict[str, str]
    ) -> None:
        """Take one uevent (from udev) and schedule what it calls for. Never blocks.

        The event only says *that* something may have changed; what changed is read back from
        sysfs by a resync, so lost, duplicated or reordered events cannot leave a wrong view.
        """
        state = properties.get("MDEV_STATE")
        name = devpath.rsplit("/", 1)[-1]
        if state == "registered" or (action == "add" and subsystem != "mdev"):
            # A (re-)registration: its autostart devices are due even if a fast
            # unregister/register pair leaves the parent present in both snapshots.
            self._autostart_due.add(name)
        elif not (subsystem == "mdev" or state or action == "remove"):
            return
        self.request_resync()

    def request_resync(self) -> None:
        """Coalesce resync requests: one runs at a time, and one more if asked meanwhile."""
        if self._resync_task is not None and not self._resync_task.done():
            self._resync_again = True
            return
        self._resync_task = asyncio.get_running_loop().create_task(self._resync_loop())

    async def wait_idle(self) -> None:
        """Wait until no resync is pending (tests and the daemon's shutdown use it)."""
        while self._resync_task is not None and not self._resync_task.done():
            await asyncio.shield(self._resync_task)

    async def _resync_loop(self) -> None:
        while True:
            self._resync_again = False
            try:
                await self.resync()
            except Exception:  # a resync must never kill the event path; the next one retries
                log.exception("resynchronizing with the kernel failed")
            if not self._resync_again:
                return

    async def resync(self) -> None:
        """Re-read the kernel and report what others changed (other tools, driver unloads);
        then autostart the devices of parents that (re-)registered."""
        parents, active = await self._io(self._snapshot_kernel)
        for name in sorted(set(self._parents) - set(parents)):
            del self._parents[name]
            self.listener.parent_removed(name)
        for name, parent in sorted(parents.items()):
            if name not in self._parents:
                self._autostart_due.add(name)
            if self._parents.get(name) != parent:
                self._parents[name] = parent
                self.listener.parent_changed(parent)
        for uuid in sorted((set(self._active) | set(active)) - self._in_flight):
            was, now = self._active.get(uuid), active.get(uuid)
            if was == now:
                continue
            before = self._published.get(uuid)
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
        due = sorted(self._autostart_due & set(self._parents))
        self._autostart_due.clear()
        for name in due:
            await self.autostart_parent(name)

    # ---- internals -------------------------------------------------------------------------

    async def _start_locked(self, uuid: str, reason: str, *, force: bool = False) -> DeviceState:
        if uuid in self._active:
            raise AlreadyActive(f"device {uuid} is already active")
        definition = self._definitions.get(uuid)
        if definition is None:
            raise NotDefined(f"device {uuid} is not defined")
        try:
            async with self.hooks.transaction("start", definition, force=force):
                await self._create_in_kernel(
                    uuid, definition.parent, definition.type_id, definition.attributes
                )
        except MdevdError as exc:
            self._last_error[uuid] = f"{exc.name}: {exc.message}"
            state = self._publish_present(uuid)
            self._event(
                state,
                "start-failed",
                reason,
                error_name=f"org.mdevd.Mdevd1.Error.{exc.name}",
                error_message=exc.message,
            )
            raise
        self._last_error.pop(uuid, None)
        state = self._publish_present(uuid)
        self._event(state, "started", reason)
        return state

    async def _start_quietly(self, uuid: str, reason: str) -> None:
        """Start for autostart or reload: failures are events and LastError, not exceptions."""
        try:
            await self._start_locked(uuid, reason)
        except MdevdError as exc:
            log.warning("device %s: autostart failed: %s", uuid, exc.message)

    async def _create_in_kernel(
        self, uuid: str, parent: str, type_id: str, attributes: Attributes
    ) -> None:
        """Create, then write attributes in order; on failure remove again, report the first
        error (never the rollback's: mdevctl hides the original one)."""
        self._in_flight.add(uuid)
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
            device = await self._io(self.kernel.create, parent, type_id, uuid)
            try:
                for name, value in attributes:
                    await self._io(self.kernel.write_attribute, uuid, name, value)
            except MdevdError:
                try:
                    await self._io(self.kernel.remove, uuid, check_busy=False)
                except MdevdError as rollback_error:
                    log.error("device %s: rollback failed: %s", uuid, rollback_error.message)
                    self._active[uuid] = device
                raise
            self._active[uuid] = device
        finally:
            self._in_flight.discard(uuid)
            with contextlib.suppress(MdevdError):
                await self._refresh_parent(parent)

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

    async def _refresh_parent(self, name: str) -> None:
        try:
            parent: Parent | None = await self._io(self.kernel.read_parent, name)
        except ParentNotFound:
            parent = None
        if parent is None:
            if self._parents.pop(name, None) is not None:
                self.listener.parent_removed(name)
        elif self._parents.get(name) != parent:
            self._parents[name] = parent
            self.listener.parent_changed(parent)

    async def _load_store(self) -> tuple[dict[str, Definition], list[str]]:
        loaded = await self._io(self.store.load)
        problems = [str(problem) for problem in loaded.problems]
        for problem in problems:
            log.warning("configuration: %s", problem)
        return dict(loaded.definitions), problems

    async def _save(self, definition: Definition) -> None:
        saved = await self._io(self.store.save, definition)
        self._definitions[definition.uuid] = saved

    def _snapshot_kernel(self) -> tuple[dict[str, Parent], dict[str, ActiveDevice]]:
        return self.kernel.list_parents(), self.kernel.list_devices()

    async def _io(self, function: Callable[..., T], *args: object, **kwargs: object) -> T:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, lambda: function(*args, **kwargs))
        try:
            async with asyncio.timeout(self.settings.io_timeout):
                return await future
        except TimeoutError as exc:
            name = getattr(function, "__name__", "operation")
            raise Timeout(f"{name} did not finish within {self.settings.io_timeout:g} s") from exc

    @contextlib.asynccontextmanager
    async def _locks(self, uuid: str, parent: str) -> AsyncIterator[None]:
        # Always the UUID first, then the parent: one order, no deadlock.
        async with self._uuid_locks[uuid], self._parent_locks[parent]:
            yield

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
            last_error=self._last_error.get(uuid, ""),
        )

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
