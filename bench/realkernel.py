# SPDX-License-Identifier: LGPL-2.1-or-later
"""`scripts/bench --real-kernel`: the rows where users run mdevd, on real kernels only.

First the host's own sysfs and disk (`bench/realsysfs.py`: listing and defining definitions,
nothing emulated), then one boot of the real-kernel guest (`tests/realkernel/harness.py`:
Debian's kernel with the mtty sample driver, under qemu) that runs the query, start, define,
autostart and daemon groups (`tests/realkernel/guest/bench.py`). The table goes to
`bench/results/realkernel.{md,json,png}`; with `--profile DIR`, py-spy's samples of every
daemon the guest started, and their summaries, go to DIR.
"""

from __future__ import annotations

import datetime
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.realsysfs import QUICK as HOST_QUICK
from bench.realsysfs import Settings as HostSettings
from bench.realsysfs import host_rows
from bench.report import Report, Row, machine_description
from tests.realkernel.harness import RealKernel, choose_accelerator
from tests.realkernel.prepare import host_can_run_guests
from tests.support.paths import REPO

TITLE = (
    "mdevd beside mdevctl where users run it: this host's own sysfs and disk, and Debian 12's "
    "kernel with the mtty sample driver (under qemu)"
)
#: The full guest run takes about 15 minutes under TCG on 2 cores; this is the hang guard.
GUEST_TIMEOUT = 3600


def checkout_state() -> str:
    """The commit measured, and whether the tree had changes not yet committed (other work in
    progress is measured with it)."""
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--", "mdevd"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return f"{head or 'unknown'}{' + uncommitted changes in mdevd/' if dirty else ''}"


def guest_rows(short: bool, profile: Path | None) -> tuple[list[Row], dict[str, str]]:
    """Boot the guest, run its rows; the rows and what the guest says about itself."""
    reason = host_can_run_guests()
    if reason is not None:
        raise SystemExit(f"bench: the real-kernel guest cannot run here: {reason}")
    kernel = RealKernel.prepare()
    run_dir = Path(tempfile.mkdtemp(prefix="mdevd-bench-realkernel-", dir="/tmp"))
    command = [sys.executable, "-m", "tests.realkernel.guest.bench"]
    command += ["--short"] if short else []
    command += ["--profile"] if profile is not None else []
    print(f"booting the real-kernel guest (run directory {run_dir})", flush=True)
    guest = kernel.run(command, timeout=GUEST_TIMEOUT, run_dir=run_dir)
    if guest.exit_status != 0:
        raise SystemExit(f"bench: the guest's benchmark failed\n{guest.describe()}")
    data = json.loads((guest.shared_dir / "bench.json").read_text())
    if profile is not None:
        profile.mkdir(parents=True, exist_ok=True)
        for path in sorted((guest.shared_dir / "profiles").iterdir()):
            shutil.copy(path, profile / path.name)
    machine = {f"{key}": str(value) for key, value in data["machine"].items()}
    machine["accelerator"] = choose_accelerator()
    machine["guest boot seconds"] = f"{guest.duration:.0f}"
    shutil.rmtree(run_dir, ignore_errors=True)
    return [Row.from_json(row) for row in data["rows"]], machine


async def run(results: Path, *, short: bool, profile: Path | None) -> Report:
    machine = machine_description()
    machine["date"] = datetime.date.today().isoformat()
    machine["checkout"] = checkout_state()
    report = Report(machine=machine, title=TITLE, stem="realkernel")
    started = time.monotonic()
    await host_rows(report, HOST_QUICK if short else HostSettings())
    rows, guest_machine = guest_rows(short, profile)
    for row in rows:
        report.add(row)
    report.machine.update(guest_machine)
    report.machine["duration"] = f"{time.monotonic() - started:.0f} s"
    for path in report.write(results):
        print(f"wrote {path}")
    return report
