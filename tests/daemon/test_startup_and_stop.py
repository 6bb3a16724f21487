# SPDX-License-Identifier: LGPL-2.1-or-later
"""What a client and an admin learn of the daemon's start and stop.

Autostart at start-up runs before the daemon owns its name, so its `start-failed` events reach
nobody; a client that subscribed before the daemon started (a manager started at boot) gets
each of them once the name is owned, marked `replayed`. The daemon's log says at info level
that it stops, and why: the signal, the bus connection lost, or a fatal error.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from mdevd.bus import names
from tests.daemon.conftest import SCENARIO
from tests.daemon.harness import bus_client, new_uuid
from tests.support.bus import PROJECT_POLICY, private_bus
from tests.support.daemon import running_daemon
from tests.support.sim import RunningSim, running_sim
from tests.support.waiting import wait_until


@pytest.fixture(scope="module")
def sim() -> Iterator[RunningSim]:
    with running_sim(SCENARIO) as running:
        yield running


def test_startup_failures_are_sent_again_once_the_name_is_owned(
    sim: RunningSim, tmp_path: Path
) -> None:
    failing, started = new_uuid(), new_uuid()
    with private_bus([PROJECT_POLICY]) as address, bus_client(address) as client:
        with running_daemon(address, sim.root, [tmp_path]):
            client.define_device("par-a", "par-a-1", uuid=failing, autostart=True)
            client.define_device("par-b", "par-b-1", uuid=started, autostart=True)
        # The next start-up's autostart: the kernel refuses the first device (for good: EIO is
        # not retried), starts the second.
        sim.control.fault_create("par-a", "par-a-1", "EIO")
        mark = client.mark()  # the client is subscribed (to the name) before the daemon runs
        try:
            with running_daemon(address, sim.root, [tmp_path]) as daemon:
                replayed = client.wait_signal(
                    lambda s: s.is_event(failing, "start-failed"), since=mark
                )
                # A call's reply comes after every signal sent before it: none is still coming.
                client.get_device(failing)
                events = client.event_details(failing, since=mark)
                last_error = client.device(failing)["LastError"]
                assert client.device(started)["Status"] == "active"
                assert client.event_details(started, since=mark) == []  # only failures are replayed
                log = daemon.log()
        finally:
            sim.control.clear()
    assert replayed.body[0] == f"{names.DEVICES_PATH}/{failing.replace('-', '_')}"
    assert events == [
        (
            "start-failed",
            {
                "reason": "autostart",
                "error_name": "org.mdevd.Mdevd1.Error.Failed",
                "error_message": last_error.removeprefix("Failed: "),
                "replayed": True,
            },
        )
    ]
    assert "(EIO)" in last_error
    # The original went out before the name was owned: logged once, sent again once.
    assert log.count(f"device {failing}: start-failed (autostart)") == 1


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_by_signal_is_logged_with_the_signal(
    sim: RunningSim, tmp_path: Path, signal_number: signal.Signals
) -> None:
    with (
        private_bus([PROJECT_POLICY]) as address,
        running_daemon(address, sim.root, [tmp_path]) as daemon,
    ):
        assert daemon.stop(signal_number) == 0
    log = daemon.log()
    name = signal_number.name
    assert f"mdevd: INFO: mdevd stopping: {name} received; devices are left as they are" in log
    assert f"mdevd: INFO: mdevd stopped: {name} received" in log


def test_losing_the_bus_is_logged_as_the_reason(sim: RunningSim, tmp_path: Path) -> None:
    with ExitStack() as daemon_stack:
        bus_stack = ExitStack()
        address = bus_stack.enter_context(private_bus([PROJECT_POLICY]))
        daemon = daemon_stack.enter_context(running_daemon(address, sim.root, [tmp_path]))
        bus_stack.close()
        assert daemon.process.wait(timeout=60) == 1
    log = daemon.log()
    assert "mdevd: INFO: mdevd stopping: the bus connection was lost" in log
    assert "mdevd: INFO: mdevd stopped: the bus connection was lost" in log


def test_a_fatal_error_is_logged_as_the_reason(sim: RunningSim, tmp_path: Path) -> None:
    second_dir = tmp_path / "second"
    second_dir.mkdir()
    with (
        private_bus([PROJECT_POLICY]) as address,
        running_daemon(address, sim.root, [tmp_path]),
        # A second daemon on the same bus cannot own the name: it fails, and says so.
        running_daemon(address, sim.root, [second_dir], print_log=False) as second,
    ):
        assert second.process.wait(timeout=60) == 1
        wait_until(lambda: "mdevd stopped" in second.log(), what="the log line")
    log = second.log()
    assert "mdevd: INFO: mdevd stopped: a fatal error: could not own org.mdevd.Mdevd1" in log
