# SPDX-License-Identifier: LGPL-2.1-or-later
"""SIGTERM (systemctl stop) leaves every device running; the next start adopts them."""

from __future__ import annotations

import signal
from pathlib import Path

from tests.support.daemon import running_daemon
from tests.support.sim import RunningSim
from tests.systemd.helpers import (
    DEVICE_A,
    DEVICE_B,
    define,
    device_adds,
    in_kernel,
    is_ready,
    shown,
)
from tests.systemd.notify import NotifySocket


def test_stop_leaves_devices_running_and_a_restart_adopts_them(
    bus: str, sim: RunningSim, notify: NotifySocket, devices_dir: Path
) -> None:
    define(devices_dir, DEVICE_A, autostart=True)
    env = {"NOTIFY_SOCKET": notify.address}
    with running_daemon(bus, sim.root, [devices_dir], env=env) as daemon:
        notify.wait_for(is_ready, what="READY=1")
        daemon.ctl("create", "mtty", "mtty-2", "-u", DEVICE_B, check=True)  # transient
        assert daemon.stop(signal.SIGTERM) == 0
    notify.wait_for(lambda m: m.get("STOPPING") == "1", what="STOPPING=1")
    assert in_kernel(sim, DEVICE_A) and in_kernel(sim, DEVICE_B)

    notify.messages.clear()
    with running_daemon(bus, sim.root, [devices_dir], env=env) as daemon:
        ready = notify.wait_for(is_ready, what="READY=1 after the restart")
        assert ready["STATUS"] == "Ready: 1 defined, 2 active"
        assert shown(daemon, DEVICE_A)["active"] is True
        transient = shown(daemon, DEVICE_B)
        assert (transient["active"], transient["defined"]) == (True, False)
    # Each device was created once, by the first daemon: adopted, never recreated.
    assert device_adds(sim, DEVICE_A) == 1
    assert device_adds(sim, DEVICE_B) == 1


def test_sigint_stops_the_same_way(
    bus: str, sim: RunningSim, notify: NotifySocket, devices_dir: Path
) -> None:
    define(devices_dir, DEVICE_A, autostart=True)
    with running_daemon(
        bus, sim.root, [devices_dir], env={"NOTIFY_SOCKET": notify.address}
    ) as daemon:
        notify.wait_for(is_ready, what="READY=1")
        assert daemon.stop(signal.SIGINT) == 0
    assert in_kernel(sim, DEVICE_A)
