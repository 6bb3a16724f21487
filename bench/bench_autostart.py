"""Benchmark: from a parent's registration to all of its N autostart devices existing.

    python -m bench.bench_autostart [--devices 1,16,256] [--repeat 3]

The same emulated kernel (`mdevd-sim`, one mtty-like parent with room for 512 devices) serves
both contenders:

- mdevd: the real daemon on a private bus, with N autostart definitions; the clock starts
  just before the parent registers, and the daemon reacts to the uevent by itself.
- mdevctl: Debian's unmodified `mdevctl start-parent-mdevs PARENT`, what mdevctl's udev rule
  runs on the registration event, with N `"start": "auto"` definitions in /etc/mdevctl.d.
  It runs inside `unshare --mount --propagation private` with the emulated sysfs bound over
  /sys and a tmpfs over /etc/mdevctl.d (with scripts.d/callouts and scripts.d/notifiers); the
  namespace is set up once, and the command is started right after the registration (udevd's
  own delay before running a rule is not counted).

The clock stops when the last of the N devices' `bind` uevents arrives (read from udev's
netlink group, so the measurement does not load the emulation with polling). Each size is
measured `--repeat` times; the median is printed, with the ratio mdevctl / mdevd. It must run
as root (mounts, namespaces); it enters private network and mount namespaces first, so the
emulated kernel's uevents never reach the host.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import pyudev  # noqa: E402

from tests.support.bus import private_bus  # noqa: E402
from tests.support.daemon import running_daemon  # noqa: E402
from tests.support.namespaces import enter_private_namespaces  # noqa: E402
from tests.support.sim import RunningSim, running_sim  # noqa: E402

PARENT = "mtty"
TYPE = "mtty-1"

SCENARIO = f"""
[[parent]]
name = "{PARENT}"
devpath = "devices/virtual/mtty/mtty"
subsystem = "mtty"
driver = "mtty"
registered = false
pools = {{ ports = 512 }}

[[parent.type]]
id = "{TYPE}"
name = "Single port serial"
device_api = "vfio-pci"
pool = "ports"
"""

# Runs inside the private mount namespace: the mounts, the definitions, then one
# `start-parent-mdevs` per "run" line on stdin, answering "done RC" on stdout.
_MDEVCTL_SESSION = r"""
import json, os, subprocess, sys
root, parent, definitions = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
if os.stat("/proc/self/ns/mnt").st_ino == os.stat(f"/proc/{os.getppid()}/ns/mnt").st_ino:
    sys.exit("not in a mount namespace of its own: refusing to mount over /sys")
subprocess.run(["mount", "--bind", root, "/sys"], check=True)
subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=755", "tmpfs", "/etc/mdevctl.d"], check=True)
for sub in ("scripts.d/callouts", "scripts.d/notifiers", parent):
    os.makedirs(f"/etc/mdevctl.d/{sub}")
for uuid, mdev_type in definitions:
    with open(f"/etc/mdevctl.d/{parent}/{uuid}", "w") as f:
        json.dump({"mdev_type": mdev_type, "start": "auto", "attrs": []}, f)
print("ready", flush=True)
for line in sys.stdin:
    if line.strip() != "run":
        break
    done = subprocess.run(
        ["mdevctl", "start-parent-mdevs", parent], capture_output=True, text=True
    )
    if done.returncode != 0:
        print(done.stderr, file=sys.stderr, flush=True)
    print(f"done {done.returncode}", flush=True)
"""


def uuids_for(count: int) -> list[str]:
    return [f"b0000000-0000-4000-8000-{index:012x}" for index in range(count)]


class BindWatcher:
    """Counts the `bind` uevents of a set of mdev devices, from udev's netlink group."""

    def __init__(self) -> None:
        self.monitor = pyudev.Monitor.from_netlink(pyudev.Context(), source="udev")
        self.monitor.set_receive_buffer_size(32 * 1024 * 1024)
        self.monitor.start()

    def drain(self) -> None:
        while self.monitor.poll(timeout=0) is not None:
            pass

    def wait_for_binds(self, uuids: set[str], timeout: float = 300) -> float:
        """Block until every UUID was bound; the perf_counter time of the last bind."""
        missing = set(uuids)
        deadline = time.monotonic() + timeout
        last = time.perf_counter()
        while missing:
            if time.monotonic() > deadline:
                raise SystemExit(f"timed out: {len(missing)} of {len(uuids)} devices not bound")
            # None also when libudev dropped what it read (not an event for us): poll again.
            device = self.monitor.poll(timeout=max(0.01, deadline - time.monotonic()))
            if device is None:
                continue
            if device.action == "bind" and device.subsystem == "mdev":
                missing.discard(device.sys_name)
                last = time.perf_counter()
        return last


