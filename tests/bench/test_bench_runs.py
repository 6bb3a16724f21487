"""The benchmark command still runs end to end (tiny sizes) and writes its results.

Measurements are never asserted: only that every group produced its rows, with a ratio where
mdevctl has a counterpart, and the files the docs point to.
"""

from __future__ import annotations

import json
import pstats
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


def test_a_profile_run_leaves_the_daemons_profile(tmp_path: Path) -> None:
    """`--profile DIR`: the daemon ran under cProfile, and its summary names the daemon's own
    code for the group that ran (what docs/performance.md quotes for the slower rows)."""
    profiles = tmp_path / "profiles"
    done = subprocess.run(
        ["unshare", "--net", "--mount", "--propagation", "private", sys.executable, "-m",
         "bench", "--quick", "--only", "define", "--results", str(tmp_path),
         "--profile", str(profiles)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=280,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    runs = sorted(profiles.glob("define-*.pstats"))
    assert runs, sorted(p.name for p in profiles.iterdir())
    for run in runs:
        text = run.with_suffix(".txt").read_text()
        assert "by tottime" in text and "by cumulative" in text
    # The profile is the daemon's: the engine's define ran in it, for every definition (a
    # coroutine counts once per resumption, so at least once per definition).
    calls = [
        stats[1]  # primitive calls
        for run in runs
        for (filename, _, function), stats in pstats.Stats(str(run)).stats.items()  # type: ignore[attr-defined]
        if filename.endswith("mdevd/engine.py") and function == "define_device"
    ]
    [row] = json.loads((tmp_path / "latest.json").read_text())["rows"]
    definitions = int(row["name"].split()[0])  # "N definitions, one at a time: ..."
    assert calls and all(count >= definitions for count in calls), (calls, row)
