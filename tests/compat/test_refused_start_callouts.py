# SPDX-License-Identifier: LGPL-2.1-or-later
"""Starting a device that already runs tells the callouts and notifiers, as mdevctl does
(issue 19): `pre`, then the refusal ("Device already exists", "... with different type",
"... under different parent"), then `post` and `notify` with `failure`. s390 tools and site
scripts may rely on the failure notification (as they hear of a start the kernel refuses, here
for want of instances). The refusals mdevctl makes before it asks any script (a definition
that exists, nothing to undefine, modify or stop, too little said) run none, in mdevd neither.

The same recording callout and notifier watch the front end on the real daemon; each command's
exit status, `Error:` line and every script call (argv and config on stdin) are checked against
what Debian's real mdevctl does (run on the same emulated kernel when it is installed; its
answers are also written out below, so the front end is checked without it).
"""

from __future__ import annotations

import asyncio
import functools
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mdevd.client import Client, DaemonError
from tests.compat import scripts
from tests.compat.conftest import CompatStack, StackFactory
from tests.compat.reference import REAL_MDEVCTL, run_reference
from tests.support.sim import running_sim
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(240, method="thread")

U = "976d8cc2-4bfc-43b9-b9f9-f4af2de91ab9"  # a transient device
W = "a1111111-2222-4333-8444-555555555555"  # a defined one
X = "b1111111-2222-4333-8444-555555555555"  # nothing
MDPY = [f"c{n}111111-2222-4333-8444-555555555555" for n in range(5)]

SAME = '{"mdev_type": "mtty-1", "start": "manual", "attrs": []}'
OTHER_ATTRS = '{"mdev_type": "mtty-1", "start": "manual", "attrs": [{"x": "1"}]}'


@dataclass(frozen=True)
class Step:
    argv: tuple[str, ...]
    returncode: int
    error: str  # the `Error:` line, "" for none
    #: The scripts' calls: (action, uuid, parent, type, state of post/notify, config on stdin);
    #: None when no script runs.
    callouts: tuple[str, str, str, str, str, str] | None


def _config(type_id: str, attrs: str = "[]") -> str:
    return f'{{"mdev_type":"{type_id}","start":"manual","attrs":{attrs}}}'


