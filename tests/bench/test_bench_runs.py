"""The benchmark command still runs end to end (tiny sizes) and writes its results.

Measurements are never asserted: only that every group produced its rows, with a ratio where
mdevctl has a counterpart, and the files the docs point to.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.daemon import REPO

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(shutil.which("mdevctl") is None, reason="mdevctl is not installed"),
]


def test_the_quick_run_measures_every_group(tmp_path: Path) -> None:
    # Its own namespaces: the benchmark binds the emulated kernel over /sys.
    done = subprocess.run(
        [
            "unshare",
            "--net",
            "--mount",
            "--propagation",
            "private",
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--results",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    data = json.loads((tmp_path / "latest.json").read_text())
    groups = {row["group"] for row in data["rows"]}
    assert groups == {"query", "start", "define", "autostart", "daemon", "events"}
    with_mdevctl = [row for row in data["rows"] if row["mdevctl"] is not None]
    assert with_mdevctl and all(row["ratio"] is not None for row in with_mdevctl)
    table = (tmp_path / "latest.md").read_text()
    assert "ratio (mdevctl/mdevd)" in table
    assert len(table.splitlines()) == len(data["rows"]) + 4  # machine line, blank, head, rule