def _time_registrations(
    sim: RunningSim,
    uuids: list[str],
    repeat: int,
    watcher: BindWatcher,
    on_registered: Callable[[], None] = lambda: None,
    after: Callable[[], None] = lambda: None,
) -> list[float]:
    times = []
    for _ in range(repeat):
        watcher.drain()
        started = time.perf_counter()
        sim.control.register(PARENT)
        on_registered()
        finished = watcher.wait_for_binds(set(uuids))
        times.append(finished - started)
        after()
        sim.control.unregister(PARENT)  # removes every device again
    return times


def measure_mdevd(sim: RunningSim, count: int, repeat: int, watcher: BindWatcher) -> list[float]:
    uuids = uuids_for(count)
    with tempfile.TemporaryDirectory(prefix="mdevd-bench-", dir="/tmp") as scratch:
        devices_dir = Path(scratch) / "devices.d"
        devices_dir.mkdir()
        (devices_dir / "bench.toml").write_text(
            "".join(
                f'[[device]]\nuuid = "{u}"\nparent = "{PARENT}"\ntype = "{TYPE}"\n'
                "autostart = true\n\n"
                for u in uuids
            )
        )
        config = Path(scratch) / "mdevd.toml"
        config.write_text("[daemon]\n")
        with (
            private_bus() as address,
            running_daemon(
                address,
                sim.root,
                [devices_dir],
                extra_args=["--config", str(config), "--log-level", "warning"],
                print_log=False,
            ),
        ):
            return _time_registrations(sim, uuids, repeat, watcher)


@contextmanager
def mdevctl_session(sim: RunningSim, uuids: Sequence[str]) -> Iterator[subprocess.Popen[str]]:
    definitions = json.dumps([[u, TYPE] for u in uuids])
    session = subprocess.Popen(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            sys.executable,
            "-c",
            _MDEVCTL_SESSION,
            str(sim.root),
            PARENT,
            definitions,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert session.stdin is not None and session.stdout is not None
    try:
        if session.stdout.readline().strip() != "ready":
            raise SystemExit("the mdevctl session did not start")
        yield session
    finally:
        session.stdin.close()
        session.wait(30)


def measure_mdevctl(sim: RunningSim, count: int, repeat: int, watcher: BindWatcher) -> list[float]:
    uuids = uuids_for(count)
    with mdevctl_session(sim, uuids) as session:
        assert session.stdin is not None and session.stdout is not None
        stdin, stdout = session.stdin, session.stdout

        def run() -> None:
            stdin.write("run\n")
            stdin.flush()

        def finished() -> None:
            answer = stdout.readline().strip()
            if answer != "done 0":
                raise SystemExit(f"mdevctl start-parent-mdevs failed: {answer!r}")

        return _time_registrations(sim, uuids, repeat, watcher, run, finished)


def _milliseconds(times: list[float]) -> str:
    return f"{statistics.median(times) * 1000:9.1f} ms"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--devices", default="1,16,256", help="comma-separated device counts (1,16,256)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="registrations per size (3)")
    parser.add_argument("--skip-mdevctl", action="store_true", help="measure mdevd only")
    args = parser.parse_args(argv)
    counts = [int(word) for word in args.devices.split(",")]
    with_mdevctl = not args.skip_mdevctl and shutil.which("mdevctl") is not None
    enter_private_namespaces()

    print(
        f"autostart benchmark: registration of {PARENT} -> N devices bound (median of "
        f"{args.repeat}; emulated kernel)"
    )
    print(f"{'N':>5} {'mdevd':>12} {'mdevctl':>12} {'mdevctl/mdevd':>14}")
    with tempfile.TemporaryDirectory(prefix="mdevd-bench-sim-", dir="/tmp") as scratch:
        scenario = Path(scratch) / "scenario.toml"
        scenario.write_text(SCENARIO)
        with running_sim(scenario) as sim:
            watcher = BindWatcher()
            for count in counts:
                mdevd = measure_mdevd(sim, count, args.repeat, watcher)
                line = f"{count:>5} {_milliseconds(mdevd):>12}"
                if with_mdevctl:
                    mdevctl = measure_mdevctl(sim, count, args.repeat, watcher)
                    ratio = statistics.median(mdevctl) / statistics.median(mdevd)
                    line += f" {_milliseconds(mdevctl):>12} {ratio:>13.2f}x"
                else:
                    line += f" {'(not run)':>12}"
                print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
