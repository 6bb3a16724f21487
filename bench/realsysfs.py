# SPDX-License-Identifier: LGPL-2.1-or-later
"""Rows on this host's own sysfs and disk, no emulation at all: definitions only.

The host has no mdev parent, but listing and writing definitions needs none, and here every
file operation costs what it costs on a user's machine (the emulated kernel turns each sysfs
lookup into a FUSE round trip; the real-kernel guest runs under CPU emulation). mdevd runs from
the checkout on a private bus with `--sysfs-root /sys` and no uevent source; `mdevctl` works on
a directory on this host's disk bound over `/etc/mdevctl.d`, so this needs the private mount
namespace `scripts/bench` enters.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.harness import in_private_namespaces
from bench.measure import alternate, timed_command
from bench.report import Report, Row
from mdevd.bus.names import BUS_NAME, OBJECT_MANAGER_INTERFACE, ROOT_PATH
from mdevd.client import Client
from tests.support.bus import private_bus
from tests.support.daemon import DaemonProcess, running_daemon

MDEVCTL_DIR = Path("/etc/mdevctl.d")
#: A parent name, not a device: definitions need none to exist.
PARENT = "0000:65:00.0"
TYPE = "nvidia-558"
GROUP = "host /sys"


@dataclass(frozen=True)
class Settings:
    repetitions: int = 5
    query_definitions: int = 1_000
    defines: int = 100


QUICK = Settings(repetitions=1, query_definitions=10, defines=3)


def bench_uuid(row: int, index: int) -> str:
    return f"{row:08x}-0000-4000-8000-{index:012x}"


@dataclass
class HostBench:
    bus_address: str
    workdir: Path
    devices_dir: Path
    daemon: AbstractContextManager[DaemonProcess] | None = None

    def start_daemon(self) -> None:
        self.stop_daemon()
        # No uevent source: there is no mdev device on this host to hear of.
        self.daemon = running_daemon(
            self.bus_address,
            Path("/sys"),
            [self.devices_dir],
            uevent_source="none",
            print_log=False,
            start_timeout=300,
            extra_args=["--dev-root", "/dev", "--log-level", "warning"],
        )
        self.daemon.__enter__()

    def stop_daemon(self) -> None:
        if self.daemon is not None:
            self.daemon.__exit__(None, None, None)
            self.daemon = None

    def clear(self) -> None:
        for entry in MDEVCTL_DIR.iterdir():
            if entry.name != "scripts.d":
                shutil.rmtree(entry)
        for path in self.devices_dir.iterdir():
            path.unlink()

    def write_definitions(self, uuids: Sequence[str]) -> None:
        directory = MDEVCTL_DIR / PARENT
        directory.mkdir(exist_ok=True)
        for uuid in uuids:
            (directory / uuid).write_text(f'{{"mdev_type":"{TYPE}","start":"manual","attrs":[]}}\n')
            (self.devices_dir / f"{uuid}.toml").write_text(
                f'[[device]]\nuuid = "{uuid}"\nparent = "{PARENT}"\ntype = "{TYPE}"\n'
            )

    def mdevdctl(self, *args: str) -> list[str]:
        """`mdevdctl` as the virtualenv installs it, on the private bus."""
        program = str(Path(sys.executable).with_name("mdevdctl"))
        return [program, "--address", self.bus_address, *args]


@contextmanager
def host_environment() -> Iterator[HostBench]:
    if not in_private_namespaces():
        raise SystemExit("bench: run through scripts/bench (private mount and net namespaces)")
    with ExitStack() as stack:
        # On the disk (not /tmp, which may be a tmpfs elsewhere): fsync must mean something.
        workdir = Path(tempfile.mkdtemp(prefix="mdevd-bench-", dir="/var/tmp"))
        stack.callback(shutil.rmtree, workdir, True)
        mdevctl_dir = workdir / "mdevctl.d"
        for sub in ("scripts.d/callouts", "scripts.d/notifiers"):
            (mdevctl_dir / sub).mkdir(parents=True)
        MDEVCTL_DIR.mkdir(exist_ok=True)
        subprocess.run(["mount", "--bind", str(mdevctl_dir), str(MDEVCTL_DIR)], check=True)
        stack.callback(subprocess.run, ["umount", "-l", str(MDEVCTL_DIR)], check=False)
        devices_dir = workdir / "devices.d"
        devices_dir.mkdir()
        address = stack.enter_context(private_bus())
        bench = HostBench(address, workdir, devices_dir)
        try:
            yield bench
        finally:
            bench.stop_daemon()


async def query(bench: HostBench, report: Report, settings: Settings) -> None:
    """N definitions: `mdevctl list --defined --dumpjson` vs mdevd's reads."""
    size = settings.query_definitions
    bench.stop_daemon()
    bench.clear()
    bench.write_definitions([bench_uuid(8, i) for i in range(size)])
    bench.start_daemon()
    client = await Client.connect(bench.bus_address, timeout=600)
    busctl = ["busctl", f"--address={bench.bus_address}", "call", BUS_NAME, ROOT_PATH,
              OBJECT_MANAGER_INTERFACE, "GetManagedObjects"]  # fmt: skip

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

    async def device_summaries() -> float:
        started = time.perf_counter()
        await client.list_device_summaries()
        return time.perf_counter() - started

    async def mdevdctl() -> float:
        return timed_command(bench.mdevdctl("list", "--json"))

    async def interpreter() -> float:
        return timed_command([sys.executable, "-c", "pass"])

    try:
        if len(await client.devices()) != size:
            raise RuntimeError(f"the daemon did not load {size} definitions")
        stats = await alternate(
            settings.repetitions, mdevctl, via_busctl, managed_objects, list_devices,
            device_summaries, mdevdctl, interpreter,
        )  # fmt: skip
    finally:
        client.close()
    bench.stop_daemon()
    bench.clear()
    for name, stat, floor, note in (
        ("busctl GetManagedObjects", stats[1], None, "a busctl process per query"),
        ("Python client GetManagedObjects", stats[2], None, "connected client, in process"),
        ("Python client ListDevices", stats[3], None, "connected client, one compact call"),
        ("Python client ListDeviceSummaries", stats[4], None, "connected client, what "
         "`mdevctl list` shows"),
        ("mdevdctl list --json", stats[5], stats[6], "a Python process per query; "
         "floor: the same interpreter running `-c pass`"),
    ):  # fmt: skip
        report.add(Row(GROUP, f"query: {name}, N={size}", "s", stat, stats[0], floor, note))


