# SPDX-License-Identifier: LGPL-2.1-or-later
"""Callouts and notifiers with mdevctl's protocol, around every operation (part 3).

The scripts are written for the tests (tests/compat/scripts.py); one of them speaks s390's
ap-check protocol, lock file included. The protocol itself is compared with what Debian's
real mdevctl does with the same recording script.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mdevd.client import Client, DaemonError
from tests.compat import scripts
from tests.compat.conftest import CompatDirs, CompatStack, StackFactory
from tests.compat.reference import REAL_MDEVCTL, run_reference
from tests.support.sim import running_sim
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(240, method="thread")

U1 = "976d8cc2-4bfc-43b9-b9f9-f4af2de91ab9"
A = "a1111111-2222-4333-8444-555555555555"
B = "b1111111-2222-4333-8444-555555555555"
C = "c1111111-2222-4333-8444-555555555555"
D = "d1111111-2222-4333-8444-555555555555"
AP = "vfio_ap-passthrough"


def _records(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def _client_call(stack: CompatStack, method: str, *args: object, **kwargs: object) -> Any:
    """A `Client` method's result (whatever that method returns)."""

    async def run() -> Any:
        client = await Client.connect(stack.address)
        try:
            return await getattr(client, method)(*args, **kwargs)
        finally:
            client.close()

    return asyncio.run(run())


def _ap_config(start: str, adapters: list[int], domains: list[int]) -> str:
    attrs = [{"assign_adapter": str(a)} for a in adapters]
    attrs += [{"assign_domain": str(d)} for d in domains]
    return json.dumps({"mdev_type": AP, "start": start, "attrs": attrs})


# ---- the protocol, against the real mdevctl -------------------------------------------------

_SEQUENCE = [
    ["mdevctl", "start", "-p", "mtty", "-t", "mtty-1", "-u", U1],
    ["mdevctl", "define", "-u", U1],
    ["mdevctl", "modify", "-u", U1, "--auto"],
    ["mdevctl", "stop", "-u", U1],
    ["mdevctl", "undefine", "-u", U1],
    ["VETO"],
    ["mdevctl", "define", "-u", U1, "-p", "mtty", "-t", "mtty-2"],
    ["mdevctl", "start", "-p", "mtty", "-t", "mtty-2", "-u", U1],
]


def _invocations(log: Path) -> list[dict[str, Any]]:
    """One record per run of the ap-check script (not its lock events)."""
    return [r for r in _records(log) if "locked" not in r and "contention" not in r]


def _notified(log: Path, count: int) -> Callable[[], bool]:
    return lambda: sum(r["script"] == "n1" for r in _records(log)) == count


def _comparable(record: dict[str, Any]) -> tuple[str, tuple[str, ...], str]:
    return record["script"], tuple(record["argv"]), record["stdin"]


@pytest.mark.skipif(REAL_MDEVCTL is None, reason="mdevctl is not installed")
def test_scripts_see_what_mdevctls_scripts_see(start_stack: StackFactory) -> None:
    # The real mdevctl, with the recorder as its admin callout and notifier.
    reference = Path(tempfile.mkdtemp(dir="/tmp"))
    reference_log = reference / "log" / "calls"
    reference_log.parent.mkdir()
    for sub, name in (("callouts", "10-other"), ("callouts", "20-rec"), ("notifiers", "n1")):
        path = reference / "scripts.d" / sub / name
        path.parent.mkdir(parents=True, exist_ok=True)
        claims = ("nothing",) if name == "10-other" else ()
        path.write_text(scripts.recorder(reference_log, claims))
        path.chmod(0o755)
    veto = ["sh", "-c", f"echo 1 > {reference_log.parent / 'veto'}"]
    with running_sim("default") as sim:
        expected = run_reference(
            sim.root, reference, [veto if c == ["VETO"] else c for c in _SEQUENCE]
        )

    stack = start_stack()
    log = stack.dirs.root / "log" / "calls"
    log.parent.mkdir()
    stack.dirs.callout("10-other", scripts.recorder(log, ("nothing",)), where="etc")
    stack.dirs.callout("20-rec", scripts.recorder(log), where="etc")
    stack.dirs.notifier("n1", scripts.recorder(log), where="etc")
    operations = 0
    for command, want in zip(_SEQUENCE, expected, strict=True):
        if command == ["VETO"]:
            (log.parent / "veto").write_text("1")
            continue
        got = stack.mdevctl(*command[1:])
        operations += 1
        assert (got.returncode, got.stdout) == (want.returncode, want.stdout), (command, got)
        if want.returncode != 0:
            # A veto: the script's stderr, then mdevctl's error. (On success mdevctl also
            # echoes scripts' stderr; mdevd logs it instead.)
            assert got.stderr.replace(str(stack.dirs.mdevctl), "/etc/mdevctl.d") == want.stderr
        # Notifiers run in the background in the daemon: wait for this command's.
        wait_until(_notified(log, operations), timeout=20, what="the notifier")

    ours = _records(log)
    theirs = _records(reference_log)
    # mdevd speaks callout protocol version 2 (mdevctl 1.3): it first asks for capabilities,
    # which the real mdevctl 1.2 does not; a script without them answers nothing.
    ours_callouts = [
        _comparable(r) for r in ours
        if r["script"] != "n1" and "capabilities" not in r["argv"]
    ]  # fmt: skip
    theirs_callouts = [_comparable(r) for r in theirs if r["script"] != "n1"]
    assert ours_callouts == theirs_callouts
    assert sorted(_comparable(r) for r in ours if r["script"] == "n1") == sorted(
        _comparable(r) for r in theirs if r["script"] == "n1"
    )
    # Executed directly by the daemon (no shell in between): the parent is the daemon.
    assert {r["ppid"] for r in ours} == {stack.daemon.process.pid}


