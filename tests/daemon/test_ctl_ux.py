# SPDX-License-Identifier: LGPL-2.1-or-later
"""`mdevdctl` for the admin at 3 a.m., through the real daemon and the real CLI: the UUID it
chooses before calling, a client-side timeout that names that UUID (exit 6), a daemon that is
not running explained, and `monitor --timestamp` across a daemon restart.
"""

from __future__ import annotations

import datetime
import json
import re
import signal
import subprocess
import sys
import uuid as uuid_module
from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from tests.daemon.conftest import SCENARIO
from tests.daemon.harness import in_sysfs, new_uuid
from tests.support.bus import private_bus
from tests.support.daemon import DaemonProcess, running_daemon
from tests.support.sim import RunningSim, running_sim
from tests.support.waiting import wait_until

EXIT_OK, EXIT_UNREACHABLE, EXIT_TIMEOUT = 0, 3, 6
STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d"


def test_create_chooses_a_random_uuid(daemon: DaemonProcess, sim: RunningSim) -> None:
    result = daemon.ctl("create", "mtty", "mtty-1")
    assert (result.returncode, result.stderr) == (EXIT_OK, "")
    uuid = result.stdout.strip()
    assert uuid_module.UUID(uuid).version == 4 and in_sysfs(sim, uuid)
    assert daemon.ctl("stop", uuid).returncode == EXIT_OK


def test_a_timeout_names_the_uuid_and_the_retry_is_safe(
    daemon: DaemonProcess, sim: RunningSim
) -> None:
    sim.control.delay("create", 3)
    result = daemon.ctl("--timeout", "1", "create", "mtty", "mtty-1")
    assert result.returncode == EXIT_TIMEOUT, result.stderr
    assert result.stdout == "" and "Traceback" not in result.stderr
    found = re.search(
        r"^mdevdctl: no answer within 1 s; the device may have been created: UUID (\S+) ",
        result.stderr,
    )
    assert found, result.stderr
    # The client gave up, not the daemon: its Error.Timeout name is nowhere.
    assert "Timeout]" not in result.stderr and "Error.Timeout" not in result.stderr
    uuid = found[1]
    wait_until(lambda: in_sysfs(sim, uuid), what="the delayed create")
    sim.control.clear()
    retry = daemon.ctl("create", "mtty", "mtty-1", "--uuid", uuid)
    assert (retry.returncode, retry.stdout.strip()) == (EXIT_OK, uuid), retry.stderr
    listed = daemon.ctl("list", "--json").stdout
    assert [d["uuid"] for d in json.loads(listed)].count(uuid) == 1
    assert daemon.ctl("stop", uuid).returncode == EXIT_OK


def test_a_timeout_of_another_command_is_the_clients_own(
    daemon: DaemonProcess, sim: RunningSim
) -> None:
    uuid = new_uuid()
    assert daemon.ctl("define", "mtty", "mtty-1", "--uuid", uuid).returncode == EXIT_OK
    sim.control.delay("create", 3)
    result = daemon.ctl("--timeout", "1", "start", uuid)
    assert result.returncode == EXIT_TIMEOUT
    assert result.stderr.startswith("mdevdctl: no answer from mdevd within 1 s (--timeout)")
    assert "[Timeout]" not in result.stderr
    wait_until(lambda: in_sysfs(sim, uuid), what="the delayed start")
    sim.control.clear()
    for command in ("stop", "undefine"):
        assert daemon.ctl(command, uuid).returncode == EXIT_OK


def test_a_daemon_that_is_not_running_is_explained(daemon: DaemonProcess) -> None:
    with private_bus() as empty_bus:
        result = subprocess.run(
            [sys.executable, "-m", "mdevd.cli.mdevdctl", "--address", empty_bus, "list"],
            capture_output=True,
            text=True,
            env=daemon.env,
            timeout=60,
        )
    assert result.returncode == EXIT_UNREACHABLE
    assert result.stderr.startswith("mdevdctl: mdevd is not running: nobody owns org.mdevd.Mdevd1")
    assert "systemctl status mdevd" in result.stderr and "journalctl -u mdevd" in result.stderr
    result = daemon.ctl("--address", "unix:path=/nonexistent/bus", "list")
    assert result.returncode == EXIT_UNREACHABLE
    assert "systemctl status mdevd" in result.stderr and "Traceback" not in result.stderr


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
        assert self.process.stderr.readline().startswith("Monitoring")

    def line(self) -> str:
        assert self.process.stdout is not None
        return self.process.stdout.readline().rstrip("\n")

    def until(self, wanted: str) -> list[str]:
        """Lines up to and including the first that contains `wanted`."""
        lines = [self.line()]
        while wanted not in lines[-1]:
            assert lines[-1], f"the monitor ended before {wanted!r}: {lines}"
            lines.append(self.line())
        return lines

    def stop(self) -> int:
        self.process.send_signal(signal.SIGINT)
        self.process.communicate(timeout=30)
        return self.process.returncode


def _stamp(line: str) -> datetime.datetime:
    assert re.match(STAMP + " ", line), line
    return datetime.datetime.fromisoformat(line.split(" ", 1)[0])


def test_monitor_timestamps(daemon: DaemonProcess, sim: RunningSim) -> None:
    text, as_json = Monitor(daemon, "--timestamp"), Monitor(daemon, "--timestamp", "--json")
    uuid = new_uuid()
    try:
        assert daemon.ctl("create", "mtty", "mtty-1", "--uuid", uuid).returncode == EXIT_OK
        lines = text.until(f"started {uuid}")
        record = json.loads(as_json.until('"added"')[-1])
    finally:
        text.stop()
        as_json.stop()
        daemon.ctl("stop", uuid)
    now = datetime.datetime.now().astimezone()
    for line in lines:
        stamp = _stamp(line)
        assert stamp.utcoffset() == now.utcoffset()  # local time, with its offset
        assert abs((now - stamp).total_seconds()) < 60
    assert lines[-1].endswith(f" started {uuid} reason=api")
    assert re.fullmatch(STAMP, record["timestamp"]) and record["uuid"] == uuid


@pytest.fixture(scope="module")
def restartable() -> Iterator[tuple[str, RunningSim]]:
    with private_bus() as address, running_sim(SCENARIO) as sim:
        yield address, sim


def test_monitor_keeps_running_across_a_daemon_restart(
    restartable: tuple[str, RunningSim],
) -> None:
    address, sim = restartable
    with ExitStack() as stack:
        first = stack.enter_context(running_daemon(address, sim.root))
        monitor = Monitor(first, "--timestamp")
        try:
            first.stop()
            assert monitor.until("daemon-stopped")[-1].endswith(" daemon-stopped")
            second = stack.enter_context(running_daemon(address, sim.root, [first.devices_dir]))
            assert re.search(r" daemon-started owner=:\S+$", monitor.until("daemon-started")[-1])
            uuid = new_uuid()
            assert second.ctl("create", "mtty", "mtty-1", "--uuid", uuid).returncode == EXIT_OK
            assert monitor.until(f"started {uuid}")[-1].endswith(f"started {uuid} reason=api")
            assert monitor.process.poll() is None
        finally:
            assert monitor.stop() == 130
