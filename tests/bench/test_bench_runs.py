# SPDX-License-Identifier: LGPL-2.1-or-later
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

from bench.profiles import read
from tests.support.paths import REPO

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
    # title, blank, machine line, blank, head, rule
    assert len(table.splitlines()) == len(data["rows"]) + 6


def test_a_profile_run_leaves_the_daemons_profile(tmp_path: Path) -> None:
    """`--profile DIR`: py-spy sampled the daemon, and the summary shows the daemon's own code
    at work for the group that ran (what docs/performance.md quotes for the slower rows)."""
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
    runs = sorted(profiles.glob("define-*.stacks"))
    assert runs, sorted(p.name for p in profiles.iterdir())
    at_work = [read(run) for run in runs]
    # The daemon's store wrote the definitions while it was sampled.
    assert any("mdevd/store.py" in frame for samples in at_work for frame in samples.inclusive), [
        samples.inclusive.most_common(10) for samples in at_work
    ]
    text = runs[0].with_suffix(".txt").read_text()
    assert "samples of all threads" in text and "mdevd's frames" in text, text
