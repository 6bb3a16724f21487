# SPDX-License-Identifier: LGPL-2.1-or-later
"""Stopping with a call in progress, and the bus going away: clean ends.

When the bus goes away the daemon stops with status 1 (its service manager restarts it).
"Cleanly" is what an admin reads in the journal: the one line saying why it stopped, and no
asyncio complaint ("Task exception was never retrieved", "Task was destroyed but it is
pending") or traceback, also when a call was still being carried out at that moment. A call in
progress at SIGTERM is finished and answered before the daemon leaves the bus.
"""

from __future__ import annotations

import os
import signal
from contextlib import ExitStack
from pathlib import Path

from tests.daemon.conftest import SCENARIO
from tests.daemon.harness import bus_client, device_path, in_sysfs, new_uuid
from tests.support.bus import PROJECT_POLICY, private_bus
from tests.support.daemon import DaemonProcess, running_daemon
from tests.support.sim import RunningSim, running_sim
from tests.support.waiting import wait_until

COMPLAINTS = (
    "never retrieved",
    "was destroyed but it is pending",
    "Traceback",
    "unexpected error",
    "Exception in callback",
)


def creating(daemon: DaemonProcess, sim: RunningSim, parent: str, type_id: str) -> bool:
    """Whether a thread of the daemon is inside a system call on the type's `create` file (the
    emulator's `delay create` holds its write there)."""
    create = os.path.realpath(
        sim.root / "class" / "mdev_bus" / parent / "mdev_supported_types" / type_id / "create"
    )
    pid = daemon.process.pid
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "syscall").read_text().split()
            if len(fields) > 1 and os.readlink(f"/proc/{pid}/fd/{int(fields[1], 16)}") == create:
                return True
        except (OSError, ValueError):
            continue
    return False


def test_the_bus_going_away_stops_the_daemon_cleanly(tmp_path: Path) -> None:
    uuid = new_uuid()
    with running_sim(SCENARIO) as sim, ExitStack() as daemon_stack:
        bus_stack = ExitStack()
        address = bus_stack.enter_context(private_bus([PROJECT_POLICY]))
        daemon = daemon_stack.enter_context(running_daemon(address, sim.root, [tmp_path]))
        client = daemon_stack.enter_context(bus_client(address))
        # A call still in progress when the bus goes: its reply can no longer be sent.
        sim.control.delay("create", 2)
        client.create_device_async("mtty", "mtty-1", uuid=uuid)
        wait_until(lambda: creating(daemon, sim, "mtty", "mtty-1"), what="the create")
        bus_stack.close()
        assert daemon.process.wait(timeout=60) == 1
        log = daemon.log()
        assert "disconnected from the bus: stopping" in log
        for complaint in COMPLAINTS:
            assert complaint not in log
        # The create was carried out (a restarted daemon adopts the device).
        assert in_sysfs(sim, uuid)


def test_a_call_in_progress_at_sigterm_is_answered(tmp_path: Path) -> None:
    uuid = new_uuid()
    with (
        running_sim(SCENARIO) as sim,
        private_bus([PROJECT_POLICY]) as address,
        running_daemon(address, sim.root, [tmp_path]) as daemon,
        bus_client(address) as client,
    ):
        sim.control.delay("create", 2)
        reply = client.create_device_async("mtty", "mtty-1", uuid=uuid)
        wait_until(lambda: creating(daemon, sim, "mtty", "mtty-1"), what="the create")
        daemon.process.send_signal(signal.SIGTERM)
        assert reply.result(timeout=60) == [device_path(uuid)]
        assert daemon.process.wait(timeout=60) == 0
        for complaint in COMPLAINTS:
            assert complaint not in daemon.log()
        assert in_sysfs(sim, uuid)
