# SPDX-License-Identifier: LGPL-2.1-or-later
"""Watchdog keep-alives: sent when asked, from the event loop: a wedged loop stops them."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from mdevd.service import Notifier, Watchdog, watchdog_interval
from tests.support.daemon import running_daemon
from tests.support.sim import RunningSim
from tests.systemd.helpers import is_ready
from tests.systemd.notify import Message, NotifySocket


def is_ping(message: Message) -> bool:
    return message.get("WATCHDOG") == "1"


def test_pings_come_while_the_daemon_runs(
    bus: str, sim: RunningSim, notify: NotifySocket, devices_dir: Path
) -> None:
    env = {"NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": "200000"}
    with running_daemon(bus, sim.root, [devices_dir], env=env):
        notify.wait_for(is_ready, what="READY=1")
        for _ in range(3):
            notify.wait_for(is_ping, what="WATCHDOG=1")


@pytest.mark.parametrize(
    "watchdog_env",
    [{}, {"WATCHDOG_USEC": "20000", "WATCHDOG_PID": "1"}],
    ids=["no WatchdogSec", "variables meant for another process"],
)
def test_no_pings_unless_meant_for_this_process(
    bus: str,
    sim: RunningSim,
    notify: NotifySocket,
    devices_dir: Path,
    watchdog_env: dict[str, str],
) -> None:
    env = {"NOTIFY_SOCKET": notify.address, **watchdog_env}
    with running_daemon(bus, sim.root, [devices_dir], env=env):
        notify.wait_for(is_ready, what="READY=1")
        time.sleep(1)  # 50 pings' worth at 20 ms
        notify.drain()
    assert not any(is_ping(m) for m in notify.messages)


def test_a_wedged_event_loop_sends_no_pings(notify: NotifySocket) -> None:
    notifier = Notifier(notify.address)
    watchdog = Watchdog(notifier, interval=0.01)

    async def scenario() -> tuple[list[Message], list[Message]]:
        watchdog.start()
        await asyncio.sleep(0.2)
        notify.drain()
        time.sleep(0.5)  # a blocking call on the loop: 50 intervals without it running
        while_wedged = notify.drain()  # before the loop gets control back
        await asyncio.sleep(0.2)
        afterwards = notify.drain()
        await watchdog.stop()
        return while_wedged, afterwards

    while_wedged, afterwards = asyncio.run(scenario())
    assert not any(is_ping(m) for m in while_wedged)
    assert any(is_ping(m) for m in afterwards)


def test_the_watchdog_variables_follow_sd_watchdog_enabled() -> None:
    import os

    mine = str(os.getpid())
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": mine}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
    assert watchdog_interval({}) is None


def test_child_processes_do_not_inherit_the_service_variables() -> None:
    """Callout scripts the daemon runs must not be able to speak for it."""
    environ = {"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "1", "WATCHDOG_PID": "1"}
    Notifier.from_environment(environ)
    watchdog_interval(environ)
    assert environ == {}


def test_a_multi_line_value_stays_one_assignment(notify: NotifySocket) -> None:
    Notifier(notify.address).send(STATUS="Failed to start: first\nREADY=1")
    message = notify.wait_for(lambda m: "STATUS" in m, timeout=10)
    assert message == {"STATUS": "Failed to start: first READY=1"}
