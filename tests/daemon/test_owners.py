# SPDX-License-Identifier: LGPL-2.1-or-later
"""Owners and lifetimes through the real daemon (docs/dbus-api.md, "Owners and lifetimes").

A device made or defined through mdevd shows its `Owner` (the caller's label, else its unit,
else its uid) and, if transient, its `Lifetime`. A `connection` lifetime ends when the
creator's bus connection closes, even while the daemon was not running; a device a VM holds
is removed only once released. A caller that names itself never changes another owner's
device.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from dbus_fast import Variant

from mdevd.bus import names
from tests.daemon.conftest import SCENARIO, ClientStack
from tests.daemon.harness import DaemonError, bus_client, device_path, new_uuid
from tests.support.bus import PROJECT_POLICY, private_bus
from tests.support.daemon import running_daemon
from tests.support.paths import REPO
from tests.support.sim import running_sim
from tests.support.waiting import wait_until

PARENT, TYPE = "mtty", "mtty-1"

#: A manager that creates a device living as long as its connection, then waits to be killed.
CREATOR = textwrap.dedent(
    """
    import asyncio, sys
    from dbus_fast import BusType, Message, Variant
    from dbus_fast.aio import MessageBus

    async def main() -> None:
        bus = await MessageBus(bus_address=sys.argv[1]).connect()
        reply = await bus.call(Message(
            destination="org.mdevd.Mdevd1", path="/org/mdevd/Mdevd1/Manager",
            interface="org.mdevd.Mdevd1.Manager", member="CreateDevice", signature="ssa{sv}",
            body=["mtty", "mtty-1", {"uuid": Variant("s", sys.argv[2]),
                                     "lifetime": Variant("s", "connection")}]))
        print(reply.message_type.name, reply.body, flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())
    """
)


@contextmanager
def creator(address: str, uuid: str) -> Iterator[subprocess.Popen[str]]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-c", CREATOR, address, uuid],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("METHOD_RETURN"), line
        yield process
    finally:
        process.kill()
        process.wait(timeout=10)


def test_the_owner_is_the_callers_label_else_its_unit_else_its_uid(stack: ClientStack) -> None:
    client = stack.client
    labelled = client.create_device(PARENT, TYPE, owner="nova")
    props = client.properties(labelled, names.DEVICE_INTERFACE)
    assert (props["Owner"], props["Lifetime"]) == ("nova", "manual")
    plain = client.create_device(PARENT, TYPE)
    owner = client.properties(plain, names.DEVICE_INTERFACE)["Owner"]
    assert owner == "uid:0" or owner.startswith("unit:")
    defined = client.define_device(PARENT, TYPE, owner="kubevirt")
    props = client.properties(defined, names.DEVICE_INTERFACE)
    assert (props["Owner"], props["Lifetime"]) == ("kubevirt", "manual")
    for path in (labelled, plain):
        client.call(path, names.DEVICE_INTERFACE, "Stop", "a{sv}", [{}])
    client.call(defined, names.DEVICE_INTERFACE, "Undefine", "a{sv}", [{}])


def test_a_caller_that_names_itself_changes_only_its_own_devices(stack: ClientStack) -> None:
    client = stack.client
    path = client.create_device(PARENT, TYPE, owner="nova")
    with pytest.raises(DaemonError) as refused:
        client.call(path, names.DEVICE_INTERFACE, "Stop", "a{sv}", [{"owner": _s("kubevirt")}])
    assert refused.value.name == names.error_name("NotAuthorized")
    assert "belongs to nova" in str(refused.value)
    assert client.properties(path, names.DEVICE_INTERFACE)["Active"] is True
    # Its owner may; so may an administrator who does not claim to be anyone (root here).
    client.call(path, names.DEVICE_INTERFACE, "Stop", "a{sv}", [{"owner": _s("nova")}])
    other = client.create_device(PARENT, TYPE, owner="nova")
    client.call(other, names.DEVICE_INTERFACE, "Stop", "a{sv}", [{}])


def test_bad_owner_and_lifetime_options_are_refused_before_anything_happens(
    stack: ClientStack,
) -> None:
    client = stack.client
    uuid = new_uuid()
    for options in (
        {"owner": "Nova Compute"},
        {"owner": "x" * 65},
        {"lifetime": "forever"},
        {"lifetime": "unit:../../etc"},
    ):
        with pytest.raises(DaemonError) as refused:
            client.create_device(PARENT, TYPE, uuid=uuid, **options)
        assert refused.value.name == names.error_name("InvalidArgument")
    with pytest.raises(DaemonError) as refused:
        client.define_device(PARENT, TYPE, uuid=uuid, lifetime="connection")
    assert refused.value.name == names.error_name("InvalidArgument")
    # No systemd answers on the test's private bus: a unit lifetime cannot be followed.
    with pytest.raises(DaemonError) as refused:
        client.create_device(PARENT, TYPE, uuid=uuid, lifetime="unit:qemu-1.scope")
    assert refused.value.name == names.error_name("NotSupported")
    assert not (stack.sim.root / "bus/mdev/devices" / uuid).exists()


def test_a_connection_lifetime_ends_with_the_connection(stack: ClientStack) -> None:
    client = stack.client
    uuid = new_uuid()
    since = client.mark()
    with creator(stack.address, uuid) as process:
        props = client.properties(device_path(uuid), names.DEVICE_INTERFACE)
        assert props["Lifetime"] == "connection"
        process.send_signal(signal.SIGKILL)
    client.wait_for_events(1, uuid, "stopped", "owner-gone", since=since)
    assert not (stack.sim.root / "bus/mdev/devices" / uuid).exists()


def test_a_device_held_open_is_removed_once_released(stack: ClientStack) -> None:
    client = stack.client
    uuid = new_uuid()
    since = client.mark()
    with creator(stack.address, uuid):
        stack.sim.control.hold(uuid)
    time.sleep(1.5)  # the daemon tries, and waits: a VM holds it
    assert (stack.sim.root / "bus/mdev/devices" / uuid).exists()
    assert client.events(uuid, "stopped", since=since) == []
    stack.sim.control.release(uuid)
    client.wait_for_events(1, uuid, "stopped", "owner-gone", since=since)


def test_a_restart_reaps_devices_whose_connection_left_meanwhile(tmp_path: Path) -> None:
    uuid, kept = new_uuid(), new_uuid()
    state = ["--state-dir", str(tmp_path / "state")]
    devices = [tmp_path / "devices.d"]
    devices[0].mkdir()
    with private_bus([PROJECT_POLICY]) as address, running_sim(SCENARIO) as sim:
        with running_daemon(address, sim.root, devices, extra_args=state):
            with bus_client(address) as client:
                client.create_device(PARENT, TYPE, uuid=kept, owner="nova")
            process = creator(address, uuid)
            process.__enter__()
        # The daemon is gone (its devices stay, as always); then the creator goes too.
        process.__exit__(None, None, None)
        assert (sim.root / "bus/mdev/devices" / uuid).exists()
        with running_daemon(address, sim.root, devices, extra_args=state) as daemon:
            wait_until(lambda: not (sim.root / "bus/mdev/devices" / uuid).exists(), 30)
            # Logged once the removal has been reported, just after sysfs shows it.
            wait_until(lambda: f"device {uuid}: removed, its owner" in daemon.log(), 30)
            with bus_client(address) as client:
                props = client.properties(device_path(kept), names.DEVICE_INTERFACE)
                assert props["Owner"] == "nova"  # a manual lifetime: kept, and still owned
                client.call(device_path(kept), names.DEVICE_INTERFACE, "Stop", "a{sv}", [{}])


def _s(value: str) -> Variant:
    return Variant("s", value)
