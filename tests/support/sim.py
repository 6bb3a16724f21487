# SPDX-License-Identifier: LGPL-2.1-or-later
"""Run the emulated kernel (`mdevd-sim mount`) for the length of a `with` block.

    with running_sim("default") as sim:
        (sim.root / "class/mdev_bus").iterdir()     # sim.root plays /sys
        sim.control.unregister("mtty")               # mdevd.sim.control.SimControl

Independent of pytest, so the kernel-layer, daemon and benchmark code can all use it. The
emulation runs as a subprocess on a fresh temporary mount point; on exit it gets SIGTERM and
must end with status 0 and leave nothing mounted, else `SimFailed` carries its log.
uevents go out on netlink only when the caller is in a private network namespace (the test
suite's conftest puts the whole pytest process in one).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mdevd.sim.control import CONTROL_PATH, SimControl
from tests.support.logs import watched_log
from tests.support.paths import REPO

SCENARIO_DIR = REPO / "config" / "sim"


class SimFailed(RuntimeError):
    """The emulation did not start, did not stop cleanly, or left its mount behind."""


def scenario_path(name: str | Path) -> Path:
    """`"mtty"` -> config/sim/mtty.toml; a path (anything with a `/` or `.toml`) as it is."""
    text = str(name)
    if "/" in text or text.endswith(".toml"):
        return Path(text)
    return SCENARIO_DIR / f"{text}.toml"


@dataclass
class RunningSim:
    #: The mount point: the emulated /sys.
    root: Path
    control: SimControl
    process: subprocess.Popen[bytes]
    scenario: Path
    log_path: Path

    def log(self) -> str:
        """What the emulation printed on stderr so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def _wait_mounted(sim: RunningSim, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    control_file = sim.root / CONTROL_PATH
    while time.monotonic() < deadline:
        if sim.process.poll() is not None:
            raise SimFailed(
                f"mdevd-sim exited with {sim.process.returncode} before mounting:\n{sim.log()}"
            )
        if os.path.ismount(sim.root) and control_file.exists():
            return
        time.sleep(0.02)
    raise SimFailed(f"mdevd-sim did not mount {sim.root} within {timeout} s:\n{sim.log()}")


def _force_unmount(path: Path) -> None:
    subprocess.run(["fusermount3", "-u", "-z", str(path)], check=False, capture_output=True)


@contextlib.contextmanager
def running_sim(
    scenario: str | Path = "default",
    *,
    scenario_text: str | None = None,
    uevents: str = "auto",
    stop_signal: int = signal.SIGTERM,
    timeout: float = 15.0,
) -> Iterator[RunningSim]:
    """Mount an emulated kernel for `scenario` (a name in config/sim/ or a path), or for
    `scenario_text` (TOML) when given; yield it; stop it with `stop_signal` and check it left."""
    workdir = Path(tempfile.mkdtemp(prefix="mdevd-sim-"))
    # Readable by everyone, as /sys is: tests run clients as other users too.
    workdir.chmod(0o755)
    root = workdir / "sys"
    root.mkdir()
    if scenario_text is not None:
        path = workdir / "scenario.toml"
        path.write_text(scenario_text)
    else:
        path = scenario_path(scenario)
    log_path = workdir / "mdevd-sim.log"
    options = ["--scenario", str(path), "--uevents", uevents]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "mdevd.sim", "mount", str(root), *options],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    sim = RunningSim(root, SimControl(root), process, path, log_path)
    body_failed = True
    try:
        with watched_log("mdevd-sim", log_path):
            _wait_mounted(sim, timeout)
            yield sim
        body_failed = False
    finally:
        problem = _stop(sim, stop_signal, timeout)
        if problem is None:
            shutil.rmtree(workdir, ignore_errors=True)
        elif not body_failed:
            raise SimFailed(f"{problem}\n--- mdevd-sim log ---\n{sim.log()}")


def _stop(sim: RunningSim, stop_signal: int, timeout: float) -> str | None:
    """Stop the emulation; a description of what went wrong, or None."""
    problem = None
    if sim.process.poll() is None:
        sim.process.send_signal(stop_signal)
        try:
            sim.process.wait(timeout)
        except subprocess.TimeoutExpired:
            sim.process.kill()
            sim.process.wait()
            problem = f"mdevd-sim did not stop within {timeout} s of signal {stop_signal}"
    if problem is None and sim.process.returncode != 0:
        problem = f"mdevd-sim exited with status {sim.process.returncode}"
    if os.path.ismount(sim.root):
        _force_unmount(sim.root)
        problem = problem or f"mdevd-sim left {sim.root} mounted"
    return problem