# ---- ap-check's protocol --------------------------------------------------------------------


def _ap_stack(start_stack: StackFactory, dirs: CompatDirs) -> tuple[CompatStack, Path, Path]:
    lock = dirs.root / "s390apconfig.lock"
    log = dirs.root / "ap-check.log"
    stack = start_stack()
    dirs.callout("ap-check", scripts.ap_check(lock, dirs.mdevctl, stack.sim.root, log))
    return stack, lock, log


def test_an_ap_check_callout_vetoes_a_conflicting_define(
    start_stack: StackFactory, dirs: CompatDirs
) -> None:
    stack, lock, log = _ap_stack(start_stack, dirs)
    define = ("define", "-p", "matrix", "--jsonfile", "/dev/stdin", "-u")
    done = stack.mdevctl(*define, A, stdin=_ap_config("auto", [5], [4]))
    assert done.returncode == 0, done.stderr
    assert stack.file("matrix", A).exists()
    assert not lock.exists()  # post released it

    conflict = stack.mdevctl(*define, B, stdin=_ap_config("auto", [5, 6], [4]))
    script = dirs.scripts / "callouts" / "ap-check"
    assert (conflict.returncode, conflict.stdout, conflict.stderr) == (
        1,
        "",
        f"ap-check: APQN 5.4 is defined for autostart by {A}\n"
        f'Error: callout script "{script}" failed with return code 1\n',
    )
    assert not stack.file("matrix", B).exists()
    assert not lock.exists()
    with pytest.raises(DaemonError) as refused:
        _client_call(stack, "device", B)
    assert refused.value.short_name == "NotFound"

    # The same refusal reaches a D-Bus client with its own name and the script's words.
    with pytest.raises(DaemonError) as vetoed:
        _client_call(
            stack, "define_device", "matrix", AP, uuid=B, autostart=True,
            attributes=[("assign_adapter", "5"), ("assign_domain", "4")],
        )  # fmt: skip
    assert vetoed.value.name == "org.mdevd.Mdevd1.Error.Vetoed"
    assert f"APQN 5.4 is defined for autostart by {A}" in vetoed.value.message
    assert str(script) in vetoed.value.message

    good = stack.mdevctl(*define, C, stdin=_ap_config("auto", [6], [4]))
    assert good.returncode == 0, good.stderr
    forced = stack.mdevctl(*define, B, "--force", stdin=_ap_config("auto", [5], [4]))
    assert forced.returncode == 0, forced.stderr
    assert stack.file("matrix", B).exists()

    calls = _records(log)
    daemon = stack.daemon.process.pid
    # The lock recorded the daemon's PID: ap-check was executed by the daemon itself.
    assert {c["locked"] for c in calls if "locked" in c} == {str(daemon)}
    assert {c["ppid"] for c in calls} == {daemon}
    pre = [c["uuid"] for c in calls if c["event"] == "pre" and "locked" in c]
    post = [c["uuid"] for c in _invocations(log) if c["event"] == "post"]
    assert pre == [A, B, B, C, B]
    # A vetoed pre released its lock itself and gets no post; every other pre gets one (the
    # forced define too).
    assert post == [A, C, B]


