# SPDX-License-Identifier: LGPL-2.1-or-later
"""A device that lives as long as a systemd unit (docs/dbus-api.md, "Owners and lifetimes",
`lifetime=unit:NAME`), under a real systemd.

One container (tests/systemd/container.py: systemd as PID 1, its dbus-daemon, the installed
mdevd in its sandbox, the emulated kernel as its sysfs) hosts every test here. A "VM" is a
transient unit made with systemd-run (a service, and a scope as libvirt makes for each
machine); the device is created over the system bus with busctl, as any manager would, with
`lifetime=unit:<the unit>`. When the unit stops, mdevd removes the device and says so: a
`DeviceEvent` `stopped` with reason `owner-gone` (read by a listener on the container's bus),
and its journal. A unit that is not running when the create ends ends the device at once.
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
import uuid as uuidlib
from collections.abc import Iterator

import pytest

from tests.support.sim import RunningSim, running_sim
from tests.support.waiting import wait_until
from tests.systemd.container import (
    SYSTEM_PYTHON,
    Container,
    available,
    configure,
    installed_tree,
    systemd_container,
)
from tests.systemd.helpers import in_kernel

pytestmark = [
    pytest.mark.skipif(available() is not None, reason=str(available())),
    pytest.mark.timeout(180),
]

BUS_NAME = "org.mdevd.Mdevd1"
MANAGER_PATH = "/org/mdevd/Mdevd1/Manager"
MANAGER = "org.mdevd.Mdevd1.Manager"
DEVICE = "org.mdevd.Mdevd1.Device"

#: Inside the container: prints one JSON line per DeviceEvent on the system bus, after "ready".
LISTENER = """
import asyncio, json
from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus

def on_message(message):
    if message.message_type is MessageType.SIGNAL and message.member == "DeviceEvent":
        _path, uuid, event, details = message.body
        reason = details["reason"].value if "reason" in details else None
        print(json.dumps([uuid, event, reason]), flush=True)

async def main():
    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    bus.add_message_handler(on_message)
    rule = "type='signal',interface='org.mdevd.Mdevd1.Manager',member='DeviceEvent'"
    reply = await bus.call(Message(
        destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
        interface="org.freedesktop.DBus", member="AddMatch", signature="s", body=[rule]))
    assert reply.message_type is MessageType.METHOD_RETURN, reply.body
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


class Events:
    """The DeviceEvents the listener inside the container heard, as (uuid, event, reason)."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self._lines: queue.Queue[str] = queue.Queue()
        self.heard: list[tuple[str, str, str | None]] = []
        threading.Thread(target=self._read, daemon=True).start()
        first = self._lines.get(timeout=30)
        self.pid = int(first)  # the listener's pid inside the container
        assert self._lines.get(timeout=30) == "ready"

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line.strip())

    def _drain(self) -> None:
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                return
            uuid, event, reason = json.loads(line)
            self.heard.append((uuid, event, reason))

    def of(self, uuid: str) -> list[tuple[str, str | None]]:
        self._drain()
        return [(event, reason) for u, event, reason in self.heard if u == uuid]

    def wait_for(self, uuid: str, event: str, reason: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while (event, reason) not in self.of(uuid):
            if time.monotonic() > deadline:
                raise AssertionError(f"no {event} ({reason}) of {uuid}; heard {self.of(uuid)}")
            time.sleep(0.05)


@pytest.fixture(scope="module")
def sim() -> Iterator[RunningSim]:
    with running_sim("mtty") as emulated:
        yield emulated


@pytest.fixture(scope="module")
def container(sim: RunningSim) -> Iterator[Container]:
    with installed_tree() as root:
        configure(root)
        with systemd_container(root, sim.root) as booted:
            booted.run("systemctl", "start", "mdevd")
            yield booted


def _inside(container: Container, *argv: str) -> list[str]:
    return ["nsenter", f"--target={container.pid1}", "--mount", "--pid", "--", *argv]


@pytest.fixture(scope="module")
def events(container: Container) -> Iterator[Events]:
    process = subprocess.Popen(
        _inside(container, "sh", "-c", 'echo $$; exec "$0" -c "$1"', str(SYSTEM_PYTHON), LISTENER),
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        listener = Events(process)
        yield listener
        container.run("kill", str(listener.pid), check=False)
    finally:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def new_uuid() -> str:
    return str(uuidlib.uuid4())


def device_path(uuid: str) -> str:
    return f"/org/mdevd/Mdevd1/devices/{uuid.replace('-', '_')}"


def create(container: Container, uuid: str, lifetime: str) -> subprocess.CompletedProcess[str]:
    """CreateDevice over the container's system bus, as root, with `lifetime`."""
    return container.run(
        "busctl", "call", BUS_NAME, MANAGER_PATH, MANAGER, "CreateDevice", "ssa{sv}",
        "mtty", "mtty-1", "2", "uuid", "s", uuid, "lifetime", "s", lifetime,
        check=False,
    )  # fmt: skip


