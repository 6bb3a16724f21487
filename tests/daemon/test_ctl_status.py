# SPDX-License-Identifier: LGPL-2.1-or-later
"""What the admin at 3 a.m. sees, through the real daemon and the real CLI: `mdevdctl status`
and its exit status, and the failed, waiting and pending-change devices in `list` and `show`,
each with the command that deals with it, which then does.

The tests of this module share one daemon; each leaves it as it found it (nothing needing
attention), since `status` sums up the whole daemon.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from mdevd import __version__
from tests.daemon.harness import in_sysfs, new_uuid
from tests.support.bus import private_bus
from tests.support.daemon import DaemonProcess
from tests.support.sim import RunningSim
from tests.support.waiting import wait_until

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
EXIT_STATUS_FAILED, EXIT_STATUS_ATTENTION = 7, 8
#: A parent of the scenario that is not registered at mount time (tests/daemon/scenario.toml).
ABSENT_PARENT = "0000:66:00.0"


def ok(daemon: DaemonProcess, *args: str) -> str:
    result = daemon.ctl(*args)
    assert (result.returncode, result.stderr) == (EXIT_OK, ""), (args, result.stderr)
    return result.stdout


def status(daemon: DaemonProcess, *args: str) -> tuple[int, str]:
    result = daemon.ctl("status", *args)
    assert result.stderr == "" and "Traceback" not in result.stderr, result.stderr
    return result.returncode, result.stdout


def status_json(daemon: DaemonProcess) -> tuple[int, dict[str, Any]]:
    code, out = status(daemon, "--json")
    data: dict[str, Any] = json.loads(out)
    return code, data


def attention_lines(text: str) -> list[str]:
    """The lines of status's "Needs attention:" block."""
    if "Needs attention:\n" not in text:
        return []
    block = text.split("Needs attention:\n", 1)[1].split("\n\n", 1)[0]
    return block.splitlines()


def list_line(daemon: DaemonProcess, uuid: str) -> str:
    (line,) = ok(daemon, "list", "-u", uuid).splitlines()
    return line


def show_fields(daemon: DaemonProcess, uuid: str) -> dict[str, str]:
    """`show`'s `Name:  value` lines as a dictionary."""
    fields = {}
    for line in ok(daemon, "show", uuid).splitlines():
        name, sep, value = line.partition(":")
        if sep and not line.startswith(" "):
            fields[name] = value.strip()
    return fields


@pytest.fixture
def quiet(daemon: DaemonProcess) -> Iterator[DaemonProcess]:
    """The module's daemon, checked to need no attention before and after the test."""
    assert status(daemon)[0] == EXIT_OK, status(daemon)[1]
    yield daemon
    assert status(daemon)[0] == EXIT_OK, status(daemon)[1]


def test_nothing_needs_attention(quiet: DaemonProcess, sim: RunningSim) -> None:
    uuid = new_uuid()
    ok(quiet, "define", "mtty", "mtty-1", "-u", uuid, "--autostart", "--start")
    try:
        code, text = status(quiet)
        assert code == EXIT_OK
        lines = text.splitlines()
        assert lines[0] == f"mdevd {__version__} answers on org.mdevd.Mdevd1."
        assert re.fullmatch(
            r"Devices: (\d+) in all; (\d+) defined, (\d+) active, (\d+) autostart; "
            r"0 waiting, 0 failed, 0 with pending changes\.",
            lines[1],
        ), lines[1]
        assert "Nothing needs attention." in lines
        available = {
            type_id: int(
                (sim.root / "class/mdev_bus/mtty/mdev_supported_types" / type_id)
                .joinpath("available_instances")
                .read_text()
            )
            for type_id in ("mtty-1", "mtty-2")
        }
        assert (
            f"  mtty: mtty-1 {available['mtty-1']} available, "
            f"mtty-2 {available['mtty-2']} available"
        ) in lines
        registered = sorted(p.name for p in (sim.root / "class" / "mdev_bus").iterdir())
        parents = [line.strip().partition(": ")[0] for line in lines[lines.index("Parents:") + 1 :]]
        assert parents == registered and ABSENT_PARENT not in parents

        code, data = status_json(quiet)
        assert code == EXIT_OK
        assert (data["schema"], data["state"], data["attention"]) == (1, "ok", [])
        assert data["daemon"] == {"version": __version__}
        counts = data["counts"]
        assert counts["failed"] == counts["waiting"] == counts["pending_changes"] == 0
        assert counts["active"] >= 1 and counts["defined"] >= 1
        assert list_line(quiet, uuid).endswith("auto (active, defined)")  # no marker
        assert show_fields(quiet, uuid)["Status"] == "active"
    finally:
        ok(quiet, "stop", uuid)
        ok(quiet, "undefine", uuid)


