# SPDX-License-Identifier: LGPL-2.1-or-later
"""The host half of `scripts/bench --real-kernel` (rows on this host's own sysfs and disk) still
runs, and the guest's rows reach the host's table intact. The guest half runs in CI at the end
of the scenarios' boot (tests/realkernel/test_bench.py). Measurements are never asserted.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from bench.report import Report, Row, Stats
from tests.support.daemon import REPO

HOST_ROWS = """
import asyncio, json
from bench.realsysfs import QUICK, host_rows
from bench.report import Report
report = Report()
asyncio.run(host_rows(report, QUICK))
print(report.to_json())
"""


def test_a_row_survives_the_trip_from_the_guest() -> None:
    row = Row(
        "start",
        "2 devices, one at a time: CreateDevice",
        "s",
        Stats((0.2, 0.3)),
        Stats((0.4, 0.5)),
        Stats((0.01, 0.02)),
        "a note",
    )
    report = Report(rows=[row])
    data = json.loads(report.to_json())
    assert Row.from_json(data["rows"][0]) == row
    assert data["rows"][0]["ratio"] == pytest.approx(0.45 / 0.25)
    assert data["rows"][0]["floor_ratio"] == pytest.approx(0.25 / 0.015)
    assert "| 1.80x | 15.0 ms [10.0 ms-20.0 ms] | 16.7x |" in report.table()


@pytest.mark.timeout(300)
@pytest.mark.skipif(shutil.which("mdevctl") is None, reason="mdevctl is not installed")
def test_the_host_sysfs_rows_run() -> None:
    # Private namespaces: the rows bind a directory over /etc/mdevctl.d.
    done = subprocess.run(
        ["unshare", "--net", "--mount", "--propagation", "private", sys.executable, "-c",
         HOST_ROWS],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=280,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    data = json.loads(done.stdout[done.stdout.index("{") :])
    names = [row["name"] for row in data["rows"]]
    assert names == [
        "query: busctl GetManagedObjects, N=10",
        "query: Python client GetManagedObjects, N=10",
        "query: Python client ListDevices, N=10",
        "query: Python client ListDeviceSummaries, N=10",
        "query: mdevdctl list --json, N=10",
        "define: 3 definitions, one at a time: DefineDevice",
    ]
    assert all(row["ratio"] is not None for row in data["rows"]), data["rows"]
    with_floor = [row["name"] for row in data["rows"] if row["floor_ratio"] is not None]
    assert with_floor == names[4:], with_floor
