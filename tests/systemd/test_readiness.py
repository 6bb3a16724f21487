# SPDX-License-Identifier: LGPL-2.1-or-later
"""Readiness and status: READY=1 means the name is owned and the whole tree is exported."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mdevd.service import Notifier, StartupExtender
from tests.support.daemon import name_has_owner, running_daemon
from tests.support.sim import RunningSim
from tests.systemd.helpers import (
    DEVICE_A,
    DEVICE_B,
    DEVICE_C,
    define,
    in_kernel,
    is_ready,
    shown,
    status_is,
)
from tests.systemd.notify import Message, NotifySocket

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


def is_extension(message: Message) -> bool:
    return "EXTEND_TIMEOUT_USEC" in message


def test_a_long_startup_autostart_asks_for_more_time_and_is_done_at_ready(
    bus: str, sim: RunningSim, notify: NotifySocket, devices_dir: Path
) -> None:
    uuids = [DEVICE_A, DEVICE_B, DEVICE_C, "0c1d2e3f-4a5b-4c6d-8e7f-8091a2b3c404"]
    for uuid in uuids:
        define(devices_dir, uuid, autostart=True)
    sim.control.delay("create", 2)  # one parent: its devices are created one after another
    with running_daemon(
        bus, sim.root, [devices_dir], env={"NOTIFY_SOCKET": notify.address}, start_timeout=60
    ) as daemon:
        ready = notify.wait_for(is_ready, timeout=60, what="READY=1")
        # The guarantee stays: at READY=1 every autostart device exists.
        assert ready["STATUS"] == "Ready: 4 defined, 4 active"
        assert all(in_kernel(sim, uuid) for uuid in uuids)
        assert all(shown(daemon, uuid)["active"] is True for uuid in uuids)
    before_ready = notify.messages[: notify.messages.index(ready)]
    extensions = [m for m in before_ready if is_extension(m)]
    assert extensions, before_ready
    for extension in extensions:
        assert int(extension["EXTEND_TIMEOUT_USEC"]) >= 5_000_000
        assert extension["STATUS"].startswith("Starting: autostart, ")
    tried = [int(m["STATUS"].split(", ")[1].split()[0]) for m in extensions]
    assert tried == sorted(tried) and tried[-1] < len(uuids)


def test_a_short_startup_asks_for_nothing(
    bus: str, sim: RunningSim, notify: NotifySocket, devices_dir: Path
) -> None:
    define(devices_dir, DEVICE_A, autostart=True)
    with running_daemon(bus, sim.root, [devices_dir], env={"NOTIFY_SOCKET": notify.address}):
        notify.wait_for(is_ready, what="READY=1")
    assert not any(is_extension(m) for m in notify.messages)


def test_a_startup_that_stops_progressing_stops_asking_for_more_time(
    notify: NotifySocket, caplog: pytest.LogCaptureFixture
) -> None:
    async def startup() -> None:
        extender = StartupExtender(
            Notifier(notify.address),
            lambda: "Starting: autostart, ...",
            grace=0.05,
            interval=0.05,
            stall_limit=0.5,
        )
        extender.start()
        for _ in range(10):  # progressing: each pause shorter than the stall limit
            await asyncio.sleep(0.05)
            extender.progressed()
        async with asyncio.timeout(20):  # wedged from here on: it must notice
            while "no progress" not in caplog.text:
                await asyncio.sleep(0.05)
        await asyncio.to_thread(notify.drain)
        extended = sum(is_extension(m) for m in notify.messages)
        await asyncio.sleep(0.5)  # ten more intervals
        await asyncio.to_thread(notify.drain)
        assert sum(is_extension(m) for m in notify.messages) == extended
        await extender.stop()

    with caplog.at_level(logging.WARNING, logger="mdevd.service"):
        asyncio.run(startup())
    assert any(is_extension(m) for m in notify.messages)