def test_a_failed_start_is_exit_7_with_its_error_and_the_retry(quiet: DaemonProcess) -> None:
    uuid = new_uuid()
    # par-a's `setting` takes digits only: the kernel refuses the write, the start fails.
    ok(quiet, "define", "par-a", "par-a-1", "-u", uuid, "--attr", "setting=abc", "--autostart")
    try:
        start = quiet.ctl("start", uuid)
        assert start.returncode == EXIT_FAILED and "[AttributeRejected]" in start.stderr
        last_error = show_fields(quiet, uuid)["Last error"]
        assert last_error.startswith("AttributeRejected: ") and uuid in last_error

        code, text = status(quiet)
        assert code == EXIT_STATUS_FAILED
        assert attention_lines(text) == [
            f"  {uuid} failed: {last_error}",
            f"    retry: mdevdctl start {uuid}",
        ]
        assert ", 1 failed, " in text
        assert list_line(quiet, uuid) == f"{uuid} par-a par-a-1 auto (defined) [failed]"
        fields = show_fields(quiet, uuid)
        assert (fields["Status"], fields["Retry with"]) == ("failed", f"mdevdctl start {uuid}")

        code, data = status_json(quiet)
        assert (code, data["state"]) == (EXIT_STATUS_FAILED, "failed")
        (item,) = data["attention"]
        assert (item["uuid"], item["reason"], item["command"]) == (
            uuid,
            "failed",
            f"mdevdctl start {uuid}",
        )
        assert item["device"]["status"] == "failed"
        assert item["device"]["last_error"] == last_error

        # The retry it suggests, once the definition is fixed, clears it.
        ok(quiet, "modify", uuid, "--del-attr", "setting")
        ok(quiet, "start", uuid)
        assert list_line(quiet, uuid).endswith("(active, defined)")
        assert "Last error" not in show_fields(quiet, uuid)
    finally:
        quiet.ctl("stop", uuid)
        ok(quiet, "undefine", uuid)


def test_a_device_waiting_for_its_parent_is_exit_8_until_the_parent_comes(
    quiet: DaemonProcess, sim: RunningSim
) -> None:
    uuid = new_uuid()
    ok(quiet, "define", ABSENT_PARENT, "nvidia-556", "-u", uuid, "--autostart")
    try:
        code, text = status(quiet)
        assert code == EXIT_STATUS_ATTENTION
        assert attention_lines(text) == [
            f"  {uuid} waiting for parent {ABSENT_PARENT} "
            "(autostart: it starts when the parent appears)"
        ]
        assert "; 1 waiting, " in text
        assert list_line(quiet, uuid).endswith("auto (defined) [waiting]")
        assert show_fields(quiet, uuid)["Status"].startswith(f"waiting for parent {ABSENT_PARENT}")
        code, data = status_json(quiet)
        assert (code, data["state"]) == (EXIT_STATUS_ATTENTION, "attention")
        assert [(a["reason"], a["command"]) for a in data["attention"]] == [("waiting", "")]

        sim.control.register(ABSENT_PARENT)
        try:
            wait_until(lambda: in_sysfs(sim, uuid), what="the autostart")
            wait_until(lambda: status(quiet)[0] == EXIT_OK, what="status to say so")
            assert list_line(quiet, uuid).endswith("auto (active, defined)")
            ok(quiet, "stop", uuid)
        finally:
            sim.control.unregister(ABSENT_PARENT)
    finally:
        ok(quiet, "undefine", uuid)