def durable_write(directory: Path, name: str, text: str) -> None:
    """Temporary file, fsync, rename, directory fsync: what a crash-safe define must do."""
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


async def define(bench: HostBench, report: Report, settings: Settings) -> None:
    """N definitions one at a time on this host's disk: `mdevctl define` vs DefineDevice vs
    the durable write alone."""
    count = settings.defines
    uuids = [bench_uuid(9, i) for i in range(count)]
    floor_dir = bench.workdir / "floor.d"
    bench.stop_daemon()
    bench.clear()

    async def mdevctl() -> float:
        bench.stop_daemon()
        elapsed = sum(
            timed_command(["mdevctl", "define", "-u", u, "-p", PARENT, "-t", TYPE]) for u in uuids
        )
        if len(os.listdir(MDEVCTL_DIR / PARENT)) != count:
            raise RuntimeError("mdevctl did not write every definition")
        bench.clear()
        return elapsed

    async def mdevd() -> float:
        bench.start_daemon()
        client = await Client.connect(bench.bus_address, timeout=600)
        try:
            started = time.perf_counter()
            for uuid in uuids:
                await client.define_device(PARENT, TYPE, uuid=uuid)
            elapsed = time.perf_counter() - started
        finally:
            client.close()
        if len(os.listdir(bench.devices_dir)) != count:
            raise RuntimeError("mdevd did not write every definition")
        bench.stop_daemon()
        bench.clear()
        return elapsed

    async def floor() -> float:
        bench.stop_daemon()
        shutil.rmtree(floor_dir, ignore_errors=True)
        floor_dir.mkdir()
        started = time.perf_counter()
        for uuid in uuids:
            durable_write(floor_dir, f"{uuid}.toml", f'[[device]]\nuuid = "{uuid}"\n')
        return time.perf_counter() - started

    stats = await alternate(settings.repetitions, mdevctl, mdevd, floor)
    report.add(
        Row(GROUP, f"define: {count} definitions, one at a time: DefineDevice", "s", stats[1],
            stats[0], stats[2], "on this host's disk; mdevd: atomic write, fsync of file "
            "and directory; mdevctl: a plain write; floor: the durable write alone")
    )  # fmt: skip


async def host_rows(report: Report, settings: Settings) -> None:
    with host_environment() as bench:
        await query(bench, report, settings)
        await define(bench, report, settings)
