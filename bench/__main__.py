# SPDX-License-Identifier: LGPL-2.1-or-later
"""`python -m bench`: every benchmark row, as a table on stdout and files under bench/results/.

Run it through `scripts/bench`, which installs what it needs and enters the private namespaces
the side-by-side setup requires. `--quick` shrinks every size (a smoke run for tests).
`--real-kernel` runs the rows on real kernels instead (`bench/realkernel.py`): this host's
sysfs and disk, and a guest booted with Debian's kernel and the mtty sample driver.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import signal
import sys
import time
from pathlib import Path

from bench import rows
from bench.harness import PY_SPY, bench_environment
from bench.profiles import write_summaries
from bench.report import Report, machine_description

RESULTS = Path(__file__).resolve().parent / "results"
#: In the order they run (the daemon group reuses the query group's start-up times).
GROUPS = ("query", "start", "define", "autostart", "daemon", "events")
SIMPLE_GROUPS = {
    "start": rows.start,
    "define": rows.define,
    "autostart": rows.autostart,
    "events": rows.events,
}

QUICK = rows.Settings(
    repetitions=2,
    query_sizes=(10,),
    lifecycle_devices=8,
    process_devices=3,
    parallel=4,
    autostart_sizes=(1, 4),
    daemon_devices=50,
    cycles=64,
    events=10,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument(
        "--only",
        action="append",
        choices=GROUPS,
        help="run only these groups (repeatable)",
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="where to write results")
    parser.add_argument(
        "--cycles",
        type=int,
        help="create/remove cycles for the memory row (default 5000; 100000 takes ~30 min)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="sample every daemon with py-spy: one file per daemon start in DIR, with a "
        "text summary beside each",
    )
    parser.add_argument(
        "--real-kernel",
        action="store_true",
        help="the rows on this host's sysfs and in a real-kernel guest (with --quick: CI's "
        "short run), instead of the emulated kernel",
    )
    args = parser.parse_args(argv)
    if args.real_kernel:
        if args.only or args.cycles is not None:
            parser.error("--real-kernel runs its own groups: no --only, no --cycles")
        from bench import realkernel  # imports the guest harness, which the default run needs not

        asyncio.run(realkernel.run(args.results, short=args.quick, profile=args.profile))
        return 0
    if args.profile is not None and not PY_SPY.exists():
        parser.error(f"--profile needs py-spy ({PY_SPY}): pip install py-spy, or scripts/bootstrap")
    settings = QUICK if args.quick else rows.Settings()
    if args.cycles is not None:
        settings = dataclasses.replace(settings, cycles=max(1, args.cycles))
    wanted = set(args.only or GROUPS)
    report = Report(machine=machine_description())
    print(report.machine_line())
    print(report.table().split("\n", 2)[0])
    print(report.table().split("\n", 2)[1])
    started = time.monotonic()

    async def run_all() -> None:
        with bench_environment() as bench:
            if args.profile is not None:
                args.profile.mkdir(parents=True, exist_ok=True)
                bench.profile_dir = args.profile.resolve()
            ready: dict[int, float] = {}
            for group in GROUPS:
                if group not in wanted:
                    continue
                bench.profile_label = group
                if group == "query":
                    ready = await rows.query(bench, report, settings)
                elif group == "daemon":
                    await rows.daemon_costs(bench, report, settings, ready)
                else:
                    await SIMPLE_GROUPS[group](bench, report, settings)

    # SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C: the emulated kernel, the bus and the
    # daemon are stopped and unmounted instead of outliving the benchmark.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    asyncio.run(run_all())
    report.machine["duration"] = f"{time.monotonic() - started:.0f} s"
    for path in report.write(args.results):
        print(f"wrote {path}")
    if args.profile is not None:
        for path in write_summaries(args.profile):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
