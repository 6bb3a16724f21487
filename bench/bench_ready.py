# SPDX-License-Identifier: LGPL-2.1-or-later
"""Benchmark: the daemon's start to ready (its bus name owned) with N definitions.

    python -m bench.bench_ready [--devices N ...] [--repetitions R] [--tree DIR ...]
                                [--one-file] [--profile DIR | --sample DIR]

Issue 20's target is "ready with 10,000 definitions under 1 s". Each run mounts the emulated
kernel (`bench/scenario.toml`) and a private bus in private namespaces (entered here, as the
test suite does), writes N definitions (a file each, as `scripts/bench` does; `--one-file`:
all in one), then starts the daemon R times per size and times exec to `READY=1` on a
notification socket of its own (sent once the name is owned: `mdevd.daemon`), which needs no
polling client beside it.

Each `--tree` is a source tree the daemon is imported from (default: this checkout), so two
versions can be compared on the same machine at the same time: the trees alternate run by run
(a change in the machine's load hits both). `--profile DIR` runs each daemon under cProfile
(`DIR/tree<i>-<N>-<run>.prof`), `--sample DIR` under py-spy, every thread (`.stacks`, raw;
`bench.profiles` sums them up). Prints median [min-max] per tree and size.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mdevd.definitions import render
from mdevd.model import Definition
from tests.support.bus import private_bus
from tests.support.namespaces import enter_private_namespaces
from tests.support.sim import running_sim

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
SCENARIO = BENCH_DIR / "scenario.toml"
PARENT = "bench"
TYPE = "bench-1"


def _uuid(index: int) -> str:
    return f"00000020-0000-4000-8000-{index:012x}"


def _write_definitions(directory: Path, count: int, one_file: bool = False) -> None:
    for entry in directory.iterdir():
        entry.unlink()
    if one_file:
        definitions = (Definition(_uuid(i), PARENT, TYPE) for i in range(count))
        (directory / "all.toml").write_text(render(definitions))
        return
    for index in range(count):
        uuid = _uuid(index)
        (directory / f"{uuid}.toml").write_text(render([Definition(uuid, PARENT, TYPE)]))


def _start_to_ready(
    tree: Path, sysfs: Path, address: str, devices: Path, profile: Path | None, pycache: Path
) -> float:
    """Seconds from exec to READY=1; the daemon is stopped before returning."""
    workdir = Path(tempfile.mkdtemp(prefix="mdevd-ready-", dir="/tmp"))
    notify_path = workdir / "notify"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(300)
    env = dict(os.environ)
    env.update(
        DBUS_SYSTEM_BUS_ADDRESS=address,
        NOTIFY_SOCKET=str(notify_path),
        # The tree under test first; the checkout's editable install comes after sys.path.
        PYTHONPATH=str(tree),
        # Compiled once and kept, as an installed package's modules are (outside the trees).
        PYTHONPYCACHEPREFIX=str(pycache),
    )
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    (workdir / "mdevd.toml").write_text("# defaults\n")
    command = [sys.executable, "-m", "mdevd"]
    if profile is not None and profile.suffix == ".prof":
        command = [sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "mdevd"]
    elif profile is not None:
        # Every thread (the store's reads and the sysfs reads run in workers), idle or not.
        command = [
            str(Path(sys.executable).with_name("py-spy")), "record", "--threads", "--idle",
            "--rate", "250", "--format", "raw", "--output", str(profile), "--", *command,
        ]  # fmt: skip
    argv = [
        *command,
        "--sysfs-root", str(sysfs),
        "--dev-root", str(sysfs / ".sim" / "dev"),
        "--uevent-source", "udev",
        "--log-level", "warning",
        "--config", str(workdir / "mdevd.toml"),
        "--state-dir", str(workdir / "state"),
        "--devices-dir", str(devices),
        "--mdevctl-dir", str(workdir / "mdevctl.d"),
        "--mdevctl-scripts-dir", str(workdir / "mdevctl-scripts.d"),
    ]  # fmt: skip
    log = (workdir / "mdevd.log").open("wb")
    started = time.perf_counter()
    # cwd: not a checkout, so that `-m mdevd` imports from PYTHONPATH, not from the cwd.
    process = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=workdir
    )
    try:
        while True:
            message = notify.recv(4096).decode()
            if "READY=1" in message.splitlines():
                return time.perf_counter() - started
    except TimeoutError:
        raise SystemExit(f"not ready: {(workdir / 'mdevd.log').read_text()}") from None
    finally:
        if profile is not None:
            # Its SIGTERM handler is installed just after READY=1; cProfile writes on a clean
            # exit only.
            time.sleep(1)
        if profile is not None and profile.suffix != ".prof":
            # py-spy writes once the daemon, its child, is gone.
            children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text()
            for child in children.split():
                os.kill(int(child), signal.SIGTERM)
        else:
            process.terminate()
        process.wait(timeout=60)
        log.close()
        notify.close()
        if profile is not None and not profile.exists():
            log_text = (workdir / "mdevd.log").read_text()
            print(f"no profile written (exit {process.returncode}); log:\n{log_text}")
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--devices", type=int, nargs="+", default=[1_000, 10_000])
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--one-file", action="store_true", help="all definitions in one file")
    parser.add_argument("--tree", type=Path, action="append", help="source tree (repeatable)")
    parser.add_argument("--profile", type=Path, help="cProfile each daemon into this directory")
    parser.add_argument("--sample", type=Path, help="py-spy each daemon into this directory")
    args = parser.parse_args(argv)
    trees: list[Path] = [tree.resolve() for tree in args.tree or [REPO]]
    enter_private_namespaces()
    output: Path | None = args.profile or args.sample
    suffix = ".prof" if args.profile is not None else ".stacks"
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
    with running_sim(SCENARIO) as sim, private_bus() as address:
        devices = Path(tempfile.mkdtemp(prefix="mdevd-ready-defs-", dir="/tmp"))
        pycache = Path(tempfile.mkdtemp(prefix="mdevd-ready-pycache-", dir="/tmp"))
        caches = {tree: pycache / str(index) for index, tree in enumerate(trees)}
        try:
            _write_definitions(devices, 0)
            for tree in trees:  # a first run, not counted, compiles the modules
                _start_to_ready(tree, sim.root, address, devices, None, caches[tree])
            for count in args.devices:
                _write_definitions(devices, count, args.one_file)
                times: dict[Path, list[float]] = {tree: [] for tree in trees}
                for run in range(args.repetitions):
                    for index, tree in enumerate(trees):
                        profile = None
                        if output is not None:
                            profile = output / f"tree{index}-{count}-{run}{suffix}"
                        times[tree].append(
                            _start_to_ready(tree, sim.root, address, devices, profile, caches[tree])
                        )
                for tree, samples in times.items():
                    print(
                        f"{count:>6} definitions  {tree}: median {statistics.median(samples):.3f} s"
                        f" [{min(samples):.3f}-{max(samples):.3f}]  load {os.getloadavg()[0]:.2f}"
                        f"  runs {' '.join(f'{s:.3f}' for s in samples)}",
                        flush=True,
                    )
        finally:
            shutil.rmtree(devices, ignore_errors=True)
            shutil.rmtree(pycache, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