def _steps(same: Path, other_attrs: Path) -> list[Step]:
    mtty1 = _config("mtty-1")
    fail = "failure"
    return [
        Step(("start", "-p", "mtty", "-t", "mtty-1", "-u", U), 0, "",
             ("start", U, "mtty", "mtty-1", "success", mtty1)),
        # An identical transient start: the daemon takes it for a retry when D-Bus callers
        # send it; mdevctl refuses it after `pre`.
        Step(("start", "-p", "mtty", "-t", "mtty-1", "-u", U), 1, "Device already exists",
             ("start", U, "mtty", "mtty-1", fail, mtty1)),
        Step(("start", "-p", "mtty", "-t", "mtty-2", "-u", U), 1,
             "Device exists with different type",
             ("start", U, "mtty", "mtty-2", fail, _config("mtty-2"))),
        Step(("start", "-p", "mdpy", "-t", "mdpy-vga", "-u", U), 1,
             "Device exists under different parent",
             ("start", U, "mdpy", "mdpy-vga", fail, _config("mdpy-vga"))),
        Step(("start", "-p", "mtty", "--jsonfile", str(same), "-u", U), 1,
             "Device already exists", ("start", U, "mtty", "mtty-1", fail, mtty1)),
        Step(("start", "-p", "mtty", "--jsonfile", str(other_attrs), "-u", U), 1,
             "Device already exists",
             ("start", U, "mtty", "mtty-1", fail, _config("mtty-1", '[{"x":"1"}]'))),
        Step(("define", "-p", "mtty", "-t", "mtty-1", "-u", W), 0, "",
             ("define", W, "mtty", "mtty-1", "success", mtty1)),
        Step(("start", "-u", W), 0, "", ("start", W, "mtty", "mtty-1", "success", mtty1)),
        Step(("start", "-u", W), 1, "Device already exists",
             ("start", W, "mtty", "mtty-1", fail, mtty1)),
        Step(("start", "-p", "mtty", "-t", "mtty-1", "-u", W), 1, "Device already exists",
             ("start", W, "mtty", "mtty-1", fail, mtty1)),
        Step(("start", "-p", "mdpy", "-t", "mdpy-vga", "-u", W), 1,
             "Device exists under different parent",
             ("start", W, "mdpy", "mdpy-vga", fail, _config("mdpy-vga"))),
        # mdpy counts 4 instances at most: the fifth start is refused after `pre` too.
        *(
            Step(("start", "-p", "mdpy", "-t", "mdpy-vga", "-u", uuid), 0, "",
                 ("start", uuid, "mdpy", "mdpy-vga", "success", _config("mdpy-vga")))
            for uuid in MDPY[:4]
        ),
        Step(("start", "-p", "mdpy", "-t", "mdpy-vga", "-u", MDPY[4]), 1,
             "No available instances of mdpy-vga on mdpy",
             ("start", MDPY[4], "mdpy", "mdpy-vga", fail, _config("mdpy-vga"))),
        # Refused before any script, by mdevctl and by mdevd alike.
        Step(("define", "-p", "mtty", "-t", "mtty-1", "-u", W), 1,
             f"Device {W} on mtty already defined", None),
        Step(("undefine", "-u", X), 1, "No devices match the specified uuid", None),
        Step(("modify", "-u", X, "--auto"), 1, f"Mediated device {X} is not defined", None),
        Step(("modify", "-u", W, "--delattr", "--index", "5"), 1,
             "Attribute index 5 is invalid", None),
        Step(("stop", "-u", X), 1, f"Error removing device {X}", None),
        Step(("start", "-u", X), 1, "Device is insufficiently specified", None),
        Step(("start", "-t", "mtty-1", "-u", X), 1, "can't provide type without parent", None),
        # Last, one that runs the scripts: everything before it has been heard by then.
        Step(("stop", "-u", U), 0, "", ("stop", U, "mtty", "mtty-1", "success", mtty1)),
    ]  # fmt: skip


