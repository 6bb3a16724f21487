"""The daemon: startup order, the event loop's wiring, signals and readiness.

Startup order matters and is fixed: configuration and definitions are loaded, the uevent
monitor is opened (so nothing falls between it and the first look at sysfs), the kernel is
enumerated and reconciled (running devices are adopted, never recreated), the objects are
exported, and the bus name is requested last, so a client that sees the name sees a complete
tree. SIGHUP reloads definitions; SIGTERM and SIGINT stop the daemon and leave every device
running (a VM may be using it).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
from dataclasses import dataclass, field
from pathlib import Path

from dbus_fast import BusType, Message, RequestNameReply
from dbus_fast.aio import MessageBus
from dbus_fast.constants import NameFlag

from mdevd import __version__
from mdevd.bus import sendfix
from mdevd.bus.auth import Authorizer
from mdevd.bus.caller import CallerTracker
from mdevd.bus.names import BUS_NAME
from mdevd.bus.tree import ManagedObjectBus, ObjectTree
from mdevd.compat import setup as compat_setup
from mdevd.config import load_config
from mdevd.engine import DefinitionStore as EngineStore
from mdevd.engine import Engine, EngineSettings, OperationHooks
from mdevd.errors import ConfigInvalid
from mdevd.kernel import Sysfs
from mdevd.store import DefinitionStore
from mdevd.udev import Uevent, UeventSource

log = logging.getLogger("mdevd")


@dataclass(frozen=True, slots=True)
class DaemonSettings:
    sysfs_root: Path = Path("/sys")
    dev_root: Path = Path("/dev")
    #: Definition directories, highest precedence first; the first is where the API writes.
    devices_dirs: tuple[Path, ...] = field(default_factory=tuple)
    read_only_dirs: tuple[Path, ...] = field(default_factory=tuple)
    #: `udev` (after udevd's processing, production), `kernel` (no udevd) or `none`.
    uevent_source: str = "udev"
    bus_address: str | None = None
    io_timeout: float = 30.0


class Daemon:
    def __init__(
        self, settings: DaemonSettings, store: EngineStore, hooks: OperationHooks | None = None
    ) -> None:
        self.settings = settings
        self.kernel = Sysfs(settings.sysfs_root, settings.dev_root)
        self.engine = Engine(
            self.kernel, store, EngineSettings(io_timeout=settings.io_timeout), hooks
        )
        self.events: UeventSource | None = None
        self.bus: MessageBus | None = None
        self.tree: ObjectTree | None = None
        self._stop = asyncio.Event()

    async def start(self) -> None:
        if self.settings.uevent_source != "none":
            self.events = UeventSource(self.settings.uevent_source)
            self.events.open()
        await self.engine.start()
        sendfix.install()
        if self.settings.bus_address:
            bus = ManagedObjectBus(bus_address=self.settings.bus_address)
        else:
            bus = ManagedObjectBus(bus_type=BusType.SYSTEM)
        connected = await bus.connect()
        self.bus = connected
        callers = CallerTracker(connected)
        callers.install()
        authorizer = Authorizer(connected, callers)
        self.tree = ObjectTree(connected, self.engine, authorizer.authorize_caller)
        self.tree.export_all()
        if self.events is not None:
            self.events.attach(
                asyncio.get_running_loop(), self._on_uevent, self.engine.request_resync
            )
        reply = await connected.request_name(BUS_NAME, NameFlag.DO_NOT_QUEUE)
        if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
            raise RuntimeError(f"could not own {BUS_NAME} on the bus ({reply.name})")
        connected.add_message_handler(self._on_bus_message)
        devices = self.engine.devices()
        status = (
            f"{sum(d.defined for d in devices.values())} defined, "
            f"{sum(d.active for d in devices.values())} active"
        )
        log.info("mdevd %s ready on %s: %s", __version__, BUS_NAME, status)
        notify(f"READY=1\nSTATUS=Ready: {status}")

    def _on_uevent(self, event: Uevent) -> None:
        self.engine.handle_uevent(event.action, event.subsystem, event.devpath, event.properties)

    def _on_bus_message(self, message: Message) -> None:
        # Losing the name (the bus daemon restarting, a kill of the connection) means no client
        # can reach us: stop, and let the service manager restart us.
        if message.member == "NameLost" and message.body and message.body[0] == BUS_NAME:
            log.error("lost the bus name %s: stopping", BUS_NAME)
            self._stop.set()

    def request_stop(self) -> None:
        self._stop.set()

    async def reload(self) -> None:
        notify("RELOADING=1")
        try:
            await self.engine.reload()
        finally:
            notify("READY=1")

    async def run_until_stopped(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload()))
        assert self.bus is not None
        disconnected = loop.create_task(self._wait_for_disconnect(self.bus))
        stopping = loop.create_task(self._stop.wait())
        done, _ = await asyncio.wait({disconnected, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if disconnected in done:
            log.error("disconnected from the bus: stopping")
        notify("STOPPING=1")
        await self.stop()

    @staticmethod
    async def _wait_for_disconnect(bus: MessageBus) -> None:
        await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]

    async def stop(self) -> None:
        """Stop serving; every device stays as it is (a restart adopts them)."""
        if self.events is not None:
            self.events.close()
        if self.bus is not None and self.bus.connected:
            self.bus.disconnect()
        self.engine.close()


def notify(state: str) -> None:
    """sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET, if there is one."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("sd_notify failed: %s", exc)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The daemon's command line (the `mdevd` program without a subcommand)."""
    parser.add_argument(
        "--config", type=Path, help="configuration file (default /etc/mdevd/mdevd.toml)"
    )
    parser.add_argument("--sysfs-root", type=Path, help="where sysfs is mounted (default /sys)")
    parser.add_argument("--dev-root", type=Path, help="where /dev/vfio lives (default /dev)")
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
        help="where kernel events come from (default udev)",
    )
    compat_setup.add_arguments(parser)
    parser.add_argument(
        "--log-level",
        default=os.environ.get("MDEVD_LOG_LEVEL", "info"),
        choices=("debug", "info", "warning", "error"),
    )


def setup_logging(level: str) -> None:
    handler: logging.Handler
    if os.environ.get("JOURNAL_STREAM"):
        try:
            from systemd.journal import JournalHandler

            handler = JournalHandler(SYSLOG_IDENTIFIER="mdevd")
        except ImportError:
            handler = logging.StreamHandler()
    else:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("mdevd: %(levelname)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def run_from_args(args: argparse.Namespace) -> int:
    """Run the daemon until SIGTERM; the exit status for the service manager."""
    setup_logging(args.log_level)
    config = load_config(args.config)
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
    )

    async def main() -> None:
        compat = compat_setup.build(compat_config)
        daemon = Daemon(settings, compat.store(toml_store), compat.hooks())
        await daemon.start()
        await daemon.run_until_stopped()

    try:
        asyncio.run(main())
    except ConfigInvalid as exc:
        log.error("%s", exc.message)
        return 1
    except Exception as exc:  # the service manager shows this line; the traceback is in debug
        log.error("mdevd failed: %s", exc, exc_info=log.isEnabledFor(logging.DEBUG))
        return 1
    return 0
