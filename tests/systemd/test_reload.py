# SPDX-License-Identifier: LGPL-2.1-or-later
"""SIGHUP (systemctl reload): RELOADING=1, the definitions re-read, then READY=1."""

from __future__ import annotations

import itertools
import signal
import time
from pathlib import Path

from tests.support.daemon import running_daemon
from tests.support.sim import RunningSim
from tests.systemd.helpers import (
    DEVICE_A,
    DEVICE_B,
    define,
    in_kernel,
    is_ready,
    is_reloading,
    shown,
)
from tests.systemd.notify import NotifySocket


def test_sighup_rereads_the_definitions_between_reloading_and_ready(
    bus: str, sim: RunningSim, notify: NotifySocket, devices_dir: Path
) -> None:
    define(devices_dir, DEVICE_A, autostart=True)
    with running_daemon(
        bus, sim.root, [devices_dir], env={"NOTIFY_SOCKET": notify.address}
    ) as daemon:
        notify.wait_for(is_ready, what="READY=1")
        define(devices_dir, DEVICE_B, autostart=True)
        daemon.process.send_signal(signal.SIGHUP)
        reloading = notify.wait_for(is_reloading, what="RELOADING=1")
        assert int(reloading["MONOTONIC_USEC"]) > 0
        ready = notify.wait_for(is_ready, what="READY=1 after the reload")
        # By READY=1 the new definition is in effect, and its autostart has run.
        assert ready["STATUS"] == "Ready: 2 defined, 2 active"
        assert shown(daemon, DEVICE_B)["defined"] is True
        assert in_kernel(sim, DEVICE_B)


def reload_states(notify: NotifySocket) -> list[str]:
    """The RELOADING=1 and READY=1 notifications received, in order, as words."""
    return [
        "reloading" if is_reloading(m) else "ready"
        for m in notify.messages
        if is_reloading(m) or is_ready(m)
    ]


def assert_paired(states: list[str]) -> None:
    """Each RELOADING=1 followed by its READY=1, the last one a READY=1."""
    assert states[-1] == "ready"
    assert all(a != b for a, b in itertools.pairwise(states)), states


def test_a_burst_of_sighups_gives_paired_reloading_and_ready(
    bus: str, sim: RunningSim, notify: NotifySocket, devices_dir: Path
) -> None:
    with running_daemon(
        bus, sim.root, [devices_dir], env={"NOTIFY_SOCKET": notify.address}
    ) as daemon:
        notify.wait_for(is_ready, what="READY=1")
        notify.messages.clear()
        for _ in range(5):
            daemon.process.send_signal(signal.SIGHUP)
        notify.wait_for(is_reloading, what="RELOADING=1")
        notify.wait_for(is_ready, what="READY=1")
        time.sleep(1)  # any reload the burst still owes
        notify.drain()
    states = reload_states(notify)
    assert_paired(states)


def test_a_dbus_reload_is_announced_like_sighup(
    bus: str, sim: RunningSim, notify: NotifySocket, devices_dir: Path
) -> None:
    define(devices_dir, DEVICE_A, autostart=True)
    with running_daemon(
        bus,
        sim.root,
        [devices_dir],
        env={"NOTIFY_SOCKET": notify.address},
        config_text="[daemon]\nwatch_definitions = false\n",  # only the explicit reload reads
    ) as daemon:
        notify.wait_for(is_ready, what="READY=1")
        notify.messages.clear()
        define(devices_dir, DEVICE_B, autostart=True)
        result = daemon.ctl("reload")
        assert result.returncode == 0, result.stderr
        # Both were sent before the reply: the service manager knows before the caller does.
        notify.drain()
        announced = [m for m in notify.messages if is_reloading(m) or is_ready(m)]
        assert [is_reloading(m) for m in announced] == [True, False]
        assert announced[-1]["STATUS"] == "Ready: 2 defined, 2 active"
        assert in_kernel(sim, DEVICE_B)


def test_dbus_reloads_and_sighups_together_stay_paired(
    bus: str, sim: RunningSim, notify: NotifySocket, devices_dir: Path
) -> None:
    with running_daemon(
        bus, sim.root, [devices_dir], env={"NOTIFY_SOCKET": notify.address}
    ) as daemon:
        notify.wait_for(is_ready, what="READY=1")
        notify.messages.clear()
        for _ in range(3):
            daemon.process.send_signal(signal.SIGHUP)
            assert daemon.ctl("reload").returncode == 0
            notify.drain()  # as systemd reads them: a datagram socket queues only a few
        time.sleep(1)  # any reload the signals still owe
        notify.drain()
    states = reload_states(notify)
    assert states.count("reloading") >= 4  # three D-Bus reloads and at least one SIGHUP
    assert_paired(states)
