# SPDX-License-Identifier: LGPL-2.1-or-later
"""The benchmark's rows on the real kernel: mdevd beside Debian's mdevctl and the raw floor.

    python -m tests.realkernel.guest.bench [--short] [--profile]   # in the guest, as root

`scripts/bench --real-kernel` boots a guest for the full run (`bench/realkernel.py`); CI runs
`--short` (a handful of devices, one repetition) at the end of the scenarios' boot, so that the
benchmark cannot rot. The guest is Debian's kernel with the mtty sample driver; the contenders
are mdevd from the checkout (production defaults, started as `stack.py` starts it, with the
system bus, udevd and polkitd of the guest), Debian's unmodified `mdevctl` 1.2.0, and the floor:
what any tool must spend at least (the raw writes to `create` and `remove`, a durable file
write, an interpreter that does nothing). Each row alternates its contenders repetition by
repetition (`bench/measure.py`). While mdevctl or the floor is timed the daemon is stopped, so
that it does no work for their uevents.

mdevd runs with `--mdevctl-compat off`: mdevctl's directory exists in the guest (the host has
mdevctl installed), and with compatibility on mdevd would read and mirror it, so the two
contenders would not have stores of their own.

Rows go to `$REALKERNEL_SHARED/bench.json` (`bench.report.Report.to_json`) as they are measured;
with `--profile`, py-spy samples every daemon start into `$REALKERNEL_SHARED/profiles/`.
The guest's `/etc` is a tmpfs overlay: `fsync` costs nothing there, for mdevd, mdevctl and the
floor alike (the define row on a disk is the host's, `bench/realsysfs.py`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from dbus_fast import BusType, Message
from dbus_fast.aio import MessageBus

from bench.measure import BindWatcher, alternate, alternate_spans, timed_command
from bench.profiles import write_summaries
from bench.report import Report, Row, Stats
from mdevd.bus.names import BUS_NAME, DEVICE_INTERFACE, OBJECT_MANAGER_INTERFACE, ROOT_PATH
from mdevd.client import Client
from tests.realkernel.guest import sysfs
from tests.realkernel.guest.report import Report as ScenarioReport
from tests.realkernel.guest.stack import DEVICES_DIR, LOGS, SHARED, GuestStack, run
from tests.support.paths import REPO
from tests.support.waiting import wait_until_async

PARENT = "mtty"
#: One port of mtty's shared pool of 24 per device: room for every row's devices at once.
TYPE = "mtty-1"
MDEVCTL_DIR = Path("/etc/mdevctl.d")
RESULTS = SHARED / "bench.json"
PROFILES = SHARED / "profiles"
#: A scratch directory beside mdevd's own, on the same file system, for the define floor.
FLOOR_DIR = DEVICES_DIR.parent / "bench-floor.d"
PY_SPY = Path(sys.executable).with_name("py-spy")
#: Where a device's object is (docs/dbus-api.md): this prefix, then its UUID with - as _.
DEVICE_PATH_PREFIX = "/org/mdevd/Mdevd1/devices/"
TITLE = "mdevd beside mdevctl on the real kernel (Debian 6.1, mtty, under qemu)"


@dataclasses.dataclass(frozen=True)
class Settings:
    repetitions: int = 5
    #: mtty-1 devices created, stopped, defined one at a time (mtty has 24 ports).
    devices: int = 20
    #: Devices for the rows that start a process per device (a Python one costs a second or
    #: more under emulation).
    process_devices: int = 3
    query_definitions: int = 100
    autostart_sizes: tuple[int, ...] = (1, 20)
    daemon_definitions: int = 1_000


FULL = Settings()
#: CI's run: every row, each contender once, tiny sizes (no timing is asserted).
SHORT = Settings(
    repetitions=1,
    devices=2,
    process_devices=1,
    query_definitions=3,
    autostart_sizes=(2,),
    daemon_definitions=10,
)


def in_guest() -> bool:
    """The real-kernel guest's kernel command line names its init (harness.qemu_argv): this
    module deletes definitions and devices, which must never happen on a host."""
    try:
        return "rk_init=" in Path("/proc/cmdline").read_text()
    except OSError:
        return False


def bench_uuid(row: int, index: int) -> str:
    return f"{row:08x}-0000-4000-8000-{index:012x}"


def python_argv(*args: str) -> list[str]:
    return [sys.executable, *args]


def installed(program: str, *args: str) -> list[str]:
    """One of the checkout's commands as its virtualenv installs it (what users run)."""
    return [str(Path(sys.executable).with_name(program)), *args]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


