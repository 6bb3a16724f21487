# SPDX-License-Identifier: LGPL-2.1-or-later
"""The daemon: startup order, the event loop's wiring, signals and readiness.

Startup order matters and is fixed: configuration and definitions are loaded, the uevent
monitor is opened (so nothing falls between it and the first look at sysfs), the kernel is
enumerated and reconciled (running devices are adopted, never recreated), the objects are
exported, and the bus name is requested last, so a client that sees the name sees a complete
tree. SIGHUP reloads definitions; SIGTERM and SIGINT stop the daemon and leave every device
running (a VM may be using it). The stop is logged at info level with its cause: the signal,
the bus connection or name lost, or a fatal error.

Autostart runs before the name is owned, so no client can receive the `start-failed` events it
sends: they are kept (`StartupFailures`) and sent again, once, with `replayed=true`, as soon as
the name is owned.

The service manager hears about each step (mdevd.service): `READY=1` once the name is owned
(after the startup autostart: a long one asks for more time with `EXTEND_TIMEOUT_USEC=` while
it progresses), `STATUS=` with the device counts, `RELOADING=1`/`READY=1` around a reload,
`STOPPING=1`, and watchdog keep-alives from the event loop when `WatchdogSec=` asks for them.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dbus_fast import BusType, Message, RequestNameReply
from dbus_fast.aio import MessageBus
from dbus_fast.constants import NameFlag

from mdevd import __version__, defaults
from mdevd.backends import Backends
from mdevd.bus import sendfix
from mdevd.bus.auth import Authorizer
from mdevd.bus.caller import CallerTracker
from mdevd.bus.connection import ManagedObjectBus
from mdevd.bus.names import BUS_NAME
from mdevd.bus.owners import CallerOwners, LifetimeWatcher
from mdevd.bus.tree import ObjectTree
from mdevd.compat import setup as compat_setup
from mdevd.config import load_config
from mdevd.engine import DefinitionStore as EngineStore
from mdevd.engine import DeviceEvent, Engine, EngineSettings, Event, NullListener, OperationHooks
from mdevd.engine.runner import Coalescer
from mdevd.errors import ConfigInvalid, MdevdError
from mdevd.kernel import Sysfs
from mdevd.logs import LEVELS, set_level, setup_logging
from mdevd.model import DeviceState
from mdevd.nvidia_vf import NvidiaVf
from mdevd.owners import OwnerRecord
from mdevd.service import (
    AutostartProgress,
    Notifier,
    StartupExtender,
    StatusFollower,
    Watchdog,
    device_status,
    watchdog_interval,
)
from mdevd.store import DefinitionStore
from mdevd.udev import Uevent, UeventSource
from mdevd.watch import DirectoryWatcher, Watched

log = logging.getLogger("mdevd")


@dataclass(frozen=True, slots=True)
class DaemonSettings:
    sysfs_root: Path = defaults.SYSFS_ROOT
    dev_root: Path = defaults.DEV_ROOT
    #: `udev` (after udevd's processing, production), `kernel` (no udevd) or `none`.
    uevent_source: str = defaults.UEVENT_SOURCE
    bus_address: str | None = None
    io_timeout: float = defaults.IO_TIMEOUT
    uevent_receive_buffer: int = defaults.UEVENT_RECEIVE_BUFFER
    autostart_retry_delays: tuple[float, ...] = defaults.AUTOSTART_RETRY_DELAYS
    #: Reload when the definition directories change (inotify).
    watch_definitions: bool = True
    #: Seconds without an autostart attempt ending after which a long startup stops asking the
    #: service manager for more time: longer than one attempt can take.
    startup_stall_limit: float = defaults.STARTUP_STALL_LIMIT
    #: What the daemon keeps across restarts besides definitions.
    state_dir: Path = defaults.STATE_DIR
    #: The nvidia-vf backend: how long clearing a busy VF is retried, and the GPUs whose
    #: SR-IOV it enables at start (docs/nvidia-vf.md).
    nvidia_vf_remove_retry_seconds: float = defaults.NVIDIA_VF_REMOVE_RETRY_SECONDS
    nvidia_vf_enable_sriov: tuple[str, ...] = ()


class StartupFailures(NullListener):
    """An engine subscriber that keeps each `start-failed` event, to be sent again once the
    daemon owns its name (when clients can receive them)."""

    def __init__(self) -> None:
        self._kept: list[tuple[DeviceState, DeviceEvent]] = []

    def take(self) -> list[tuple[DeviceState, DeviceEvent]]:
        """The kept events, oldest first."""
        kept, self._kept = self._kept, []
        return kept

    def device_event(self, state: DeviceState, event: DeviceEvent) -> None:
        if event.kind is Event.START_FAILED:
            self._kept.append((state, event))


class Daemon:
    def __init__(
        self,
        settings: DaemonSettings,
        store: EngineStore,
        hooks: OperationHooks | None = None,
        *,
        watched: Sequence[Watched] = (),
    ) -> None:
        """`watched`: the directories the store reads, as it describes them
        (`CompatStore.watched`), watched for changes to reload."""
        self.settings = settings
        self._watched = watched
        self.nvidia_vf = NvidiaVf(
            settings.sysfs_root,
            settings.dev_root,
            settings.state_dir / defaults.NVIDIA_VF_STATE_NAME,
            # A clearing that retries past the I/O timeout would outlive its caller's answer.
            remove_retry_seconds=min(
                settings.nvidia_vf_remove_retry_seconds, settings.io_timeout / 2
            ),
        )
        self.kernel = Backends([Sysfs(settings.sysfs_root, settings.dev_root), self.nvidia_vf])
        self.store = store
        self.engine = Engine(
            self.kernel,
            store,
            EngineSettings(
                io_timeout=settings.io_timeout,
                autostart_retry_delays=settings.autostart_retry_delays,
            ),
            hooks,
            owners=OwnerRecord(settings.state_dir / defaults.OWNERS_STATE_NAME),
        )
        self.events: UeventSource | None = None
        self.watcher: DirectoryWatcher | None = None
        self.bus: ManagedObjectBus | None = None
        self.tree: ObjectTree | None = None
        self._stop = asyncio.Event()
        #: Why the daemon stops, as its log says it; set by the first cause.
        self.stop_reason = ""
        #: 0 after a requested stop; 1 when the bus went away (the service manager restarts).
        self.exit_status = 0
        self.notifier = Notifier.from_environment()
        interval = watchdog_interval()
        self.watchdog = Watchdog(self.notifier, interval) if interval else None
        self._status: StatusFollower | None = None
        # SIGHUP: reload now, or once more after the reload in progress (signals coalesce).
        self._reloads = Coalescer(self.reload, "reloading definitions failed", log)
        self._explicit_reload = asyncio.Lock()

    async def start(self) -> None:
        if self.watchdog is not None:
            self.watchdog.start()
        self.notifier.status("Starting: reading definitions and the kernel")
        # Both watches open before the first look, so no change falls between look and watch.
        if self.settings.uevent_source != "none":
            self.events = UeventSource(
                self.settings.uevent_source, self.settings.uevent_receive_buffer
            )
            self.events.open()
        if self.settings.watch_definitions:
            self.watcher = DirectoryWatcher(self._watched, self.engine.request_reload)
            self.watcher.open()
        # Autostart runs before READY=1; a long one asks for more time while it progresses.
        progress = AutostartProgress(lambda: extender.progressed())
        extender = StartupExtender(
            self.notifier,
            lambda: self._autostart_status(progress.attempted),
            stall_limit=self.settings.startup_stall_limit,
        )
        # The engine's subscribers, each told every change in the order they subscribed:
        # `early_failures` (until the name is owned), `progress` (during the startup
        # autostart), the tree (from its export on: the signals), `self._status` (the counts
        # for the service manager). What depends on timing: `early_failures` hears every
        # start-failed event from before the first autostart until the name is owned, when it
        # stops and what it kept is sent again in the same step (no event can fall between);
        # the tree subscribes in the step that exports what the engine holds.
        early_failures = StartupFailures()
        self.engine.subscribe(early_failures)
        self.engine.subscribe(progress)
        extender.start()
        await self._enable_sriov()
        try:
            await self.engine.start()
        finally:
            await extender.stop()
            self.engine.unsubscribe(progress)  # nobody asks for the progress any more
        sendfix.warn_if_untested()
        if self.settings.bus_address:
            bus = ManagedObjectBus(bus_address=self.settings.bus_address)
        else:
            bus = ManagedObjectBus(bus_type=BusType.SYSTEM)
        await bus.connect()
        self.bus = connected = bus
        callers = CallerTracker(connected)
        callers.install()
        authorizer = Authorizer(connected, callers)
        lifetimes = LifetimeWatcher(connected, self.engine, callers)
        lifetimes.install()
        self.tree = ObjectTree(
            connected,
            self.engine,
            authorizer.authorize_caller,
            reload=self.reload,
            owners=CallerOwners(connected, callers),
            lifetimes=lifetimes,
            authorize_for=authorizer.authorize_caller_for,
        )
        self.tree.export_all()  # subscribes the tree
        # Owners that left while the daemon was not running: their devices' lifetimes end.
        await lifetimes.catch_up()
        self._status = StatusFollower(self.describe, self.notifier)
        self.engine.subscribe(self._status)
        if self.events is not None:
            self.events.attach(
                asyncio.get_running_loop(), self._on_uevent, self.engine.request_resync
            )
        if self.watcher is not None:
            self.watcher.attach(asyncio.get_running_loop())
        reply = await connected.request_name(BUS_NAME, NameFlag.DO_NOT_QUEUE)
        if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
            raise RuntimeError(f"could not own {BUS_NAME} on the bus ({reply.name})")
        connected.add_message_handler(self._on_bus_message)
        self.engine.unsubscribe(early_failures)
        self._replay(early_failures.take())
        status = self.describe()
        log.info("mdevd %s ready on %s: %s", __version__, BUS_NAME, status)
        self.notifier.ready(f"Ready: {status}")

    async def _enable_sriov(self) -> None:
        """Enable the VFs of the GPUs the configuration names, where none are yet; a GPU
        that refuses is logged and does not stop the daemon (its VFs may come later)."""
        for pf in self.settings.nvidia_vf_enable_sriov:
            try:
                enabled = await asyncio.to_thread(self.nvidia_vf.enable_sriov, pf)
            except MdevdError as exc:
                log.warning("GPU %s: %s", pf, exc.message)
                continue
            log.info("GPU %s: %d SR-IOV virtual functions enabled", pf, enabled)

    def _replay(self, failures: list[tuple[DeviceState, DeviceEvent]]) -> None:
        """Send again the start-failed events no client could receive (the name was not
        owned yet), marked `replayed`."""
        assert self.tree is not None
        for state, event in failures:
            log.debug("device %s: start-failed sent again now that the name is owned", state.uuid)
            self.tree.device_event(state, event, replayed=True)

    def _autostart_status(self, attempted: set[str]) -> str:
        parents = self.engine.parents()
        waiting = sum(
            1
            for state in self.engine.devices().values()
            if state.autostart
            and not state.active
            and state.parent in parents
            and state.uuid not in attempted
        )
        return f"Starting: autostart, {len(attempted)} devices tried, {waiting} to go"

    def describe(self) -> str:
        """The device counts, as `systemctl status` shows them."""
        return device_status(self.engine.devices(), len(self.engine.problems))

    def _on_uevent(self, event: Uevent) -> None:
        self.engine.handle_uevent(event.action, event.subsystem, event.devpath, event.properties)

    def _on_bus_message(self, message: Message) -> None:
        # Losing the name (the bus daemon restarting, a kill of the connection) means no client
        # can reach us: stop, and let the service manager restart us.
        if message.member == "NameLost" and message.body and message.body[0] == BUS_NAME:
            log.error("lost the bus name %s: stopping", BUS_NAME)
            self.exit_status = 1
            self.request_stop(f"the bus name {BUS_NAME} was lost")

    def request_stop(self, reason: str = "a stop was requested") -> None:
        """Stop soon; `reason` is what the log says (the first reason given counts)."""
        self.stop_reason = self.stop_reason or reason
        self._stop.set()

    def request_reload(self) -> None:
        """SIGHUP: reload now, or once more after the reload in progress (signals coalesce).
        A failure is logged: the daemon keeps serving what it had; the next reload retries."""
        self._reloads.request()

    async def reload(self) -> None:
        """An explicit reload (SIGHUP, D-Bus `Reload`): re-read the definitions, telling the
        service manager (`RELOADING=1` ... `READY=1`); raises what the engine raised.

        Explicit reloads run one after the other, so each `RELOADING=1` has its `READY=1`
        before the next. The watcher's automatic reloads go to the engine directly: they are
        not the service manager's business.
        """
        async with self._explicit_reload:
            log.info("reloading definitions")
            if self._status is not None:
                self._status.paused = True
            self.notifier.reloading()
            try:
                await self.engine.reload()  # the store logs each problem it finds
                log.info("reloaded definitions: %s", self.describe())
            finally:
                if self._status is not None:
                    self._status.paused = False
                self.notifier.ready(f"Ready: {self.describe()}")

    async def run_until_stopped(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop, "SIGTERM received")
        loop.add_signal_handler(signal.SIGINT, self.request_stop, "SIGINT received")
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        assert self.bus is not None
        disconnected = loop.create_task(self._wait_for_disconnect(self.bus))
        stopping = loop.create_task(self._stop.wait())
        done, waiting = await asyncio.wait(
            {disconnected, stopping}, return_when=asyncio.FIRST_COMPLETED
        )
        for task in waiting:
            task.cancel()
        if disconnected in done:
            # The connection's end (EOFError, a reset) is retrieved here, not left to asyncio.
            log.debug("the bus connection ended: %r", disconnected.exception())
            log.error("disconnected from the bus: stopping")
            self.exit_status = 1
            self.request_stop("the bus connection was lost")
        log.info("mdevd stopping: %s; devices are left as they are", self.stop_reason)
        self.notifier.stopping()
        await self.stop()
        log.info("mdevd stopped: %s", self.stop_reason)

    @staticmethod
    async def _wait_for_disconnect(bus: MessageBus) -> None:
        await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]

    async def stop(self) -> None:
        """Stop serving; every device stays as it is (a restart adopts them)."""
        if self.watchdog is not None:
            await self.watchdog.stop()
        self._reloads.cancel()
        if self.events is not None:
            self.events.close()
        if self.watcher is not None:
            self.watcher.close()
        if self.bus is not None:
            # Calls being carried out finish first: the engine must not close under them, and
            # while the bus is there their callers get the replies.
            still_running = await self.bus.calls_finished(self.settings.io_timeout)
            if still_running:
                log.warning("stopping with %d calls still being carried out", still_running)
            if self.bus.connected:
                self.bus.disconnect()
        await self.engine.ownership.flush()
        self.engine.close()
        self.notifier.close()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The daemon's command line (the `mdevd` program without a subcommand)."""
    parser.add_argument(
        "--config", type=Path, help=f"configuration file (default {defaults.CONFIG_FILE})"
    )
    parser.add_argument(
        "--sysfs-root", type=Path, help=f"where sysfs is mounted (default {defaults.SYSFS_ROOT})"
    )
    parser.add_argument(
        "--dev-root", type=Path, help=f"where /dev/vfio lives (default {defaults.DEV_ROOT})"
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        help="where the daemon keeps what it needs across restarts besides definitions"
        f" (default {defaults.STATE_DIR})",
    )
    parser.add_argument(
        "--devices-dir",
        type=Path,
        action="append",
        help="a definition directory, highest precedence first (repeatable; replaces the"
        " configured ones; the first is where the API writes)",
    )
    parser.add_argument(
        "--uevent-source",
        choices=("udev", "kernel", "none"),
        help=f"where kernel events come from (default {defaults.UEVENT_SOURCE})",
    )
    compat_setup.add_arguments(parser)
    parser.add_argument(
        "--log-level",
        default=os.environ.get("MDEVD_LOG_LEVEL") or None,
        choices=LEVELS,
        help="the least severe messages logged (default: the config file's, else info;"
        " the environment variable MDEVD_LOG_LEVEL also sets it)",
    )