def _records(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def _calls(records: list[dict[str, Any]]) -> list[tuple[str, tuple[str, ...], str]]:
    # mdevd also asks version 1 scripts for their capabilities (mdevctl 1.3 does; 1.2 not).
    return [
        (r["script"], tuple(r["argv"]), r["stdin"])
        for r in records
        if "capabilities" not in r["argv"]
    ]


def _expected_calls(steps: list[Step]) -> list[tuple[str, tuple[str, ...], str]]:
    calls: list[tuple[str, tuple[str, ...], str]] = []
    for step in steps:
        if step.callouts is None:
            continue
        action, uuid, parent, type_id, state, config = step.callouts
        for script, event, event_state in (
            ("20-rec", "pre", "none"),
            ("20-rec", "post", state),
            ("n1", "notify", state),
        ):
            argv = ("-t", type_id, "-e", event, "-a", action, "-s", event_state, "-u", uuid)
            calls.append((script, (*argv, "-p", parent), config))
    return calls


def _error_line(stderr: str) -> str:
    # mdevctl also echoes the scripts' stderr, which mdevd logs instead (docs/mdevctl-compat.md)
    return next((line for line in stderr.splitlines() if line.startswith("Error:")), "")


def _jsonfiles() -> tuple[Path, Path]:
    directory = Path(tempfile.mkdtemp(dir="/tmp"))
    same, other = directory / "same.json", directory / "other-attrs.json"
    same.write_text(SAME)
    other.write_text(OTHER_ATTRS)
    return same, other


def _notified(log: Path, count: int) -> bool:
    notified: int = sum(r["script"] == "n1" for r in _records(log))
    return notified >= count


def _run_front_end(stack: CompatStack, steps: list[Step]) -> tuple[list[tuple[int, str]], Path]:
    log = Path(tempfile.mkdtemp(dir="/tmp")) / "calls"
    stack.dirs.callout("20-rec", scripts.recorder(log), where="etc")
    stack.dirs.notifier("n1", scripts.recorder(log), where="etc")
    results: list[tuple[int, str]] = []
    notified = 0
    for step in steps:
        done = stack.mdevctl(*step.argv)
        results.append((done.returncode, _error_line(done.stderr)))
        if step.callouts is not None:
            notified += 1
            # The daemon runs the notifiers in the background: wait for this command's.
            wait_until(
                functools.partial(_notified, log, notified), timeout=20, what=f"notify {step.argv}"
            )
    return results, log


def _wanted(steps: list[Step]) -> list[tuple[int, str]]:
    return [(s.returncode, f"Error: {s.error}" if s.error else "") for s in steps]


def test_a_start_of_a_running_device_runs_pre_post_and_notify(
    start_stack: StackFactory,
) -> None:
    steps = _steps(*_jsonfiles())
    stack = start_stack()
    results, log = _run_front_end(stack, steps)
    assert results == _wanted(steps)
    assert _calls(_records(log)) == _expected_calls(steps)
    # Run by the daemon (ap-check's lock must name it), not by the front end.
    assert {r["ppid"] for r in _records(log)} == {stack.daemon.process.pid}


@pytest.mark.skipif(REAL_MDEVCTL is None, reason="mdevctl is not installed")
def test_the_expectations_are_what_mdevctl_does() -> None:
    """The steps' answers and script calls above, checked against Debian's mdevctl."""
    steps = _steps(*_jsonfiles())
    config = Path(tempfile.mkdtemp(dir="/tmp"))
    # The log lives outside the directory mdevctl reads (it would warn about a non-UUID file).
    log = Path(tempfile.mkdtemp(dir="/tmp")) / "calls"
    for sub, name in (("callouts", "20-rec"), ("notifiers", "n1")):
        path = config / "scripts.d" / sub / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(scripts.recorder(log))
        path.chmod(0o755)
    with running_sim("default") as sim:
        done = run_reference(sim.root, config, [["mdevctl", *s.argv] for s in steps])
    assert [(r.returncode, _error_line(r.stderr)) for r in done] == _wanted(steps)
    assert _calls(_records(log)) == _expected_calls(steps)


def test_dbus_callers_keep_their_retry_safe_create(start_stack: StackFactory) -> None:
    """An identical CreateDevice of a running transient device still answers with the device
    (dbus-api.md rule 2) and asks no script: only mdevctl's start refuses it. Start of a
    running device is AlreadyActive, now after the scripts heard of it."""
    stack = start_stack()
    log = Path(tempfile.mkdtemp(dir="/tmp")) / "calls"
    stack.dirs.callout("20-rec", scripts.recorder(log), where="etc")
    stack.dirs.notifier("n1", scripts.recorder(log), where="etc")

    async def make_calls() -> tuple[str, str, str]:
        client = await Client.connect(stack.address)
        try:
            first = await client.create_device_path("mtty", "mtty-1", uuid=U)
            again = await client.create_device_path("mtty", "mtty-1", uuid=U)
            try:
                await client.start(U)
            except DaemonError as e:
                return first, again, e.short_name
            return first, again, "no error"
        finally:
            client.close()

    first, again, start_error = asyncio.run(make_calls())
    assert (again, start_error) == (first, "AlreadyActive")
    wait_until(functools.partial(_notified, log, 2), timeout=20, what="both notifications")
    calls = _calls(_records(log))
    # The create, then the refused Start; the retry asked nothing. Notifiers run in the
    # background, so theirs may come in either order.
    assert [c[1][3] + "/" + c[1][7] for c in calls if c[0] == "20-rec"] == [
        "pre/none", "post/success", "pre/none", "post/failure",
    ]  # fmt: skip
    assert sorted(c[1][7] for c in calls if c[0] == "n1") == ["failure", "success"]
    assert {c[2] for c in calls} == {_config("mtty-1")}
