# SPDX-License-Identifier: LGPL-2.1-or-later
"""One emulated kernel that mdevd and Debian's mdevctl both see, for side-by-side measurements.

The benchmark process runs in private network and mount namespaces (`scripts/bench` enters
them). Inside, the emulated kernel is mounted, bound over `/sys` and a tmpfs covers
`/etc/mdevctl.d`, so the unmodified `mdevctl` binary works on exactly the sysfs tree the daemon
is pointed at, and neither touches the host.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from mdevd.client import Client
from mdevd.definitions import render
from mdevd.model import Definition
from mdevd.sim.uevent import recorded_host_namespaces
from tests.support.bus import private_bus
from tests.support.daemon import DaemonProcess, running_daemon
from tests.support.sim import RunningSim, running_sim

BENCH_DIR = Path(__file__).resolve().parent
SCENARIO = BENCH_DIR / "scenario.toml"
#: The scenario's parent and type: an mtty-like driver (its device exists only while it is
#: registered) with a pool large enough for every row.
PARENT = "bench"
TYPE = "bench-1"
MDEVCTL_DIR = Path("/etc/mdevctl.d")


def bench_uuid(row: int, index: int) -> str:
    """Distinct, readable UUIDs: the row number in the first group, the index in the last."""
    return f"{row:08x}-0000-4000-8000-{index:012x}"


NAMESPACE_KINDS = ("mnt", "net")


def _namespace(pid: int | str, kind: str) -> int:
    return os.stat(f"/proc/{pid}/ns/{kind}").st_ino


def in_private_namespaces() -> bool:
    """True when this process has mount and network namespaces the host does not share.

    The host's are what `scripts/bench` recorded before `unshare`
    (`mdevd.sim.uevent.HOST_NAMESPACES_VARIABLE`, which the emulated kernel reads too), or else
    our parent's (not PID 1's: /proc/1/ns is not readable in every sandbox; and a parent that
    exited leaves PID 1 as the parent, hence the recorded ones).
    """
    mine = [_namespace("self", kind) for kind in NAMESPACE_KINDS]
    recorded = recorded_host_namespaces()
    if recorded is not None:
        return all(m != r for m, r in zip(mine, recorded, strict=True))
    try:
        theirs = [_namespace(os.getppid(), kind) for kind in NAMESPACE_KINDS]
    except OSError as exc:
        raise SystemExit(
            f"bench: cannot read the parent's namespaces ({exc}); run through scripts/bench"
        ) from None
    return all(m != t for m, t in zip(mine, theirs, strict=True))


def _mount(*argv: str) -> None:
    subprocess.run(["mount", *argv], check=True, capture_output=True)


#: py-spy's sampling rate with `--profile`.
SAMPLES_PER_SECOND = 250
#: py-spy as the project's virtualenv has it (the `test` extra).
PY_SPY = Path(sys.executable).with_name("py-spy")


@dataclass
class Bench:
    """The shared environment: emulated kernel, bus, and the paths both tools use."""

    sim: RunningSim
    bus_address: str
    workdir: Path
    devices_dir: Path
    stack: ExitStack = field(default_factory=ExitStack)
    daemon: DaemonProcess | None = None
    #: With a directory, py-spy samples every daemon from its readiness to its exit, every
    #: thread, idle or not, into `<label>-<n>.stacks` there (py-spy's raw format).
    profile_dir: Path | None = None
    #: The group now running, for the profile's name.
    profile_label: str = "daemon"
    _profiles: int = 0
    _sampler: subprocess.Popen[bytes] | None = None

    # ---- mdevctl ---------------------------------------------------------------------------

    def mdevctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(["mdevctl", *args], capture_output=True, text=True, timeout=600)
        if check and done.returncode != 0:
            raise RuntimeError(f"mdevctl {' '.join(args)}: {done.stderr.strip()}")
        return done

    def clear_mdevctl_definitions(self) -> None:
        for entry in MDEVCTL_DIR.iterdir():
            if entry.name != "scripts.d":
                shutil.rmtree(entry)

    def write_mdevctl_definitions(self, uuids: Sequence[str], autostart: bool = False) -> None:
        directory = MDEVCTL_DIR / PARENT
        directory.mkdir(exist_ok=True)
        start = "auto" if autostart else "manual"
        for uuid in uuids:
            (directory / uuid).write_text(
                f'{{"mdev_type":"{TYPE}","start":"{start}","attrs":[]}}\n'
            )

    # ---- mdevd -----------------------------------------------------------------------------

    def write_mdevd_definitions(self, uuids: Sequence[str], autostart: bool = False) -> None:
        for uuid in uuids:
            definition = Definition(uuid, PARENT, TYPE, autostart=autostart)
            (self.devices_dir / f"{uuid}.toml").write_text(render([definition]))

    def clear_mdevd_definitions(self) -> None:
        for path in self.devices_dir.iterdir():
            path.unlink()

    def start_daemon(self) -> float:
        """Start mdevd; the seconds from exec to owning its bus name (its readiness)."""
        self.stop_daemon()
        started = time.perf_counter()
        context = running_daemon(
            self.bus_address,
            self.sim.root,
            [self.devices_dir],
            extra_args=["--log-level", "warning"],
            print_log=False,
            start_timeout=300,
        )
        self.daemon = context.__enter__()
        ready = time.perf_counter() - started
        self._daemon_context = context
        if self.profile_dir is not None:
            self._start_sampler(self.daemon.process.pid, self.profile_dir)
        return ready

    def _start_sampler(self, pid: int, directory: Path) -> None:
        # Sampling from outside (ptrace, no instrumentation): the daemon runs at nearly its
        # normal speed, and the worker threads, where the sysfs and file work runs, show too.
        self._profiles += 1
        output = directory / f"{self.profile_label}-{self._profiles}.stacks"
        self._sampler = subprocess.Popen(
            [str(PY_SPY), "record", "--pid", str(pid),
             "--idle", "--threads", "--nonblocking", "--rate", str(SAMPLES_PER_SECOND),
             "--format", "raw", "--output", str(output)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def stop_daemon(self) -> None:
        if self.daemon is not None:
            self._daemon_context.__exit__(None, None, None)
            self.daemon = None
        if self._sampler is not None:
            # py-spy writes its file once it sees the process gone.
            try:
                self._sampler.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self._sampler.kill()
                self._sampler.wait()
            self._sampler = None

    def daemon_rss_mib(self) -> float:
        assert self.daemon is not None
        for line in Path(f"/proc/{self.daemon.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    async def client(self) -> Client:
        return await Client.connect(self.bus_address, timeout=600)

    # ---- the kernel ------------------------------------------------------------------------

    def active_uuids(self) -> set[str]:
        return set(os.listdir(self.sim.root / "bus" / "mdev" / "devices"))

    def remove_all_devices(self) -> None:
        """Remove every device straight through sysfs (not timed; both tools start clean)."""
        for uuid in self.active_uuids():
            with suppress(FileNotFoundError):  # gone meanwhile
                (self.sim.root / "bus" / "mdev" / "devices" / uuid / "remove").write_text("1")

    def wait_until(self, condition: Callable[[], bool], timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise RuntimeError("benchmark: a condition did not come true in time")
            time.sleep(0.002)


@contextmanager
def bench_environment() -> Iterator[Bench]:
    if os.geteuid() != 0:
        raise SystemExit("bench: run as root (scripts/bench)")
    if not in_private_namespaces():
        raise SystemExit("bench: run through scripts/bench (private mount and net namespaces)")
    if shutil.which("mdevctl") is None:
        raise SystemExit("bench: Debian's mdevctl is not installed (scripts/bootstrap)")
    with ExitStack() as stack:
        workdir = Path(tempfile.mkdtemp(prefix="mdevd-bench-"))
        stack.callback(shutil.rmtree, workdir, True)
        address = stack.enter_context(private_bus())
        sim = stack.enter_context(running_sim(SCENARIO))
        _mount("--bind", str(sim.root), "/sys")
        stack.callback(subprocess.run, ["umount", "-l", "/sys"], check=False)
        _mount("-t", "tmpfs", "-o", "mode=755", "tmpfs", str(MDEVCTL_DIR))
        stack.callback(subprocess.run, ["umount", "-l", str(MDEVCTL_DIR)], check=False)
        for sub in ("scripts.d/callouts", "scripts.d/notifiers"):
            (MDEVCTL_DIR / sub).mkdir(parents=True)
        devices_dir = workdir / "devices.d"
        devices_dir.mkdir()
        bench = Bench(sim, address, workdir, devices_dir)
        try:
            yield bench
        finally:
            bench.stop_daemon()


if __name__ == "__main__":  # pragma: no cover - a smoke check by hand
    with bench_environment() as b:
        print(b.mdevctl("types").stdout, file=sys.stderr)