class GuestBench:
    """The daemon, the two stores and the kernel as the rows need them."""

    def __init__(self, settings: Settings, profile: bool) -> None:
        self.settings = settings
        self.profile = profile
        self.profile_label = "daemon"
        self.process: subprocess.Popen[bytes] | None = None
        self._sampler: subprocess.Popen[bytes] | None = None
        self._profiles = 0
        self._bus: MessageBus | None = None
        self._owned = asyncio.Event()

    # ---- the daemon ------------------------------------------------------------------------

    async def watch_name(self) -> None:
        """Follow org.mdevd.Mdevd1's owner from a connection of our own: the readiness clock
        stops when the bus announces the owner, with no polling process per check."""
        bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
        rule = (
            "type='signal',sender='org.freedesktop.DBus',member='NameOwnerChanged',"
            f"arg0='{BUS_NAME}'"
        )
        await bus.call(
            Message(
                destination="org.freedesktop.DBus",
                path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus",
                member="AddMatch",
                signature="s",
                body=[rule],
            )
        )

        def on_message(message: Message) -> None:
            if message.member == "NameOwnerChanged" and message.body[0] == BUS_NAME:
                if message.body[2]:
                    self._owned.set()
                else:
                    self._owned.clear()

        bus.add_message_handler(on_message)
        self._bus = bus

    async def start_daemon(self) -> float:
        """Start mdevd as stack.py does (log level warning); seconds from exec to its name."""
        self.stop_daemon()
        self._owned.clear()
        argv = python_argv(
            "-m", "mdevd", "--log-level", "warning", "--mdevctl-compat", "off"
        )  # fmt: skip
        LOGS.mkdir(parents=True, exist_ok=True)
        with (LOGS / "bench-mdevd.log").open("ab") as log:
            started = time.perf_counter()
            self.process = subprocess.Popen(
                argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env(),
            )  # fmt: skip
            process = self.process
            deadline = time.monotonic() + 600
            while not self._owned.is_set():
                if process.poll() is not None:
                    raise RuntimeError(f"mdevd exited with {process.returncode} (bench-mdevd.log)")
                if time.monotonic() > deadline:
                    raise RuntimeError("mdevd did not own its name within 600 s")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._owned.wait(), timeout=0.5)
            ready = time.perf_counter() - started
        if self.profile:
            self._start_sampler(process.pid)
        return ready

    def _start_sampler(self, pid: int) -> None:
        # From outside, every thread, like `scripts/bench --profile` on the emulated kernel.
        PROFILES.mkdir(parents=True, exist_ok=True)
        self._profiles += 1
        output = PROFILES / f"{self.profile_label}-{self._profiles}.stacks"
        self._sampler = subprocess.Popen(
            [str(PY_SPY), "record", "--pid", str(pid), "--idle", "--threads", "--nonblocking",
             "--rate", "100", "--format", "raw", "--output", str(output)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def stop_daemon(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                self.process.wait(timeout=120)
            self.process = None
        if self._sampler is not None:
            try:
                self._sampler.wait(timeout=120)  # py-spy writes once the process is gone
            except subprocess.TimeoutExpired:
                self._sampler.kill()
                self._sampler.wait()
            self._sampler = None

    def daemon_rss_mib(self) -> float:
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    async def client(self) -> Client:
        return await Client.connect(timeout=600)

    def close(self) -> None:
        self.stop_daemon()
        if self._bus is not None:
            self._bus.disconnect()

    # ---- the stores ------------------------------------------------------------------------

    def clear_definitions(self) -> None:
        """Both tools' definitions gone (mdevctl's scripts.d stays: mdevctl requires it)."""
        for entry in MDEVCTL_DIR.iterdir():
            if entry.name == "scripts.d":
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:  # mdevd's own bookkeeping there, when compatibility was on
                entry.unlink()
        DEVICES_DIR.mkdir(parents=True, exist_ok=True)
        for path in DEVICES_DIR.iterdir():
            path.unlink()

    def write_definitions(self, uuids: Sequence[str], autostart: bool = False) -> None:
        """The same definitions in both tools' formats (untimed)."""
        directory = MDEVCTL_DIR / PARENT
        directory.mkdir(exist_ok=True)
        start = "auto" if autostart else "manual"
        for uuid in uuids:
            (directory / uuid).write_text(
                f'{{"mdev_type":"{TYPE}","start":"{start}","attrs":[]}}\n'
            )
            (DEVICES_DIR / f"{uuid}.toml").write_text(
                f'[[device]]\nuuid = "{uuid}"\nparent = "{PARENT}"\ntype = "{TYPE}"\n'
                f"autostart = {'true' if autostart else 'false'}\n"
            )

    # ---- the kernel ------------------------------------------------------------------------

    def remove_all_devices(self) -> None:
        for uuid in sysfs.devices():
            with contextlib.suppress(FileNotFoundError):  # gone meanwhile
                sysfs.remove(uuid)

    def load_driver(self) -> None:
        if PARENT not in sysfs.parents():
            run(["modprobe", PARENT])

    def unload_driver(self) -> None:
        if PARENT in sysfs.parents():
            run(["rmmod", PARENT])


async def wait_for_no_devices(client: Client, timeout: float = 300) -> None:
    """Until the daemon's objects show no active device (it follows the kernel's events)."""

    async def none_active() -> bool:
        return not any(d.active for d in await client.devices())

    await wait_until_async(none_active, timeout, "the daemon to show no active device")


def create_raw(uuid: str) -> None:
    sysfs.create(PARENT, TYPE, uuid)


def check_active(expected: set[str]) -> None:
    actual = set(sysfs.devices())
    if actual != expected:
        raise RuntimeError(f"the kernel has {sorted(actual)}, expected {sorted(expected)}")


# ---- query ---------------------------------------------------------------------------------


async def query(bench: GuestBench, report: Report) -> None:
    """N definitions: `mdevctl list --defined --dumpjson` vs mdevd's reads, four ways."""
    settings = bench.settings
    size = settings.query_definitions
    bench.stop_daemon()
    bench.load_driver()
    bench.clear_definitions()
    bench.write_definitions([bench_uuid(1, i) for i in range(size)])
    bench.profile_label = "query"
    await bench.start_daemon()
    client = await bench.client()
    busctl = ["busctl", "--system", "call", BUS_NAME, ROOT_PATH, OBJECT_MANAGER_INTERFACE,
              "GetManagedObjects"]  # fmt: skip

    async def mdevctl() -> float:
        return timed_command(["mdevctl", "list", "--defined", "--dumpjson"])

    async def via_busctl() -> float:
        return timed_command(busctl)

    async def managed_objects() -> float:
        started = time.perf_counter()
        await client.managed_objects()
        return time.perf_counter() - started

    async def list_devices() -> float:
        started = time.perf_counter()
        await client.list_devices()
        return time.perf_counter() - started

    async def mdevdctl() -> float:
        return timed_command(installed("mdevdctl", "list", "--json"), env())

    async def interpreter() -> float:
        return timed_command(python_argv("-c", "pass"))

    try:
        if len(await client.devices()) != size:
            raise RuntimeError(f"the daemon did not load {size} definitions")
        stats = await alternate(
            settings.repetitions, mdevctl, via_busctl, managed_objects, list_devices, mdevdctl,
            interpreter,
        )  # fmt: skip
    finally:
        client.close()
    bench.stop_daemon()
    bench.clear_definitions()
    for name, stat, floor, note in (
        ("busctl GetManagedObjects", stats[1], None, "a busctl process per query"),
        ("Python client GetManagedObjects", stats[2], None, "connected client, in process"),
        ("Python client ListDevices", stats[3], None, "connected client, one compact call"),
        ("mdevdctl list --json", stats[4], stats[5], "a Python process per query; "
         "floor: the same interpreter running `-c pass`"),
    ):  # fmt: skip
        report.add(Row("query", f"{name}, N={size}", "s", stat, stats[0], floor, note))


# ---- start and remove ----------------------------------------------------------------------


async def start(bench: GuestBench, report: Report) -> None:
    """N transient devices created, then removed, one at a time: `mdevctl start`/`stop` per
    device vs CreateDevice/Stop over D-Bus vs raw writes to `create`/`remove`."""
    settings = bench.settings
    count = settings.devices
    uuids = [bench_uuid(2, i) for i in range(count)]
    bench.stop_daemon()
    bench.load_driver()
    bench.clear_definitions()
    bench.remove_all_devices()
    bench.profile_label = "start"

    async def mdevctl() -> tuple[float, float]:
        bench.stop_daemon()
        created = sum(
            timed_command(["mdevctl", "start", "-p", PARENT, "-t", TYPE, "-u", u]) for u in uuids
        )
        check_active(set(uuids))
        removed = sum(timed_command(["mdevctl", "stop", "-u", u]) for u in uuids)
        check_active(set())
        return created, removed

    async def mdevd() -> tuple[float, float]:
        await bench.start_daemon()
        client = await bench.client()
        try:
            started = time.perf_counter()
            for uuid in uuids:
                await client.create_device_path(PARENT, TYPE, uuid=uuid)
            created = time.perf_counter() - started
            check_active(set(uuids))
            started = time.perf_counter()
            for uuid in uuids:
                # One call on the documented path, as CreateDevice is one call (mdevd.client's
                # stop() asks GetDevice first, a second round trip a manager can skip).
                await client.call(
                    DEVICE_PATH_PREFIX + uuid.replace("-", "_"), DEVICE_INTERFACE, "Stop",
                    "a{sv}", [{}],
                )  # fmt: skip
            removed = time.perf_counter() - started
            check_active(set())
        finally:
            client.close()
        bench.stop_daemon()
        return created, removed

    async def floor() -> tuple[float, float]:
        bench.stop_daemon()
        started = time.perf_counter()
        for uuid in uuids:
            create_raw(uuid)
        created = time.perf_counter() - started
        check_active(set(uuids))
        started = time.perf_counter()
        for uuid in uuids:
            sysfs.remove(uuid)
        removed = time.perf_counter() - started
        check_active(set())
        return created, removed

    stats = await alternate_spans(settings.repetitions, mdevctl, mdevd, floor)
    report.add(
        Row("start", f"{count} devices, one at a time: CreateDevice", "s", stats[1][0],
            stats[0][0], stats[2][0],
            "connected client vs `mdevctl start` per device; floor: a write to create each")
    )  # fmt: skip
    report.add(
        Row("start", f"{count} devices, one at a time: Stop", "s", stats[1][1], stats[0][1],
            stats[2][1], "Stop on the device's path vs `mdevctl stop` per device; floor: a "
            "write to remove each")
    )  # fmt: skip
    await _process_rows(bench, report)


async def _process_rows(bench: GuestBench, report: Report) -> None:
    """A process per device, as a shell user or libvirt (which runs `mdevctl` per operation)
    calls: mdevdctl and mdevd's mdevctl front end vs Debian's mdevctl."""
    settings = bench.settings
    uuids = [bench_uuid(3, i) for i in range(settings.process_devices)]

    async def mdevctl() -> float:
        bench.stop_daemon()
        elapsed = sum(
            timed_command(["mdevctl", "start", "-p", PARENT, "-t", TYPE, "-u", u]) for u in uuids
        )
        check_active(set(uuids))
        bench.remove_all_devices()
        return elapsed

    def with_daemon(command: Callable[[str], list[str]]) -> Callable[[], Awaitable[float]]:
        async def measure() -> float:
            if bench.process is None:
                await bench.start_daemon()
            elapsed = sum(timed_command(command(u), env()) for u in uuids)
            check_active(set(uuids))
            client = await bench.client()
            try:
                bench.remove_all_devices()
                await wait_for_no_devices(client)
            finally:
                client.close()
            return elapsed

        return measure

    mdevdctl = with_daemon(lambda u: installed("mdevdctl", "create", PARENT, TYPE, "--uuid", u))
    frontend = with_daemon(
        lambda u: installed("mdevd-mdevctl", "start", "-p", PARENT, "-t", TYPE, "-u", u)
    )

    async def interpreter() -> float:
        bench.stop_daemon()
        return sum(timed_command(python_argv("-c", "pass")) for _ in uuids)

    # mdevctl stops the daemon; the two mdevd commands share one start of it.
    stats = await alternate(settings.repetitions, mdevctl, mdevdctl, frontend, interpreter)
    bench.stop_daemon()
    count = len(uuids)
    report.add(
        Row("start", f"{count} devices, one at a time: mdevdctl create", "s", stats[1],
            stats[0], stats[3], "a Python process per device; floor: the interpreter "
            "running `-c pass` as often")
    )  # fmt: skip
    report.add(
        Row("start", f"{count} devices, one at a time: mdevd's mdevctl front end", "s",
            stats[2], stats[0], stats[3], "`mdevd-mdevctl start` (what libvirt runs as "
            "mdevctl) vs Debian's `mdevctl start`")
    )  # fmt: skip


# ---- define --------------------------------------------------------------------------------


def durable_write(directory: Path, name: str, text: str) -> None:
    """What a crash-safe define cannot do without: temporary file, fsync, rename, directory
    fsync."""
    temporary = directory / f".{name}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(temporary, directory / name)
    directory_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory_fd)
    finally:
        os.close(directory_fd)


async def define(bench: GuestBench, report: Report) -> None:
    """N definitions one at a time: `mdevctl define` vs DefineDevice vs durable writes."""
    settings = bench.settings
    count = settings.devices
    uuids = [bench_uuid(4, i) for i in range(count)]
    bench.stop_daemon()
    bench.load_driver()
    bench.clear_definitions()
    bench.profile_label = "define"

    async def mdevctl() -> float:
        bench.stop_daemon()
        elapsed = sum(
            timed_command(["mdevctl", "define", "-u", u, "-p", PARENT, "-t", TYPE]) for u in uuids
        )
        if len(os.listdir(MDEVCTL_DIR / PARENT)) != count:
            raise RuntimeError("mdevctl did not write every definition")
        bench.clear_definitions()
        return elapsed

    async def mdevd() -> float:
        await bench.start_daemon()
        client = await bench.client()
        try:
            started = time.perf_counter()
            for uuid in uuids:
                await client.define_device(PARENT, TYPE, uuid=uuid)
            elapsed = time.perf_counter() - started
        finally:
            client.close()
        if len(os.listdir(DEVICES_DIR)) != count:
            raise RuntimeError("mdevd did not write every definition")
        bench.stop_daemon()
        bench.clear_definitions()
        return elapsed

    async def floor() -> float:
        bench.stop_daemon()
        shutil.rmtree(FLOOR_DIR, ignore_errors=True)
        FLOOR_DIR.mkdir(parents=True)
        started = time.perf_counter()
        for uuid in uuids:
            durable_write(
                FLOOR_DIR, f"{uuid}.toml", f'[[device]]\nuuid = "{uuid}"\nparent = "{PARENT}"\n'
            )
        elapsed = time.perf_counter() - started
        shutil.rmtree(FLOOR_DIR)
        return elapsed

    stats = await alternate(settings.repetitions, mdevctl, mdevd, floor)
    report.add(
        Row("define", f"{count} definitions, one at a time: DefineDevice", "s", stats[1],
            stats[0], stats[2], "mdevd: atomic write, fsync of file and directory; mdevctl: "
            "a plain write; floor: the durable write alone (the guest's /etc is tmpfs)")
    )  # fmt: skip


# ---- autostart -----------------------------------------------------------------------------


async def autostart(bench: GuestBench, report: Report) -> None:
    """`modprobe mtty` to all N autostart devices bound: mdevd vs start-parent-mdevs vs raw
    creates right after the modprobe."""
    settings = bench.settings
    bench.stop_daemon()
    bench.remove_all_devices()
    bench.profile_label = "autostart"
    watcher = BindWatcher()
    for size in settings.autostart_sizes:
        await _autostart_row(bench, report, watcher, size)
    bench.clear_definitions()
    bench.load_driver()


async def _autostart_row(
    bench: GuestBench, report: Report, watcher: BindWatcher, size: int
) -> None:
    uuids = [bench_uuid(5, i) for i in range(size)]
    wanted = set(uuids)
    bench.unload_driver()
    bench.clear_definitions()
    bench.write_definitions(uuids, autostart=True)

    def load_to_binds(then: Callable[[], object] = lambda: None) -> float:
        watcher.drain()
        started = time.perf_counter()
        run(["modprobe", PARENT])
        then()
        elapsed = watcher.wait_for_binds(wanted) - started
        check_active(wanted)
        return elapsed

    def create_all() -> None:
        for uuid in uuids:
            create_raw(uuid)

    async def mdevctl() -> float:
        bench.stop_daemon()
        # What Debian's udev rule would run for the parent's registration, started at once
        # (the rule's own path is broken on Debian: mdevctl upstream #82).
        elapsed = load_to_binds(lambda: run(["mdevctl", "start-parent-mdevs", PARENT]))
        bench.unload_driver()
        return elapsed

    async def mdevd() -> float:
        await bench.start_daemon()
        elapsed = load_to_binds()
        bench.stop_daemon()
        bench.unload_driver()
        return elapsed

    async def floor() -> float:
        bench.stop_daemon()
        elapsed = load_to_binds(create_all)
        bench.unload_driver()
        return elapsed

    stats = await alternate(bench.settings.repetitions, mdevctl, mdevd, floor)
    report.add(
        Row("autostart", f"modprobe mtty to {size} devices bound", "s", stats[1], stats[0],
            stats[2], "until the last device's bind uevent; mdevctl: start-parent-mdevs "
            "run at once; floor: a write to create each, at once")
    )  # fmt: skip


# ---- the daemon ----------------------------------------------------------------------------


async def daemon_costs(bench: GuestBench, report: Report) -> None:
    """Start to ready and resident memory, with no definitions and with many."""
    settings = bench.settings
    bench.stop_daemon()
    bench.load_driver()
    bench.clear_definitions()
    bench.profile_label = "daemon"
    rss: list[float] = []

    async def ready() -> float:
        elapsed = await bench.start_daemon()
        rss.append(bench.daemon_rss_mib())
        bench.stop_daemon()
        return elapsed

    async def interpreter() -> float:
        return timed_command(python_argv("-c", "pass"))

    stats = await alternate(settings.repetitions, ready, interpreter)
    report.add(
        Row("daemon", "start to ready, 0 definitions", "s", stats[0], floor=stats[1],
            note="exec to owning org.mdevd.Mdevd1; floor: the interpreter running `-c pass`")
    )  # fmt: skip
    report.add(Row("daemon", "resident memory, idle, 0 definitions", "MiB", Stats((min(rss),))))
    size = settings.daemon_definitions
    bench.write_definitions([bench_uuid(6, i) for i in range(size)])
    rss.clear()
    stats = await alternate(max(1, settings.repetitions // 2), ready, interpreter)
    report.add(
        Row("daemon", f"start to ready, {size} definitions", "s", stats[0], floor=stats[1],
            note="load, enumerate, export every object, then own the name")
    )  # fmt: skip
    report.add(Row("daemon", f"resident memory, {size} definitions", "MiB", Stats((max(rss),))))
    bench.clear_definitions()


GROUPS: Sequence[tuple[str, Callable[[GuestBench, Report], Awaitable[None]]]] = (
    ("query", query),
    ("start", start),
    ("define", define),
    ("autostart", autostart),
    ("daemon", daemon_costs),
)


def machine() -> dict[str, str]:
    cpus = os.cpu_count() or 0
    return {
        "guest kernel": platform.release(),
        "guest cpus": str(cpus),
        "python": platform.python_version(),
        "mdevctl": run(["mdevctl", "--version"], check=False).stdout.strip(),
    }


async def run_bench(
    settings: Settings, report: Report, *, profile: bool = False, stack: GuestStack | None = None
) -> None:
    """Every group in turn, starting from a clean guest: no mdev device, no definition, the
    daemon (and any the caller ran) stopped. `stack`: a guest whose services already run
    (the scenarios' boot); else they are started here."""
    if not in_guest():
        raise RuntimeError("the benchmark runs only inside the real-kernel guest")
    own_stack = stack is None
    if stack is None:
        stack = GuestStack()
        stack.start_system()
    stack.mdevd.stop()
    bench = GuestBench(settings, profile)
    try:
        bench.load_driver()
        bench.remove_all_devices()
        bench.clear_definitions()
        await bench.watch_name()
        for group, measure in GROUPS:
            started = time.monotonic()
            await measure(bench, report)
            report.machine[f"{group} seconds"] = f"{time.monotonic() - started:.0f}"
            RESULTS.write_text(report.to_json() + "\n")
    finally:
        bench.close()
        if own_stack:
            stack.stop_all()
    if profile:
        write_summaries(PROFILES)


async def short_bench_after_scenarios(scenarios: ScenarioReport, stack: GuestStack) -> None:
    """CI's short run at the end of the scenarios' boot, on their services: recorded as the
    scenario `bench` (its rows in bench.json, for tests/realkernel/test_bench.py)."""
    with scenarios.scenario("bench"):
        report = Report(machine=machine(), title=TITLE, stem="realkernel")
        started = time.monotonic()
        await run_bench(SHORT, report, stack=stack)
        report.machine["guest seconds"] = f"{time.monotonic() - started:.0f}"
        RESULTS.write_text(report.to_json() + "\n")
        scenarios.check(f"{len(report.rows)} rows in {report.machine['guest seconds']} s", True)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.realkernel.guest.bench")
    parser.add_argument("--short", action="store_true", help="CI's run: tiny sizes, once")
    parser.add_argument("--profile", action="store_true", help="py-spy every daemon start")
    args = parser.parse_args(argv)
    if not in_guest():
        parser.error("runs only inside the real-kernel guest (it deletes definitions)")
    report = Report(machine=machine(), title=TITLE, stem="realkernel")
    started = time.monotonic()
    asyncio.run(run_bench(SHORT if args.short else FULL, report, profile=args.profile))
    report.machine["guest seconds"] = f"{time.monotonic() - started:.0f}"
    RESULTS.write_text(report.to_json() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
