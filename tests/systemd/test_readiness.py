"""Readiness and status: READY=1 means the name is owned and the whole tree is exported."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from tests.support.daemon import name_has_owner, running_daemon
from tests.support.sim import RunningSim
from tests.systemd.helpers import (
    DEVICE_A,
    DEVICE_B,
    define,
    is_ready,
    shown,
    status_is,
)
from tests.systemd.notify import NotifySocket

_HOLD_NAME = textwrap.dedent(
    """
    import asyncio, sys
    from dbus_fast.aio import MessageBus

    async def main():
        bus = await MessageBus(bus_address=sys.argv[1]).connect()
        await bus.request_name("org.mdevd.Mdevd1")
        print("owned", flush=True)
        await asyncio.get_running_loop().create_future()

    asyncio.run(main())
    """
)


def test_ready_is_sent_once_the_name_is_owned_and_the_tree_is_complete(
    bus: str, sim: RunningSim, notify: NotifySocket, devices_dir: Path
) -> None:
    define(devices_dir, DEVICE_A, autostart=True)
    with running_daemon(
        bus, sim.root, [devices_dir], env={"NOTIFY_SOCKET": notify.address}
    ) as daemon:
        ready = notify.wait_for(is_ready, what="READY=1")
        # Checked the moment READY=1 arrives: a client may rely on both right away.
        assert name_has_owner(bus)
        assert shown(daemon, DEVICE_A)["active"] is True
        assert ready["STATUS"] == "Ready: 1 defined, 1 active"
        assert notify.messages[0]["STATUS"].startswith("Starting")
        assert [m for m in notify.messages if is_ready(m)] == [ready]


def test_no_ready_when_the_name_cannot_be_owned(
    bus: str, sim: RunningSim, notify: NotifySocket, devices_dir: Path
) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_NAME, bus], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "owned"
        # The helper's own readiness check (the name has an owner) passes at once here.
        with running_daemon(
            bus, sim.root, [devices_dir], env={"NOTIFY_SOCKET": notify.address}
        ) as daemon:
            assert daemon.process.wait(timeout=60) == 1
    finally:
        holder.kill()
        holder.wait()
    notify.drain()
    assert not any(is_ready(m) for m in notify.messages)
    failure = notify.statuses()[-1]
    assert failure.startswith("Failed to start") and "org.mdevd.Mdevd1" in failure


def test_status_follows_the_device_counts(
    bus: str, sim: RunningSim, notify: NotifySocket, devices_dir: Path
) -> None:
    define(devices_dir, DEVICE_A, autostart=True)
    with running_daemon(
        bus, sim.root, [devices_dir], env={"NOTIFY_SOCKET": notify.address}
    ) as daemon:
        notify.wait_for(is_ready, what="READY=1")
        daemon.ctl("create", "mtty", "mtty-1", "-u", DEVICE_B, check=True)
        notify.wait_for(status_is("Ready: 1 defined, 2 active"), what="after create")
        daemon.ctl("stop", DEVICE_B, check=True)
        notify.wait_for(status_is("Ready: 1 defined, 1 active"), what="after stop")
        sim.control.unregister("mtty")  # the driver goes away: its devices with it
        notify.wait_for(status_is("Ready: 1 defined, 0 active"), what="after unregister")


def test_status_counts_problems_in_the_definitions(
    bus: str, sim: RunningSim, notify: NotifySocket, devices_dir: Path
) -> None:
    define(devices_dir, DEVICE_A, autostart=False)
    (devices_dir / "broken.toml").write_text(
        "[[device]]\nuuid = 'not-a-uuid'\nparent = 'mtty'\ntype = 'mtty-1'\n"
    )
    with running_daemon(bus, sim.root, [devices_dir], env={"NOTIFY_SOCKET": notify.address}):
        ready = notify.wait_for(is_ready, what="READY=1")
        assert ready["STATUS"] == "Ready: 1 defined, 0 active; 1 problem in the definitions"


def test_the_fake_socket_reads_what_systemd_notify_sends(notify: NotifySocket) -> None:
    """The stand-in parses the datagrams of systemd's own client as systemd would."""
    subprocess.run(
        ["systemd-notify", "--no-block", "--ready", "--status=Ready: 0 defined, 0 active"],
        env={"NOTIFY_SOCKET": notify.address, "PATH": "/usr/bin:/bin"},
        check=True,
        timeout=10,
    )
    message = notify.wait_for(is_ready, timeout=10)
    assert message["STATUS"] == "Ready: 0 defined, 0 active"
