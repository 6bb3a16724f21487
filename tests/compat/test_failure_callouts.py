# SPDX-License-Identifier: LGPL-2.1-or-later
"""A start the front end refuses still runs mdevctl's callouts: `pre`, `post` with `failure`,
and the notifiers with `failure` (issue 19). s390-tools and site scripts may count on hearing
about a failed start.

Each failure path is run through Debian's real mdevctl and through the front end with the
same recording callout and notifier, and what the scripts saw is compared, as are the exit
status and mdevctl's `Error:` line.
"""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.compat import scripts
from tests.compat.conftest import StackFactory
from tests.compat.reference import REAL_MDEVCTL, run_reference
from tests.support.sim import running_sim
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(240, method="thread")

U = "976d8cc2-4bfc-43b9-b9f9-f4af2de91ab9"
V = "a1111111-2222-4333-8444-555555555555"

#: Every start here fails, each for a reason the front end or the daemon finds before the
#: kernel is asked; `define` sets up the last one (a definition whose parent is missing).
_FAILURES = [
    ["mdevctl", "start", "-p", "nosuch", "-t", "mtty-1", "-u", U],  # parent missing
    ["mdevctl", "start", "-p", "MTTY", "-t", "mtty-1", "-u", U],  # parent in the wrong case
    ["mdevctl", "start", "-p", "mtty", "-t", "mtty-9", "-u", U],  # unknown type
    ["mdevctl", "define", "-p", "nosuch", "-t", "mtty-1", "-u", V],
    ["mdevctl", "start", "-u", V],  # defined, its parent missing
]


def _records(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def _notified(log: Path, count: int) -> bool:
    notified: int = sum(r["script"] == "n1" for r in _records(log))
    return notified == count


def _seen(records: list[dict[str, Any]]) -> list[tuple[str, tuple[str, ...], str]]:
    # mdevd also asks version 1 scripts for their capabilities (mdevctl 1.3 does; 1.2 not).
    return [
        (r["script"], tuple(r["argv"]), r["stdin"])
        for r in records
        if "capabilities" not in r["argv"]
    ]


def _error_lines(stderr: str) -> list[str]:
    # mdevctl also echoes the scripts' stderr, which mdevd logs instead (docs/mdevctl-compat.md)
    return [line for line in stderr.splitlines() if line.startswith("Error:")]


@pytest.mark.skipif(REAL_MDEVCTL is None, reason="mdevctl is not installed")
def test_a_refused_start_runs_pre_post_and_notifiers_as_mdevctl_does(
    start_stack: StackFactory,
) -> None:
    reference = Path(tempfile.mkdtemp(dir="/tmp"))
    # The log lives outside the directory mdevctl reads (it would warn about a non-UUID file).
    reference_log = Path(tempfile.mkdtemp(dir="/tmp")) / "calls"
    for sub, name in (("callouts", "20-rec"), ("notifiers", "n1")):
        path = reference / "scripts.d" / sub / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(scripts.recorder(reference_log))
        path.chmod(0o755)
    with running_sim("default") as sim:
        expected = run_reference(sim.root, reference, _FAILURES)
    # The reference itself: every start failed, and each told the scripts so.
    assert [r.returncode for r in expected] == [1, 1, 1, 0, 1]
    theirs = _records(reference_log)
    assert [(r["argv"][3], r["argv"][7]) for r in theirs if r["argv"][5] == "start"] == [
        ("pre", "none"), ("post", "failure"), ("notify", "failure"),
    ] * 4  # fmt: skip

    stack = start_stack()
    log = Path(tempfile.mkdtemp(dir="/tmp")) / "calls"
    stack.dirs.callout("20-rec", scripts.recorder(log), where="etc")
    stack.dirs.notifier("n1", scripts.recorder(log), where="etc")
    for done, (command, want) in enumerate(zip(_FAILURES, expected, strict=True), start=1):
        got = stack.mdevctl(*command[1:])
        assert (got.returncode, got.stdout, _error_lines(got.stderr)) == (
            want.returncode,
            want.stdout,
            _error_lines(want.stderr),
        ), command
        # The daemon runs the notifiers in the background: wait for this command's.
        wait_until(functools.partial(_notified, log, done), timeout=20, what="the notifier")

    ours = _records(log)
    assert _seen([r for r in ours if r["script"] != "n1"]) == _seen(
        [r for r in theirs if r["script"] != "n1"]
    )
    assert _seen([r for r in ours if r["script"] == "n1"]) == _seen(
        [r for r in theirs if r["script"] == "n1"]
    )
    # Run by the daemon (ap-check's lock must name it), not by the front end.
    assert {r["ppid"] for r in ours} == {stack.daemon.process.pid}