def test_one_transaction_per_type_at_a_time(start_stack: StackFactory, dirs: CompatDirs) -> None:
    stack, lock, log = _ap_stack(start_stack, dirs)
    done = stack.mdevctl("start", "-p", "matrix", "-t", AP, "-u", D)
    assert done.returncode == 0, done.stderr
    Path(f"{log}.slow").touch()  # each holder keeps ap-check's lock for half a second

    async def at_once() -> None:
        client = await Client.connect(stack.address)
        try:
            # Defines and `get attributes` (mdevctl's list) of one type, all at once: each would
            # find ap-check's lock held by the daemon's PID and wait for it, were they not
            # serialized.
            await asyncio.gather(
                *(
                    client.define_device(
                        "matrix",
                        AP,
                        uuid=f"{n:08x}-2222-4333-8444-555555555555",
                        attributes=[("assign_adapter", str(n)), ("assign_domain", "1")],
                        autostart=True,
                    )
                    for n in range(1, 4)
                ),
                *(client.query_attributes(D) for _ in range(3)),
            )
        finally:
            client.close()

    asyncio.run(at_once())
    calls = _records(log)
    assert [c for c in calls if "contention" in c] == []
    assert sum("locked" in c for c in calls) == 1 + 3 + 3  # D's start, 3 defines, 3 gets
    assert not lock.exists()


def test_get_attributes_fills_a_definition_of_a_running_device(
    start_stack: StackFactory, dirs: CompatDirs
) -> None:
    stack, lock, log = _ap_stack(start_stack, dirs)
    done = stack.mdevctl("start", "-p", "matrix", "-t", AP, "-u", D)
    assert done.returncode == 0, done.stderr
    # An admin assigns an adapter and a domain in sysfs, behind mdevd's back (write-only
    # attributes: only ap-check, reading `matrix`, can tell).
    device = stack.sim.root / "bus/mdev/devices" / D
    for name, value in (("assign_adapter", b"7"), ("assign_domain", b"0x8")):
        fd = os.open(device / name, os.O_WRONLY)
        try:
            os.write(fd, value)
        finally:
            os.close(fd)
    listed = stack.mdevctl("list", "--dumpjson", "-u", D)
    assert json.loads(listed.stdout)["attrs"] == [{"assign_adapter": "7"}, {"assign_domain": "8"}]

    done = stack.mdevctl("define", "-u", D)
    assert done.returncode == 0, done.stderr
    assert json.loads(stack.file("matrix", D).read_text()) == {
        "mdev_type": AP,
        "start": "manual",
        "attrs": [{"assign_adapter": "7"}, {"assign_domain": "8"}],
    }
    device_info = _client_call(stack, "device", D)
    assert device_info.attributes == (("assign_adapter", "7"), ("assign_domain", "8"))
    define_pre = next(
        c for c in _invocations(log) if c["event"] == "pre" and c["action"] == "define"
    )
    assert define_pre["uuid"] == D
    assert not lock.exists()


def test_post_runs_after_a_failed_operation_and_autostart_has_callouts(
    start_stack: StackFactory, dirs: CompatDirs
) -> None:
    stack, lock, log = _ap_stack(start_stack, dirs)
    # Domain 300 is above the highest the driver takes: the kernel refuses the attribute.
    config = _ap_config("auto", [5], [300])
    done = stack.mdevctl("define", "-p", "matrix", "--jsonfile", "/dev/stdin", "-u", A,
                         stdin=config)  # fmt: skip
    assert done.returncode == 0, done.stderr
    started = stack.mdevctl("start", "-u", A)
    assert started.returncode == 1
    assert "Failed to write 300 to attribute assign_domain" in started.stderr
    calls = [(c["event"], c["action"]) for c in _invocations(log) if c["uuid"] == A]
    assert calls[-2:] == [("pre", "start"), ("post", "start")]
    assert not lock.exists()

    # Autostart (the parent re-registers) goes through the same callouts.
    done = stack.mdevctl("modify", "-u", A, "--delattr")
    assert done.returncode == 0, done.stderr
    before = len(_invocations(log))
    stack.sim.control.unregister("matrix")
    stack.sim.control.register("matrix")
    wait_until(
        lambda: (stack.sim.root / "bus/mdev/devices" / A).exists(), timeout=20, what="autostart"
    )

    def autostart() -> list[tuple[str, str]]:
        return [(c["event"], c["action"]) for c in _invocations(log)[before:] if c["uuid"] == A]

    wait_until(lambda: ("post", "start") in autostart(), timeout=20, what="the autostart's post")
    assert autostart() == [("pre", "start"), ("post", "start")], stack.daemon.log()
    assert not lock.exists()


