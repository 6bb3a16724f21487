# SPDX-License-Identifier: LGPL-2.1-or-later
"""`mdevdctl` against the real daemon: every command, its output, its messages, its exit codes.

Exit status (mdevd/cli/mdevdctl.py): 0 ok, 1 the operation failed, 2 usage, 3 daemon unreachable,
4 not authorized, 5 no such device or parent.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mdevd.cli import mdevdctl
from tests.daemon.conftest import daemon_stack
from tests.daemon.harness import BusClient, in_sysfs, new_uuid
from tests.support.bus import private_bus, unprivileged_python
from tests.support.daemon import DaemonProcess
from tests.support.paths import REPO
from tests.support.sim import RunningSim
from tests.support.waiting import wait_until

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_NOT_AUTHORIZED, EXIT_NOT_FOUND = range(6)

COMMANDS = (
    "list",
    "types",
    "show",
    "create",
    "define",
    "undefine",
    "start",
    "stop",
    "persist",
    "modify",
    "monitor",
    "reload",
)


def ok(daemon: DaemonProcess, *args: str) -> str:
    result = daemon.ctl(*args)
    assert (result.returncode, result.stderr) == (EXIT_OK, ""), args
    return result.stdout


def fails(daemon: DaemonProcess, code: int, *args: str) -> str:
    """Run a command that must fail with `code`; its one-line message on stderr."""
    result = daemon.ctl(*args)
    assert result.returncode == code, (args, result.stdout, result.stderr)
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("mdevdctl: "), message
    return message


def _uuid_of(output: str) -> str:
    return output.strip()


# ---- help and usage -----------------------------------------------------------------------------


def test_help_everywhere(daemon: DaemonProcess, capsys: pytest.CaptureFixture[str]) -> None:
    top = ok(daemon, "--help")
    assert "usage: mdevdctl" in top and "Exit status" in top
    assert ok(daemon, "monitor", "--help").startswith("usage: mdevdctl monitor")
    # Every command's help, from the same code in this process (a program start each is slow).
    sigpipe = signal.getsignal(signal.SIGPIPE)
    for command in COMMANDS:
        assert command in top
        with pytest.raises(SystemExit) as exited:
            mdevdctl.main([command, "--help"])
        assert exited.value.code == EXIT_OK
        assert capsys.readouterr().out.startswith(f"usage: mdevdctl {command}"), command
    # Called as a function, it leaves the calling process's SIGPIPE alone (at its default, a
    # write to a closed socket would kill the test run itself).
    assert signal.getsignal(signal.SIGPIPE) == sigpipe


def test_usage_errors_exit_2(daemon: DaemonProcess) -> None:
    for args in (
        (),
        ("frobnicate",),
        ("create", "mtty"),
        ("create", "mtty", "mtty-1", "--attr", "no-equals-sign"),
        ("modify", new_uuid(), "--index", "x"),
    ):
        result = daemon.ctl(*args)
        assert result.returncode == EXIT_USAGE, args
        assert "usage: mdevdctl" in result.stderr
        assert "Traceback" not in result.stderr


def test_version(daemon: DaemonProcess) -> None:
    assert ok(daemon, "--version").startswith("mdevdctl ")


# ---- create, define, start, stop, undefine, persist, show ---------------------------------------


def test_create_show_and_stop(daemon: DaemonProcess, sim: RunningSim) -> None:
    uuid = new_uuid()
    assert _uuid_of(ok(daemon, "create", "mtty", "mtty-2", "--uuid", uuid)) == uuid
    assert in_sysfs(sim, uuid)
    shown = ok(daemon, "show", uuid)
    assert f"UUID:        {uuid}\n" in shown
    assert "Parent:      mtty\n" in shown and "Type:        mtty-2\n" in shown
    assert "Active:      yes\n" in shown and "Defined:     no\n" in shown
    assert "Sysfs path:  " in shown and "IOMMU group: " in shown
    data = json.loads(ok(daemon, "show", uuid, "--json"))
    assert (data["uuid"], data["active"], data["defined"], data["type"]) == (
        uuid,
        True,
        False,
        "mtty-2",
    )
    ok(daemon, "stop", uuid)
    assert not in_sysfs(sim, uuid)
    assert "[NotFound]" in fails(daemon, EXIT_NOT_FOUND, "show", uuid)


def test_create_without_a_uuid_prints_the_generated_one(
    daemon: DaemonProcess, sim: RunningSim
) -> None:
    uuid = _uuid_of(ok(daemon, "create", "mtty", "mtty-1"))
    assert in_sysfs(sim, uuid)
    ok(daemon, "stop", uuid)


def test_define_start_stop_undefine(daemon: DaemonProcess, sim: RunningSim) -> None:
    uuid = new_uuid()
    ok(daemon, "define", "par-a", "par-a-1", "-u", uuid, "--attr", "setting=1", "--autostart")
    shown = ok(daemon, "show", uuid)
    assert "Defined:     yes\n" in shown and "Autostart:   yes\n" in shown
    assert "Active:      no\n" in shown
    assert "  [0] setting = 1\n" in shown
    config_file = next(
        line.split(": ", 1)[1].strip() for line in shown.splitlines() if "Config file" in line
    )
    assert os.path.exists(config_file)
    ok(daemon, "start", uuid)
    assert in_sysfs(sim, uuid)
    ok(daemon, "stop", uuid)
    assert not in_sysfs(sim, uuid)
    ok(daemon, "undefine", uuid)
    assert not os.path.exists(config_file)
    fails(daemon, EXIT_NOT_FOUND, "show", uuid)


def test_define_with_start(daemon: DaemonProcess, sim: RunningSim) -> None:
    uuid = new_uuid()
    ok(daemon, "define", "mtty", "mtty-1", "--uuid", uuid, "--start")
    assert in_sysfs(sim, uuid)
    ok(daemon, "stop", uuid)


def test_persist_a_transient_device(daemon: DaemonProcess) -> None:
    uuid = new_uuid()
    ok(daemon, "create", "par-a", "par-a-2", "-u", uuid, "--attr", "setting=7")
    ok(daemon, "persist", uuid, "--autostart")
    data = json.loads(ok(daemon, "show", uuid, "--json"))
    assert (data["defined"], data["autostart"], data["active"]) == (True, True, True)
    assert data["attributes"] == [{"name": "setting", "value": "7"}]
    ok(daemon, "stop", uuid)
    ok(daemon, "undefine", uuid)


# ---- list and types -----------------------------------------------------------------------------


def test_list_with_filters_and_json(daemon: DaemonProcess) -> None:
    # par-b is this test's own parent in this module.
    active, defined, both = sorted((new_uuid(), new_uuid(), new_uuid()))
    ok(daemon, "create", "par-b", "par-b-1", "-u", active)
    ok(daemon, "define", "par-b", "par-b-1", "-u", defined, "--autostart")
    ok(daemon, "define", "par-b", "par-b-1", "-u", both, "--start")

    def uuids(*args: str) -> list[str]:
        return [line.split()[0] for line in ok(daemon, "list", "-p", "par-b", *args).splitlines()]

    lines = ok(daemon, "list", "-p", "par-b").splitlines()
    assert sorted(lines) == sorted(
        [
            f"{active} par-b par-b-1 manual (active)",
            f"{defined} par-b par-b-1 auto (defined)",
            f"{both} par-b par-b-1 manual (active, defined)",
        ]
    )
    assert sorted(uuids("--defined")) == sorted([defined, both])
    assert sorted(uuids("--active")) == sorted([active, both])
    assert uuids("--active", "--defined") == [both]
    assert uuids("-u", defined.upper()) == [defined]
    assert ok(daemon, "list", "-p", "no-such-parent") == ""
    everything = [line.split()[0] for line in ok(daemon, "list").splitlines()]
    assert {active, defined, both} <= set(everything)

    data = json.loads(ok(daemon, "list", "-p", "par-b", "--json"))
    assert sorted(d["uuid"] for d in data) == sorted([active, defined, both])
    entry = next(d for d in data if d["uuid"] == defined)
    assert entry == {
        "path": f"/org/mdevd/Mdevd1/devices/{defined.replace('-', '_')}",
        "uuid": defined,
        "parent": "par-b",
        "type": "par-b-1",
        "active": False,
        "defined": True,
        "autostart": True,
        "attributes": [],
        "sysfs_path": "",
        "iommu_group": -1,
        "config_file": str(daemon.devices_dir / f"{defined}.toml"),
        "last_error": "",
        "parent_object": "/org/mdevd/Mdevd1/parents/par_2db",
    }
    for uuid in (active, both):
        ok(daemon, "stop", uuid)
    for uuid in (defined, both):
        ok(daemon, "undefine", uuid)


def test_types(daemon: DaemonProcess, sim: RunningSim) -> None:
    text = ok(daemon, "types", "-p", "0000:65:00.0")
    lines = text.splitlines()
    assert lines[0] == "0000:65:00.0"
    assert "  nvidia-558" in lines
    assert "    Device API: vfio-pci" in lines
    assert "    Name: GRID T4-4Q" in lines
    every = ok(daemon, "types")
    registered = sorted(p.name for p in (sim.root / "class" / "mdev_bus").iterdir())
    assert [line for line in every.splitlines() if not line.startswith(" ")] == registered
    data = json.loads(ok(daemon, "types", "--json", "-p", "mtty"))
    assert [p["name"] for p in data] == ["mtty"]
    assert {t["type_id"] for t in data[0]["types"]} == {"mtty-1", "mtty-2"}
    available = int(
        (
            sim.root / "class/mdev_bus/mtty/mdev_supported_types/mtty-1/available_instances"
        ).read_text()
    )
    mtty_1 = next(t for t in data[0]["types"] if t["type_id"] == "mtty-1")
    assert mtty_1["available_instances"] == available


# ---- modify -------------------------------------------------------------------------------------


def test_modify(daemon: DaemonProcess, client: BusClient) -> None:
    def _attributes(daemon: DaemonProcess, uuid: str) -> list[tuple[str, str]]:
        return [(name, value) for name, value in client.device(uuid)["Attributes"]]

    uuid = new_uuid()
    ok(daemon, "define", "par-a", "par-a-1", "-u", uuid, "--attr", "setting=1", "--attr", "other=2")
    ok(daemon, "modify", uuid, "--add-attr", "other=5", "--index", "0")
    assert _attributes(daemon, uuid) == [("other", "5"), ("setting", "1"), ("other", "2")]
    ok(daemon, "modify", uuid, "--add-attr", "setting=9")
    assert _attributes(daemon, uuid)[-1] == ("setting", "9")
    ok(daemon, "modify", uuid, "--del-attr", "other", "--index", "2")
    assert _attributes(daemon, uuid) == [("other", "5"), ("setting", "1"), ("setting", "9")]
    ok(daemon, "modify", uuid, "--del-attr", "setting")
    assert _attributes(daemon, uuid) == [("other", "5")]
    ok(daemon, "modify", uuid, "--autostart", "--type", "par-a-2")
    device = client.device(uuid)
    assert (device["Autostart"], device["Type"]) == (True, "par-a-2")
    ok(daemon, "modify", uuid, "--no-autostart")
    assert client.device(uuid)["Autostart"] is False

    # Edits that make no sense are usage errors, before anything is sent.
    assert "--index 7" in fails(
        daemon, EXIT_USAGE, "modify", uuid, "--add-attr", "a=1", "--index", "7"
    )
    assert "'missing'" in fails(daemon, EXIT_USAGE, "modify", uuid, "--del-attr", "missing")
    fails(daemon, EXIT_USAGE, "modify", uuid, "--del-attr", "other", "--index", "3")
    fails(daemon, EXIT_USAGE, "modify", uuid)
    fails(daemon, EXIT_USAGE, "modify", uuid, "--index", "0")
    # A live change needs a running device.
    assert "[NotActive]" in fails(
        daemon, EXIT_FAILED, "modify", uuid, "--add-attr", "setting=3", "--live"
    )
    assert _attributes(daemon, uuid) == [("other", "5")]
    ok(daemon, "undefine", uuid)


def test_modify_live(daemon: DaemonProcess, sim: RunningSim) -> None:
    uuid = new_uuid()
    ok(
        daemon,
        "define",
        "matrix",
        "vfio_ap-passthrough",
        "-u",
        uuid,
        "--start",
        "--attr",
        "assign_adapter=0x51",
        "--attr",
        "assign_domain=0x51",
    )
    ok(daemon, "modify", uuid, "--add-attr", "assign_domain=0x52", "--live")
    matrix = sim.root / "bus/mdev/devices" / uuid / "matrix"
    assert matrix.read_text() == "51.0051\n51.0052\n"
    ok(daemon, "stop", uuid)
    ok(daemon, "undefine", uuid)


def test_modify_of_a_transient_device_is_not_defined(daemon: DaemonProcess) -> None:
    uuid = new_uuid()
    ok(daemon, "create", "mtty", "mtty-1", "-u", uuid)
    message = fails(daemon, EXIT_NOT_FOUND, "modify", uuid, "--autostart")
    assert "[NotDefined]" in message and uuid in message
    ok(daemon, "stop", uuid)


# ---- reload -------------------------------------------------------------------------------------


def test_reload() -> None:
    # Its own daemon, not watching its directory: a file it sees only on `reload` proves the
    # command (a watching daemon may pick the file up by itself first).
    with daemon_stack(config_text="[daemon]\nwatch_definitions = false\n") as stack:
        _reload_picks_up_a_new_file(stack.daemon)


def _reload_picks_up_a_new_file(daemon: DaemonProcess) -> None:
    uuid = new_uuid()
    path = daemon.devices_dir / f"by-hand-{uuid}.toml"
    path.write_text(f'[[device]]\nuuid = "{uuid}"\nparent = "mdpy"\ntype = "mdpy-vga"\n')
    fails(daemon, EXIT_NOT_FOUND, "show", uuid)
    ok(daemon, "reload")
    assert "Defined:     yes" in ok(daemon, "show", uuid)
    path.unlink()
    ok(daemon, "reload")


# ---- errors and their exit codes ----------------------------------------------------------------


def test_failures_have_a_message_naming_the_error(daemon: DaemonProcess) -> None:
    uuid = new_uuid()
    ok(daemon, "create", "mtty", "mtty-1", "-u", uuid)
    message = fails(daemon, EXIT_FAILED, "create", "mtty", "mtty-2", "-u", uuid)
    assert message.endswith("[Exists]") and uuid in message
    message = fails(daemon, EXIT_FAILED, "create", "mtty", "mtty-9")
    assert message.endswith("[TypeNotSupported]") and "mtty-9" in message
    message = fails(daemon, EXIT_FAILED, "start", uuid)
    assert message.endswith("[AlreadyActive]")
    message = fails(daemon, EXIT_FAILED, "create", "mtty", "mtty-1", "-u", "nonsense")
    assert message.endswith("[InvalidArgument]")
    ok(daemon, "stop", uuid)
    message = fails(daemon, EXIT_NOT_FOUND, "create", "0000:99:00.0", "nvidia-556")
    assert message.endswith("[ParentNotFound]")
    for command in ("show", "start", "stop", "undefine", "persist"):
        message = fails(daemon, EXIT_NOT_FOUND, command, new_uuid())
        assert message.endswith("[NotFound]"), command


def test_an_unreachable_daemon_exits_3(daemon: DaemonProcess) -> None:
    env = dict(daemon.env)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mdevd.cli.mdevdctl",
            "--address",
            "unix:path=/nonexistent/bus",
            "list",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == EXIT_UNREACHABLE
    assert result.stderr.startswith("mdevdctl: cannot connect to unix:path=/nonexistent/bus")
    with private_bus() as empty_bus:
        result = subprocess.run(
            [sys.executable, "-m", "mdevd.cli.mdevdctl", "--address", empty_bus, "list"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
    assert result.returncode == EXIT_UNREACHABLE
    assert "org.mdevd.Mdevd1" in result.stderr and "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def nobody_mdevdctl() -> Iterator[list[str]]:
    with unprivileged_python(("dbus_fast", "mdevd")) as python:
        yield [*python, "-m", "mdevd.cli.mdevdctl"]


def test_a_caller_that_is_not_root_exits_4(
    daemon: DaemonProcess, nobody_mdevdctl: list[str]
) -> None:
    def as_nobody(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*nobody_mdevdctl, "--address", daemon.address, *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd="/",
        )

    result = as_nobody("create", "mtty", "mtty-1")
    assert result.returncode == EXIT_NOT_AUTHORIZED, result.stderr
    assert result.stderr.strip().endswith("[NotAuthorized]")
    # Reading is for everyone.
    result = as_nobody("types", "-p", "mtty")
    assert (result.returncode, result.stdout.splitlines()[0]) == (EXIT_OK, "mtty")


# ---- monitor ------------------------------------------------------------------------------------


class Monitor:
    def __init__(self, daemon: DaemonProcess, *args: str) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mdevd.cli.mdevdctl",
                "--address",
                daemon.address,
                "monitor",
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=daemon.env,
        )
        assert self.process.stderr is not None
        ready = self.process.stderr.readline()
        assert ready.startswith("Monitoring"), ready

    def lines(self, count: int) -> list[str]:
        assert self.process.stdout is not None
        return [self.process.stdout.readline().rstrip("\n") for _ in range(count)]

    def stop(self) -> tuple[int, str]:
        self.process.send_signal(signal.SIGINT)
        _, stderr = self.process.communicate(timeout=30)
        return self.process.returncode, stderr


def test_monitor_prints_what_happens(daemon: DaemonProcess, sim: RunningSim) -> None:
    monitor = Monitor(daemon)
    uuid = new_uuid()
    path = f"/org/mdevd/Mdevd1/devices/{uuid.replace('-', '_')}"
    try:
        ok(daemon, "define", "mtty", "mtty-1", "-u", uuid)
        ok(daemon, "start", uuid)
        assert monitor.lines(3) == [
            f"object-added {path}",
            f"defined {uuid} reason=api",
            f"started {uuid} reason=api",
        ]
        (sim.root / "bus/mdev/devices" / uuid / "remove").write_text("1")  # another tool
        assert monitor.lines(1) == [f"stopped {uuid} reason=kernel"]
        ok(daemon, "undefine", uuid)
        assert monitor.lines(2) == [f"undefined {uuid} reason=api", f"object-removed {path}"]
    finally:
        code, stderr = monitor.stop()
    assert code == 130
    assert "Traceback" not in stderr


def test_monitor_json(daemon: DaemonProcess) -> None:
    monitor = Monitor(daemon, "--json")
    uuid = new_uuid()
    # mtty has no attribute x: the failed create must not show up at all.
    fails(daemon, EXIT_FAILED, "create", "mtty", "mtty-1", "-u", uuid, "--attr", "x=1")
    try:
        ok(daemon, "create", "mtty", "mtty-1", "-u", uuid)
        ok(daemon, "stop", uuid)
        events = [json.loads(line) for line in monitor.lines(4)]
    finally:
        monitor.stop()
    assert [(e["kind"], e["event"]) for e in events] == [
        ("added", ""),
        ("device-event", "started"),
        ("device-event", "stopped"),
        ("removed", ""),
    ]
    assert {e["uuid"] for e in events} == {uuid}
    assert events[1]["details"] == {"reason": "api"}


def test_monitor_ends_when_the_bus_goes_away() -> None:
    with private_bus() as address:
        process = subprocess.Popen(
            [sys.executable, "-m", "mdevd.cli.mdevdctl", "--address", address, "monitor"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        assert process.stderr is not None
        assert process.stderr.readline().startswith("Monitoring")
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == EXIT_UNREACHABLE
    assert stderr.startswith("mdevdctl: lost the connection to the bus")


def test_output_into_a_closed_pipe_ends_quietly(daemon: DaemonProcess, client: BusClient) -> None:
    monitor = Monitor(daemon)
    assert monitor.process.stdout is not None
    monitor.process.stdout.close()
    for _ in range(3):  # events to write into the closed pipe
        uuid = new_uuid()
        client.create_device("mtty", "mtty-1", uuid=uuid)
        client.stop(uuid)
    wait_until(lambda: monitor.process.poll() is not None, what="the monitor to end")
    assert monitor.process.returncode == -signal.SIGPIPE
    assert monitor.process.stderr is not None
    assert "Traceback" not in monitor.process.stderr.read()


def test_the_package_runs_as_a_program(daemon: DaemonProcess) -> None:
    # `mdevdctl` is the console script of mdevd.cli.mdevdctl:main; the module runs the same main.
    script = Path(sys.executable).with_name("mdevdctl")
    if script.exists():
        result = subprocess.run(
            [str(script), "--address", daemon.address, "types", "-p", "mtty"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert (result.returncode, result.stdout.splitlines()[0]) == (EXIT_OK, "mtty")