def prop(container: Container, uuid: str, name: str) -> str:
    """A Device property as busctl prints a string: `s "value"`."""
    output = container.run(
        "busctl", "get-property", BUS_NAME, device_path(uuid), DEVICE, name
    ).stdout.strip()
    assert output.startswith('s "'), output
    return output[3:-1]


def run_service(container: Container, unit: str) -> None:
    container.run("systemd-run", f"--unit={unit}", "--quiet", "sleep", "infinity")
    assert container.show(unit, "ActiveState")["ActiveState"] == "active"


def gone(sim: RunningSim, container: Container, uuid: str) -> bool:
    listed = container.run("busctl", "tree", "--list", BUS_NAME).stdout
    return not in_kernel(sim, uuid) and device_path(uuid) not in listed


def wait_gone(sim: RunningSim, container: Container, uuid: str) -> None:
    wait_until(lambda: gone(sim, container, uuid), timeout=30, what=f"{uuid} gone")


def test_a_device_goes_when_its_service_stops(
    container: Container, sim: RunningSim, events: Events
) -> None:
    run_service(container, "vm-test.service")
    first, second = new_uuid(), new_uuid()
    for uuid in (first, second):
        made = create(container, uuid, "unit:vm-test.service")
        assert made.returncode == 0, made.stderr
        assert made.stdout.strip() == f'o "{device_path(uuid)}"'
        assert in_kernel(sim, uuid)
        assert prop(container, uuid, "Lifetime") == "unit:vm-test.service"
        assert prop(container, uuid, "Owner") != ""
    time.sleep(0.5)  # the unit runs on: nothing ends
    assert in_kernel(sim, first) and in_kernel(sim, second)
    assert all(events.of(uuid) == [("started", "api")] for uuid in (first, second))

    container.run("systemctl", "stop", "vm-test.service")
    for uuid in (first, second):
        events.wait_for(uuid, "stopped", "owner-gone")
        wait_gone(sim, container, uuid)
        journal = container.journal("-u", "mdevd")
        assert f"device {uuid}: its unit vm-test.service stopped" in journal
        assert f"device {uuid}: stopped (owner-gone)" in journal
    assert container.show("mdevd", "ActiveState")["ActiveState"] == "active"

    # The VM comes back under the same unit name: a new device follows the unit anew.
    run_service(container, "vm-test.service")
    again = new_uuid()
    assert create(container, again, "unit:vm-test.service").returncode == 0
    time.sleep(0.5)
    assert in_kernel(sim, again)
    container.run("systemctl", "stop", "vm-test.service")
    events.wait_for(again, "stopped", "owner-gone")
    wait_gone(sim, container, again)