def test_a_pending_type_change_names_the_restart_that_applies_it(
    quiet: DaemonProcess, sim: RunningSim
) -> None:
    uuid = new_uuid()
    ok(quiet, "define", "mtty", "mtty-1", "-u", uuid, "--start")
    try:
        ok(quiet, "modify", uuid, "--type", "mtty-2")  # the definition only: mtty-1 runs on
        command = f"mdevdctl stop {uuid} && mdevdctl start {uuid}"
        assert list_line(quiet, uuid) == f"{uuid} mtty mtty-1 manual (active, defined) [pending]"
        fields = show_fields(quiet, uuid)
        assert (fields["Type"], fields["Status"]) == ("mtty-1", "active")
        assert fields["Pending"] == "defined as type mtty-2, running as mtty-1"
        assert fields["Apply with"] == command
        code, text = status(quiet)
        assert code == EXIT_STATUS_ATTENTION
        assert attention_lines(text) == [
            f"  {uuid} pending change: defined as type mtty-2, running as mtty-1",
            f"    apply: {command}",
        ]
        shown = json.loads(ok(quiet, "show", uuid, "--schema", "1"))["device"]
        assert shown["pending_changes"] == {"type": "mtty-2", "apply": "restart"}

        for step in command.split(" && "):
            ok(quiet, *step.split()[1:])
        assert (sim.root / "bus/mdev/devices" / uuid / "mdev_type").resolve().name == "mtty-2"
        assert list_line(quiet, uuid) == f"{uuid} mtty mtty-2 manual (active, defined)"
        assert "Pending" not in show_fields(quiet, uuid)
    finally:
        ok(quiet, "stop", uuid)
        ok(quiet, "undefine", uuid)


def test_a_pending_attribute_change_is_applied_by_modify_live(
    quiet: DaemonProcess, sim: RunningSim
) -> None:
    uuid = new_uuid()
    ok(quiet, "define", "par-a", "par-a-1", "-u", uuid, "--attr", "setting=1", "--start")
    try:
        ok(quiet, "modify", uuid, "--add-attr", "other=2")  # not --live: the device lags
        fields = show_fields(quiet, uuid)
        assert fields["Pending"] == (
            "defined attributes (setting=1 other=2) not written to the running device"
        )
        assert fields["Apply with"] == f"mdevdctl modify {uuid} --live"
        assert list_line(quiet, uuid).endswith("[pending]")
        assert status(quiet)[0] == EXIT_STATUS_ATTENTION

        # The command writes to the device: a kernel that refuses the write makes it fail,
        # and the change stays pending.
        sim.control.fault_attribute(uuid, "other", "EIO")
        refused = quiet.ctl("modify", uuid, "--live")
        assert refused.returncode == EXIT_FAILED, refused.stderr
        assert "Apply with" in show_fields(quiet, uuid)
        ok(quiet, "modify", uuid, "--live")
        assert "Pending" not in show_fields(quiet, uuid)
        assert not list_line(quiet, uuid).endswith("]")
        # Alone, --live changes nothing in the definition.
        assert json.loads(ok(quiet, "show", uuid, "--schema", "1"))["device"]["attributes"] == [
            {"name": "setting", "value": "1"},
            {"name": "other", "value": "2"},
        ]
    finally:
        ok(quiet, "stop", uuid)
        ok(quiet, "undefine", uuid)


def test_status_without_a_daemon_is_the_not_running_hint(daemon: DaemonProcess) -> None:
    with private_bus() as empty_bus:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "mdevd.cli.mdevdctl",
                "--address",
                empty_bus,
                "status",
                "--json",
            ],
            capture_output=True,
            text=True,
            env=daemon.env,
            timeout=60,
        )
    assert (result.returncode, result.stdout) == (EXIT_UNREACHABLE, "")
    assert result.stderr.startswith("mdevdctl: mdevd is not running")
    assert "systemctl status mdevd" in result.stderr


def test_status_has_schema_1_only(daemon: DaemonProcess) -> None:
    assert daemon.ctl("status", "--schema", "0").returncode == EXIT_USAGE
    code, out = status(daemon, "--schema", "1")
    assert json.loads(out)["schema"] == 1 and code == EXIT_OK
