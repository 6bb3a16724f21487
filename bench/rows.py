# SPDX-License-Identifier: LGPL-2.1-or-later
"""The measurements: each function runs one group of rows and adds them to the report.

Every row alternates its contenders repetition by repetition (mdevctl, mdevd, mdevctl, ...),
so a change in the machine's load during the run hits both. What is untimed (writing
definitions, removing devices between repetitions) is outside the timed spans.

mdevctl runs while the daemon is stopped wherever the daemon would otherwise do work for
mdevctl's changes (uevents): each tool is timed alone on the kernel. Process start-up is part of
every command-line measurement, as it is for a user or for libvirt, which runs mdevctl per call.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from bench.harness import MDEVCTL_DIR, PARENT, TYPE, Bench, bench_uuid
from bench.measure import BindWatcher, Measure, alternate, timed_command
from bench.report import Report, Row, Stats
from mdevd.bus.names import BUS_NAME, OBJECT_MANAGER_INTERFACE, ROOT_PATH
from mdevd.client import Client, Event


@dataclass(frozen=True)
class Settings:
    repetitions: int = 5
    query_sizes: tuple[int, ...] = (100, 1_000, 10_000)
    lifecycle_devices: int = 100
    process_devices: int = 20
    parallel: int = 16
    autostart_sizes: tuple[int, ...] = (1, 16, 256)
    daemon_devices: int = 10_000
    #: 100,000 (what the memory question asks) takes ~30 min on the emulated kernel: run it
    #: with `--cycles 100000`; the default keeps the whole run within a few minutes.
    cycles: int = 5_000
    events: int = 200


def mdevdctl_argv(bench: Bench, *args: str) -> list[str]:
    return [sys.executable, "-m", "mdevd.cli.mdevdctl", "--address", bench.bus_address, *args]


async def wait_for_device_count(client: Client, count: int, timeout: float = 300) -> None:
    """Wait until the daemon's objects show `count` devices (it follows the kernel's events)."""
    deadline = time.monotonic() + timeout
    while len(await client.devices()) != count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the daemon did not settle at {count} devices")
        await asyncio.sleep(0.01)


# ---- 1. query ------------------------------------------------------------------------------


async def query(bench: Bench, report: Report, settings: Settings) -> dict[int, float]:
    """`mdevctl list --defined --dumpjson` vs GetManagedObjects three ways; start-up times."""
    ready_times: dict[int, float] = {}
    for size in settings.query_sizes:
        bench.stop_daemon()
        bench.clear_mdevctl_definitions()
        bench.clear_mdevd_definitions()
        uuids = [bench_uuid(1, i) for i in range(size)]
        bench.write_mdevctl_definitions(uuids)
        bench.write_mdevd_definitions(uuids)
        ready_times[size] = bench.start_daemon()
        await _query_rows(bench, report, settings, size)
    bench.stop_daemon()
    bench.clear_mdevctl_definitions()
    bench.clear_mdevd_definitions()
    return ready_times


async def _query_rows(bench: Bench, report: Report, settings: Settings, size: int) -> None:
    client = await bench.client()
    busctl = [
        "busctl",
        f"--address={bench.bus_address}",
        "call",
        BUS_NAME,
        ROOT_PATH,
        OBJECT_MANAGER_INTERFACE,
        "GetManagedObjects",
    ]

    async def mdevctl() -> float:
        return timed_command(["mdevctl", "list", "--defined", "--dumpjson"])

    async def via_busctl() -> float:
        return timed_command(busctl)

    async def via_client() -> float:
        started = time.perf_counter()
        await client.managed_objects()
        return time.perf_counter() - started

    async def via_mdevdctl() -> float:
        return timed_command(mdevdctl_argv(bench, "list", "--json"))

    try:
        if len(await client.devices()) != size:
            raise RuntimeError(f"the daemon did not load {size} definitions")
        stats = await alternate(settings.repetitions, mdevctl, via_busctl, via_client, via_mdevdctl)
    finally:
        client.close()
    for name, stat, note in (
        ("busctl GetManagedObjects", stats[1], "busctl process per query"),
        ("Python client GetManagedObjects", stats[2], "connected client, in process"),
        ("mdevdctl list --json", stats[3], "Python process per query"),
    ):
        report.add(Row("query", f"{name}, N={size}", "s", stat, stats[0], note=note))


# ---- 2. start, 3. define -------------------------------------------------------------------


def _run_parallel(commands: Sequence[Sequence[str]], width: int) -> float:
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=width) as pool:
        results = list(
            pool.map(
                lambda argv: subprocess.run(argv, capture_output=True, text=True, timeout=600),
                commands,
            )
        )
    elapsed = time.perf_counter() - started
    failed = [r for r in results if r.returncode != 0]
    if failed:
        raise RuntimeError(f"{len(failed)} commands failed: {failed[0].stderr.strip()}")
    return elapsed


async def _gather_limited(width: int, calls: Sequence[Callable[[], Awaitable[object]]]) -> None:
    semaphore = asyncio.Semaphore(width)

    async def one(call: Callable[[], Awaitable[object]]) -> None:
        async with semaphore:
            await call()

    await asyncio.gather(*(one(call) for call in calls))


async def start(bench: Bench, report: Report, settings: Settings) -> None:
    """N transient devices: `mdevctl start` per device vs CreateDevice; floor: raw writes."""
    count, width = settings.lifecycle_devices, settings.parallel
    uuids = [bench_uuid(2, i) for i in range(count)]
    # A Python process per device costs ~0.1 s of start-up each: fewer devices for that row.
    few = uuids[: settings.process_devices]
    create_file = bench.sim.root / "class/mdev_bus" / PARENT / "mdev_supported_types" / TYPE
    create_file = create_file / "create"
    bench.clear_mdevctl_definitions()
    bench.clear_mdevd_definitions()

    def clean_kernel() -> None:
        bench.remove_all_devices()
        bench.wait_until(lambda: not bench.active_uuids())

    def mdevctl_commands(which: Sequence[str]) -> list[list[str]]:
        return [["mdevctl", "start", "-p", PARENT, "-t", TYPE, "-u", u] for u in which]

    def mdevctl_sequential(which: Sequence[str]) -> Measure:
        async def measure() -> float:
            bench.stop_daemon()
            elapsed = sum(timed_command(argv) for argv in mdevctl_commands(which))
            clean_kernel()
            return elapsed

        return measure

    async def mdevctl_parallel() -> float:
        bench.stop_daemon()
        elapsed = _run_parallel(mdevctl_commands(uuids), width)
        clean_kernel()
        return elapsed

    async def floor() -> float:
        bench.stop_daemon()
        started = time.perf_counter()
        for uuid in uuids:
            fd = os.open(create_file, os.O_WRONLY)
            try:
                os.write(fd, uuid.encode())
            finally:
                os.close(fd)
        elapsed = time.perf_counter() - started
        clean_kernel()
        return elapsed

    def with_daemon(which: Sequence[str], body: Callable[[Client], Awaitable[None]]) -> Measure:
        async def measure() -> float:
            bench.start_daemon()
            client = await bench.client()
            try:
                started = time.perf_counter()
                await body(client)
                elapsed = time.perf_counter() - started
                assert bench.active_uuids() == set(which)
                clean_kernel()
                await wait_for_device_count(client, 0)
            finally:
                client.close()
            return elapsed

        return measure

    async def create_one_at_a_time(client: Client) -> None:
        for uuid in uuids:
            await client.create_device_path(PARENT, TYPE, uuid=uuid)

    async def create_in_parallel(client: Client) -> None:
        calls = [(lambda u=uuid: client.create_device_path(PARENT, TYPE, uuid=u)) for uuid in uuids]
        await _gather_limited(width, calls)

    async def mdevdctl_processes(client: Client) -> None:
        for uuid in few:
            timed_command(mdevdctl_argv(bench, "create", PARENT, TYPE, "--uuid", uuid))

    seq = await alternate(
        settings.repetitions,
        mdevctl_sequential(uuids),
        with_daemon(uuids, create_one_at_a_time),
        floor,
    )
    report.add(
        Row(
            "start",
            f"{count} devices, one at a time: CreateDevice",
            "s",
            seq[1],
            seq[0],
            seq[2],
            "connected client; floor: a loop writing UUIDs to create",
        )
    )
    per_process = await alternate(
        settings.repetitions, mdevctl_sequential(few), with_daemon(few, mdevdctl_processes)
    )
    report.add(
        Row(
            "start",
            f"{len(few)} devices, one at a time: mdevdctl create",
            "s",
            per_process[1],
            per_process[0],
            note="a Python process per device, like mdevctl's process per device",
        )
    )
    par = await alternate(
        settings.repetitions, mdevctl_parallel, with_daemon(uuids, create_in_parallel)
    )
    report.add(
        Row(
            "start",
            f"{count} devices, {width} at a time: CreateDevice",
            "s",
            par[1],
            par[0],
            seq[2],
            f"{width} mdevctl processes at once vs {width} calls in flight",
        )
    )
    bench.stop_daemon()


async def define(bench: Bench, report: Report, settings: Settings) -> None:
    """N persistent definitions: `mdevctl define` per device vs DefineDevice (fsynced)."""
    count = settings.lifecycle_devices
    uuids = [bench_uuid(3, i) for i in range(count)]
    bench.clear_mdevctl_definitions()
    bench.clear_mdevd_definitions()

    async def mdevctl() -> float:
        bench.stop_daemon()
        elapsed = sum(
            timed_command(["mdevctl", "define", "-u", u, "-p", PARENT, "-t", TYPE]) for u in uuids
        )
        assert len(os.listdir(MDEVCTL_DIR / PARENT)) == count
        bench.clear_mdevctl_definitions()
        return elapsed

    async def mdevd() -> float:
        bench.start_daemon()
        client = await bench.client()
        try:
            started = time.perf_counter()
            for uuid in uuids:
                await client.define_device(PARENT, TYPE, uuid=uuid)
            elapsed = time.perf_counter() - started
            assert len(os.listdir(bench.devices_dir)) == count
        finally:
            client.close()
        bench.stop_daemon()
        bench.clear_mdevd_definitions()
        return elapsed

    stats = await alternate(settings.repetitions, mdevctl, mdevd)
    report.add(
        Row(
            "define",
            f"{count} definitions, one at a time: DefineDevice",
            "s",
            stats[1],
            stats[0],
            note="mdevd: atomic write + fsync of file and directory before each "
            "reply; mdevctl: a plain write, no fsync",
        )
    )


# ---- 4. autostart --------------------------------------------------------------------------


async def autostart(bench: Bench, report: Report, settings: Settings) -> None:
    """Parent registration to all N autostart devices present: mdevd vs start-parent-mdevs."""
    bench.stop_daemon()
    bench.sim.control.unregister(PARENT)
    for size in settings.autostart_sizes:
        uuids = [bench_uuid(4, i) for i in range(size)]
        bench.clear_mdevctl_definitions()
        bench.clear_mdevd_definitions()
        bench.write_mdevctl_definitions(uuids, autostart=True)
        bench.write_mdevd_definitions(uuids, autostart=True)
        await _autostart_row(bench, report, settings, set(uuids))
    bench.clear_mdevctl_definitions()
    bench.clear_mdevd_definitions()
    bench.sim.control.register(PARENT)


async def _autostart_row(
    bench: Bench, report: Report, settings: Settings, wanted: set[str]
) -> None:
    watcher = BindWatcher()

    def unregister() -> None:
        bench.sim.control.unregister(PARENT)
        bench.wait_until(lambda: not bench.active_uuids())

    def registration_to_binds(then: Callable[[], object] = lambda: None) -> float:
        watcher.drain()
        started = time.perf_counter()
        bench.sim.control.register(PARENT)
        then()
        return watcher.wait_for_binds(wanted) - started

    async def mdevctl() -> float:
        bench.stop_daemon()
        # What Debian's udev rule runs for the parent's registration event (started at once:
        # udevd's own delay before running a rule is not counted).
        elapsed = registration_to_binds(
            lambda: subprocess.run(
                ["mdevctl", "start-parent-mdevs", PARENT], check=True, capture_output=True
            )
        )
        unregister()
        return elapsed

    async def mdevd() -> float:
        bench.start_daemon()
        elapsed = registration_to_binds()
        bench.stop_daemon()
        unregister()
        return elapsed

    stats = await alternate(settings.repetitions, mdevctl, mdevd)
    report.add(
        Row(
            "autostart",
            f"registration to {len(wanted)} devices bound",
            "s",
            stats[1],
            stats[0],
            note="until the last device's bind uevent; mdevctl: start-parent-mdevs run at once",
        )
    )


# ---- 5. the daemon -------------------------------------------------------------------------


async def daemon_costs(
    bench: Bench, report: Report, settings: Settings, ready_times: dict[int, float]
) -> None:
    """Start-up time, resident memory, and memory after many create/remove cycles."""
    bench.stop_daemon()
    bench.clear_mdevd_definitions()
    ready_empty = [bench.start_daemon() for _ in range(settings.repetitions)]
    idle = bench.daemon_rss_mib()
    report.add(Row("daemon", "start to ready, 0 definitions", "s", Stats(tuple(ready_empty))))
    report.add(Row("daemon", "resident memory, idle, 0 definitions", "MiB", Stats((idle,))))

    size = settings.daemon_devices
    uuids = [bench_uuid(5, i) for i in range(size)]
    bench.write_mdevd_definitions(uuids)
    ready = bench.start_daemon()
    if size in ready_times:
        ready_samples: tuple[float, ...] = (ready_times[size], ready)
    else:
        ready_samples = (ready,)
    report.add(
        Row(
            "daemon",
            f"start to ready, {size} definitions",
            "s",
            Stats(ready_samples),
            note="load, enumerate, export every object, then own the name",
        )
    )
    report.add(
        Row(
            "daemon",
            f"resident memory, {size} definitions",
            "MiB",
            Stats((bench.daemon_rss_mib(),)),
        )
    )
    bench.stop_daemon()
    bench.clear_mdevd_definitions()

    bench.start_daemon()
    client = await bench.client()
    try:
        width = settings.parallel
        # A fresh UUID for every cycle, as managers that let the daemon choose do: per-UUID
        # state that outlived its device would show here as growth.
        fresh = iter(range(1 << 40))

        async def cycle(rounds: int) -> None:
            for _ in range(rounds):
                uuid = bench_uuid(6, next(fresh))
                await client.create_device_path(PARENT, TYPE, uuid=uuid)
                await client.stop(uuid)

        warmup = max(1, min(1_000, settings.cycles // 10) // width)
        await asyncio.gather(*(cycle(warmup) for _ in range(width)))
        before = bench.daemon_rss_mib()
        rounds = max(1, settings.cycles // width)
        # Resident memory after each tenth: growth that levels off (allocator pools, bounded
        # caches filling) looks different from a leak, which keeps climbing to the end.
        slices = min(10, rounds)
        samples = []
        started = time.perf_counter()
        for index in range(slices):
            share = rounds * (index + 1) // slices - rounds * index // slices
            await asyncio.gather(*(cycle(share) for _ in range(width)))
            samples.append(bench.daemon_rss_mib())
        elapsed = time.perf_counter() - started
        after = samples[-1]
        done = rounds * width
        report.add(
            Row(
                "daemon",
                f"resident memory after {done} create/remove cycles",
                "MiB",
                Stats((after,)),
                note=f"{before:.1f} MiB before; growth {after - before:+.1f} MiB; after each "
                f"tenth: {' '.join(f'{s:.1f}' for s in samples)}; "
                f"{done / elapsed:.0f} cycles/s with {width} in flight",
            )
        )
    finally:
        client.close()
    bench.stop_daemon()


# ---- 6. events -----------------------------------------------------------------------------


async def events(bench: Bench, report: Report, settings: Settings) -> None:
    """A device created by another tool: from the sysfs write to the client's DeviceEvent."""
    bench.clear_mdevd_definitions()
    bench.start_daemon()
    create_file = bench.sim.root / "class/mdev_bus" / PARENT / "mdev_supported_types" / TYPE
    create_file = create_file / "create"
    client = await bench.client()
    latencies: list[float] = []
    try:
        stream = client.events()
        queue: asyncio.Queue[Event] = asyncio.Queue()

        async def pump() -> None:
            async for event in stream:
                queue.put_nowait(event)

        pumping = asyncio.create_task(pump())
        await asyncio.sleep(0.5)  # the match rules are in place

        async def wait_for(uuid: str, kind: str) -> None:
            while True:
                event = await asyncio.wait_for(queue.get(), timeout=60)
                if event.kind == "device-event" and event.uuid == uuid and event.event == kind:
                    return

        for index in range(settings.events):
            uuid = bench_uuid(7, index)
            started = time.perf_counter()
            fd = os.open(create_file, os.O_WRONLY)
            try:
                os.write(fd, uuid.encode())
            finally:
                os.close(fd)
            await wait_for(uuid, "started")
            latencies.append(time.perf_counter() - started)
            (bench.sim.root / "bus/mdev/devices" / uuid / "remove").write_text("1")
            await wait_for(uuid, "stopped")
        pumping.cancel()
    finally:
        client.close()
    bench.stop_daemon()
    ordered = sorted(latencies)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    report.add(
        Row(
            "events",
            "uevent to DeviceEvent, p50",
            "s",
            Stats((p50,)),
            note=f"{len(ordered)} devices created through sysfs by another tool",
        )
    )
    report.add(Row("events", "uevent to DeviceEvent, p99", "s", Stats((p99,))))