def test_callout_order_not_mine_notifiers_and_timeouts(
    start_stack: StackFactory, dirs: CompatDirs
) -> None:
    config = dirs.root / "mdevd.toml"
    config.write_text("[mdevctl]\ncallout_timeout = 3\n")
    stack = start_stack(daemon_args=("--config", str(config)))
    log = dirs.root / "calls.log"
    # The packaged directory first, then the admin's; sorted; 2 means "ask the next one".
    dirs.callout("10-not-mine", scripts.recorder(log, ("nothing",)))
    dirs.callout("20-mine", scripts.recorder(log))
    dirs.callout("10-admin", scripts.recorder(log), where="etc")
    (dirs.scripts / "callouts" / "15-not-executable").write_text("not a program\n")
    dirs.notifier("n1", scripts.recorder(log))
    done = stack.mdevctl("start", "-p", "mtty", "-t", "mtty-1", "-u", U1)
    assert (done.returncode, done.stderr) == (0, ""), done.stderr  # scripts' stderr: the log
    wait_until(
        lambda: any(r["script"] == "n1" for r in _records(log)), timeout=20, what="the notifier"
    )
    calls = [(r["script"], r["argv"][3], r["argv"][5]) for r in _records(log)
             if "capabilities" not in r["argv"]]  # fmt: skip
    assert calls == [
        ("10-not-mine", "pre", "start"),
        ("20-mine", "pre", "start"),
        ("20-mine", "post", "start"),  # post goes to the script that answered pre
        ("n1", "notify", "start"),
    ]
    notify = next(r for r in _records(log) if r["script"] == "n1")
    assert notify["argv"][6:8] == ["-s", "success"]
    assert json.loads(notify["stdin"]) == {"mdev_type": "mtty-1", "start": "manual", "attrs": []}

    # A script that does not answer in time is killed; the operation fails, the daemon lives.
    slow = dirs.callout("05-slow", f"#!{sys.executable}\nimport time\ntime.sleep(60)\n")
    began = time.monotonic()
    stop = stack.mdevctl("stop", "-u", U1)
    assert stop.returncode == 1 and "did not answer within 3 s" in stop.stderr, stop
    assert time.monotonic() - began < 40
    slow.unlink()
    assert stack.mdevctl("stop", "-u", U1).returncode == 0


def test_a_version_2_script_applies_live_changes(
    start_stack: StackFactory, dirs: CompatDirs
) -> None:
    stack = start_stack()
    log = dirs.root / "v2.log"
    dirs.callout("v2", scripts.versioned(log, AP))
    dirs.callout("v1", scripts.recorder(dirs.root / "v1.log"))
    done = stack.mdevctl("start", "-p", "matrix", "-t", AP, "-u", D)
    assert done.returncode == 0, done.stderr
    # mdevd's own write would fail: success shows that the script applied the change.
    stack.sim.control.fault_attribute(D, "assign_adapter", "EIO")
    payload = _ap_config("manual", [3], [4])
    done = stack.mdevctl("modify", "-u", D, "-p", "matrix", "--live", "--jsonfile", "/dev/stdin",
                         stdin=payload)  # fmt: skip
    assert done.returncode == 0, done.stderr
    live = [r for r in _records(log) if r["argv"][3] == "live"]
    assert [r["argv"][5] for r in live] == ["modify"]
    assert json.loads(live[0]["stdin"])["attrs"] == [
        {"assign_adapter": "3"},
        {"assign_domain": "4"},
    ]
    # A version 2 script handles the type alone: the version 1 script is never asked.
    assert all("capabilities" in r["argv"] for r in _records(dirs.root / "v1.log"))

    dirs.callout("v2", scripts.versioned(log, AP, live=False))
    refused = stack.mdevctl("modify", "-u", D, "-p", "matrix", "--live", "--jsonfile",
                            "/dev/stdin", stdin=payload)  # fmt: skip
    assert refused.returncode == 1 and "does not support live changes" in refused.stderr
