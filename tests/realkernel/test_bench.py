# SPDX-License-Identifier: LGPL-2.1-or-later
"""The real-kernel benchmark still runs: its short run, at the end of the scenarios' boot
(`guest/bench.py`, started by `guest/scenarios.py --bench`), measured every row with every
contender. No timing is asserted; `scripts/bench --real-kernel` is the full run, by hand.
"""

from __future__ import annotations

import json
import re

from tests.realkernel.scenario_run import ScenarioRun

#: Every row of the guest's table (numbers as N), and whether mdevctl and the floor are in it.
EXPECTED_ROWS = {
    ("query", "busctl GetManagedObjects, N=N"): (True, False),
    ("query", "Python client GetManagedObjects, N=N"): (True, False),
    ("query", "Python client ListDevices, N=N"): (True, False),
    ("query", "mdevdctl list --json, N=N"): (True, True),
    ("start", "N devices, one at a time: CreateDevice"): (True, True),
    ("start", "N devices, one at a time: Stop"): (True, True),
    ("start", "N devices, one at a time: mdevdctl create"): (True, True),
    ("start", "N devices, one at a time: mdevd's mdevctl front end"): (True, True),
    ("define", "N definitions, one at a time: DefineDevice"): (True, True),
    ("autostart", "modprobe mtty to N devices bound"): (True, True),
    ("daemon", "start to ready, N definitions"): (False, True),
    ("daemon", "resident memory, idle, N definitions"): (False, False),
    ("daemon", "resident memory, N definitions"): (False, False),
}


def test_the_short_benchmark_measured_every_row(scenario_run: ScenarioRun) -> None:
    scenario_run.assert_passed("bench")
    data = json.loads((scenario_run.guest.shared_dir / "bench.json").read_text())
    rows: dict[tuple[str, str], list[dict[str, object]]] = {}
    for row in data["rows"]:
        rows.setdefault((row["group"], re.sub(r"\d+", "N", row["name"])), []).append(row)
    assert set(rows) == set(EXPECTED_ROWS), sorted(rows)
    for key, (with_mdevctl, with_floor) in EXPECTED_ROWS.items():
        for row in rows[key]:
            assert row["mdevd"]["samples"], row  # type: ignore[index]
            assert all(s > 0 for s in row["mdevd"]["samples"]), row  # type: ignore[index]
            if with_mdevctl:
                assert row["mdevctl"]["samples"] and row["ratio"] is not None, row  # type: ignore[index]
            else:
                assert row["mdevctl"] is None, row
            if with_floor:
                assert row["floor"]["samples"] and row["floor_ratio"] is not None, row  # type: ignore[index]
            else:
                assert row["floor"] is None, row
    # Two start-to-ready rows: with no definitions and with some.
    assert len(rows[("daemon", "start to ready, N definitions")]) == 2
    assert data["machine"]["guest kernel"], data["machine"]