def test_a_device_goes_when_its_scope_ends(
    container: Container, sim: RunningSim, events: Events
) -> None:
    """A VM's scope, as libvirt makes one per machine: the device goes when the scope ends
    (here its one process is killed, as when QEMU exits)."""
    scope = subprocess.Popen(
        _inside(container, "systemd-run", "--scope", "--unit=vm-scope.scope", "sleep", "infinity"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        container.wait(
            "ActiveState=active", ["systemctl", "show", "-p", "ActiveState", "vm-scope.scope"]
        )
        uuid = new_uuid()
        assert create(container, uuid, "unit:vm-scope.scope").returncode == 0
        assert prop(container, uuid, "Lifetime") == "unit:vm-scope.scope"
        assert in_kernel(sim, uuid)
        container.run("systemctl", "kill", "--signal=KILL", "vm-scope.scope")
        events.wait_for(uuid, "stopped", "owner-gone")
        wait_gone(sim, container, uuid)
        assert "its unit vm-scope.scope stopped" in container.journal("-u", "mdevd")
    finally:
        container.run("systemctl", "kill", "--signal=KILL", "vm-scope.scope", check=False)
        scope.wait(timeout=30)


@pytest.mark.parametrize(
    "unit", ["no-such-vm.service", "vm-failed.service"], ids=["missing", "failed"]
)
def test_a_device_of_a_unit_that_is_not_running_goes_at_once(
    container: Container, sim: RunningSim, events: Events, unit: str
) -> None:
    if unit == "vm-failed.service":  # ran, and failed: systemd keeps it loaded, "failed"
        container.run("systemd-run", f"--unit={unit}", "--wait", "--quiet", "false", check=False)
        assert container.show(unit, "ActiveState")["ActiveState"] == "failed"
    uuid = new_uuid()
    made = create(container, uuid, f"unit:{unit}")
    # The create itself succeeds (the device was made), then its lifetime ends.
    assert made.returncode == 0, made.stderr
    events.wait_for(uuid, "stopped", "owner-gone")
    wait_gone(sim, container, uuid)
    assert events.of(uuid) == [("started", "api"), ("stopped", "owner-gone")]
    # It was found stopped while the device was being made: removed right after the create.
    assert f"device {uuid}: removed, its owner " in container.journal("-u", "mdevd")


def test_a_manual_device_outlives_units(container: Container, sim: RunningSim) -> None:
    """The unit lifetimes ended above removed only their own devices."""
    uuid = new_uuid()
    assert create(container, uuid, "manual").returncode == 0
    run_service(container, "vm-other.service")
    container.run("systemctl", "stop", "vm-other.service")
    time.sleep(0.5)
    assert in_kernel(sim, uuid)
    assert prop(container, uuid, "Lifetime") == "manual"
    container.run("busctl", "call", BUS_NAME, device_path(uuid), DEVICE, "Stop", "a{sv}", "0")
    assert not in_kernel(sim, uuid)


def test_a_restarted_daemon_follows_the_unit_again(
    container: Container, sim: RunningSim, events: Events
) -> None:
    """Owners outlive a daemon restart: a unit still running is followed anew, one that
    stopped while mdevd was not running ends its device when mdevd comes back."""
    run_service(container, "vm-kept.service")
    run_service(container, "vm-left.service")
    kept, left = new_uuid(), new_uuid()
    assert create(container, kept, "unit:vm-kept.service").returncode == 0
    assert create(container, left, "unit:vm-left.service").returncode == 0
    container.run("systemctl", "stop", "mdevd")
    container.run("systemctl", "stop", "vm-left.service")
    assert in_kernel(sim, kept) and in_kernel(sim, left)  # nobody removed it meanwhile
    container.run("systemctl", "start", "mdevd")
    wait_gone(sim, container, left)
    events.wait_for(left, "stopped", "owner-gone")
    assert in_kernel(sim, kept)
    assert prop(container, kept, "Lifetime") == "unit:vm-kept.service"
    container.run("systemctl", "stop", "vm-kept.service")
    events.wait_for(kept, "stopped", "owner-gone")
    wait_gone(sim, container, kept)


def test_defining_a_device_makes_it_outlive_its_unit(
    container: Container, sim: RunningSim, events: Events
) -> None:
    """docs/dbus-api.md: "defining a transient device makes it `manual`": it outlives its
    unit, and stays manual once undefined again (a transient device that keeps running)."""
    run_service(container, "vm-defined.service")
    uuid = new_uuid()
    assert create(container, uuid, "unit:vm-defined.service").returncode == 0
    busctl = ["busctl", "call", BUS_NAME, device_path(uuid), DEVICE]
    container.run(*busctl, "Define", "a{sv}", "0")
    try:
        container.run("systemctl", "stop", "vm-defined.service")
        time.sleep(1)
        assert in_kernel(sim, uuid)
        assert prop(container, uuid, "Lifetime") == "manual"
        container.run(*busctl, "Undefine", "a{sv}", "0")
        container.run("systemctl", "restart", "mdevd")
        time.sleep(1)
        assert in_kernel(sim, uuid)
        assert ("stopped", "owner-gone") not in events.of(uuid)
    finally:
        container.run(*busctl, "Undefine", "a{sv}", "0", check=False)
        container.run(*busctl, "Stop", "a{sv}", "0", check=False)