def run_from_args(args: argparse.Namespace) -> int:
    """Run the daemon until SIGTERM; the exit status for the service manager."""
    setup_logging("info")
    if args.log_level is not None and args.log_level not in LEVELS:  # from MDEVD_LOG_LEVEL
        log.error("unknown log level %r; known: %s", args.log_level, ", ".join(LEVELS))
        return 2
    try:
        config = load_config(args.config)
    except ConfigInvalid as exc:
        log.error("%s", exc.message)
        Notifier.from_environment(dict(os.environ)).send(STATUS=f"Bad configuration: {exc}")
        return 1
    set_level(args.log_level or config.daemon.log_level)
    store_config = config.store
    if args.devices_dir:
        toml_store = DefinitionStore(args.devices_dir, write_dir=args.devices_dir[0])
    else:
        toml_store = DefinitionStore.from_config(store_config)
    compat_config = compat_setup.effective_config(config.mdevctl, args)
    daemon_config = config.daemon
    settings = DaemonSettings(
        sysfs_root=args.sysfs_root or daemon_config.sysfs_root,
        dev_root=args.dev_root or daemon_config.dev_root,
        uevent_source=args.uevent_source or daemon_config.uevent_source,
        bus_address=os.environ.get("DBUS_SYSTEM_BUS_ADDRESS") or None,
        io_timeout=daemon_config.io_timeout,
        uevent_receive_buffer=daemon_config.uevent_receive_buffer,
        autostart_retry_delays=defaults.retry_delays(
            daemon_config.autostart_retry_delay, daemon_config.autostart_retries
        ),
        watch_definitions=daemon_config.watch_definitions,
        state_dir=args.state_dir or daemon_config.state_dir,
        nvidia_vf_remove_retry_seconds=config.nvidia_vf.remove_retry_seconds,
        nvidia_vf_enable_sriov=config.nvidia_vf.enable_sriov,
        # One autostart attempt: create, attribute writes, a rollback (each bounded by
        # io_timeout), and the callouts before and after it (each bounded by theirs).
        startup_stall_limit=4 * daemon_config.io_timeout
        + (2 * compat_config.callout_timeout if compat_config.callouts else 0.0),
    )

    async def main() -> int:
        compat = compat_setup.build(compat_config)
        store = compat.store(toml_store)
        daemon = Daemon(settings, store, compat.hooks(), watched=store.watched())
        try:
            await daemon.start()
        except BaseException as exc:
            daemon.notifier.send(STATUS=f"Failed to start: {exc}")
            raise
        await daemon.run_until_stopped()
        return daemon.exit_status

    try:
        return asyncio.run(main())
    except ConfigInvalid as exc:
        log.error("%s", exc.message)
        log.info("mdevd stopped: a fatal error: %s", exc.message)
        return 1
    except Exception as exc:  # the service manager shows this line; the traceback is in debug
        log.error("mdevd failed: %s", exc, exc_info=log.isEnabledFor(logging.DEBUG))
        log.info("mdevd stopped: a fatal error: %s", exc)
        return 1
