# SPDX-License-Identifier: LGPL-2.1-or-later
"""mdevd.service under a real systemd, installed by `make install`, in its full sandbox.

Each test boots a container (tests/systemd/container.py: systemd as PID 1, journald,
dbus-daemon with the installed policy) on the emulated kernel, and drives it the way an admin
does: systemctl, journalctl, the installed mdevdctl.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.sim import RunningSim, running_sim
from tests.systemd.container import (
    Container,
    available,
    configure,
    installed_tree,
    systemd_container,
)
from tests.systemd.helpers import DEVICE_A, DEVICE_B, DEVICE_C, device_adds, in_kernel

pytestmark = pytest.mark.skipif(available() is not None, reason=str(available()))

CAP_DAC_OVERRIDE = 1


def definition(uuid: str, type_id: str = "mtty-1") -> str:
    return f'[[device]]\nuuid = "{uuid}"\nparent = "mtty"\ntype = "{type_id}"\nautostart = true\n'


@pytest.fixture(scope="module")
def root() -> Iterator[Path]:
    with installed_tree() as tree:
        configure(tree)
        yield tree


@pytest.fixture
def sim() -> Iterator[RunningSim]:
    with running_sim("mtty") as emulated:
        yield emulated


@pytest.fixture
def container(root: Path, sim: RunningSim) -> Iterator[Container]:
    files = {f"mdevd/devices.d/{DEVICE_A}.toml": definition(DEVICE_A)}
    with systemd_container(root, sim.root, files) as booted:
        yield booted


def device(container: Container, uuid: str) -> dict[str, object]:
    shown: dict[str, object] = json.loads(container.run("mdevdctl", "show", uuid, "--json").stdout)
    return shown


def main_pid(container: Container) -> int:
    return int(container.show("mdevd", "MainPID")["MainPID"])


def test_started_means_ready_and_the_sandboxed_daemon_can_do_its_work(
    container: Container, sim: RunningSim
) -> None:
    container.run("systemctl", "start", "mdevd")  # returns on READY=1
    state = container.show("mdevd", "ActiveState", "SubState", "StatusText")
    assert state == {
        "ActiveState": "active",
        "SubState": "running",
        "StatusText": "Ready: 1 defined, 1 active",
    }
    assert device(container, DEVICE_A)["active"] is True  # autostart ran before READY=1

    # Writes sysfs and its definition, opens the vfio group, removes: all through the sandbox.
    # The definition is in /etc/mdevd/devices.d, or, where mdevctl's directory exists (the
    # host's mdevctl package made one), there in mdevctl compatibility mode.
    container.run("mdevdctl", "define", "mtty", "mtty-2", "-u", DEVICE_B, "--start")
    assert in_kernel(sim, DEVICE_B)
    config_file = str(device(container, DEVICE_B)["config_file"])
    expected = (
        f"/etc/mdevctl.d/mtty/{DEVICE_B}"
        if Path("/etc/mdevctl.d").is_dir()
        else f"/etc/mdevd/devices.d/{DEVICE_B}.toml"
    )
    assert config_file == expected
    assert "mtty-2" in container.run("cat", config_file).stdout
    container.run("mdevdctl", "stop", DEVICE_B)
    assert not in_kernel(sim, DEVICE_B)
    container.wait("Ready: 2 defined, 1 active", ["systemctl", "show", "-p", "StatusText", "mdevd"])

    # udev's events reach it over netlink: the driver goes away and comes back.
    sim.control.unregister("mtty")
    container.wait("Ready: 2 defined, 0 active", ["systemctl", "show", "-p", "StatusText", "mdevd"])
    sim.control.register("mtty")
    container.wait("Ready: 2 defined, 1 active", ["systemctl", "show", "-p", "StatusText", "mdevd"])
    assert in_kernel(sim, DEVICE_A)

    # The journal has the device's history, with its fields.
    container.wait(
        "MDEVD_EVENT", ["journalctl", "-u", "mdevd", "-o", "json", f"MDEV_UUID={DEVICE_B}"]
    )
    lines = container.run(
        "journalctl", "-u", "mdevd", "-o", "json", f"MDEV_UUID={DEVICE_B}"
    ).stdout.splitlines()
    events = [json.loads(line) for line in lines]
    assert {e["MDEVD_EVENT"] for e in events} >= {"defined", "started", "stopped"}
    assert all(e["MDEV_PARENT"] == "mtty" and e["MDEV_TYPE"] == "mtty-2" for e in events)


def test_the_sandbox_is_in_force(container: Container) -> None:
    container.run("systemctl", "start", "mdevd")
    status = container.run("cat", f"/proc/{main_pid(container)}/status").stdout
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    assert int(fields["CapBnd"], 16) == 1 << CAP_DAC_OVERRIDE
    assert fields["NoNewPrivs"].strip() == "1"
    assert fields["Seccomp"].strip() == "2"
    mounts = container.run("cat", f"/proc/{main_pid(container)}/mountinfo").stdout
    options = {line.split()[4]: line.split()[5] for line in mounts.splitlines()}
    assert options["/usr"].startswith("ro")
    assert options["/etc/mdevd"].startswith("rw")
    assert "/home" not in options or options["/home"].startswith("ro")


def test_reload_rereads_the_definitions(container: Container, sim: RunningSim) -> None:
    container.run("systemctl", "start", "mdevd")
    container.run(
        "sh", "-c", f"cat > /etc/mdevd/devices.d/{DEVICE_C}.toml", input=definition(DEVICE_C)
    )
    container.run("systemctl", "reload", "mdevd")
    container.wait("Ready: 2 defined, 2 active", ["systemctl", "show", "-p", "StatusText", "mdevd"])
    assert in_kernel(sim, DEVICE_C)
    assert container.show("mdevd", "ActiveState")["ActiveState"] == "active"


def test_stop_leaves_devices_running_and_start_adopts_them(
    container: Container, sim: RunningSim
) -> None:
    container.run("systemctl", "start", "mdevd")
    container.run("mdevdctl", "create", "mtty", "mtty-1", "-u", DEVICE_B)
    first = main_pid(container)
    container.run("systemctl", "stop", "mdevd")
    stopped = container.show("mdevd", "ActiveState", "Result", "ExecMainStatus")
    assert stopped == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}
    assert in_kernel(sim, DEVICE_A) and in_kernel(sim, DEVICE_B)
    container.run("systemctl", "start", "mdevd")
    assert main_pid(container) != first
    assert container.show("mdevd", "StatusText")["StatusText"] == "Ready: 1 defined, 2 active"
    assert device_adds(sim, DEVICE_A) == 1 and device_adds(sim, DEVICE_B) == 1


def test_the_watchdog_restarts_a_daemon_that_stops_answering(
    container: Container, sim: RunningSim
) -> None:
    container.drop_in("mdevd.service", "watchdog", "[Service]\nWatchdogSec=2s\n")
    container.run("systemctl", "start", "mdevd")
    wedged = main_pid(container)
    # Pinged from the event loop: alive across several watchdog periods.
    container.run("sleep", "5")
    assert container.show("mdevd", "NRestarts", "MainPID") == {
        "NRestarts": "0",
        "MainPID": str(wedged),
    }
    container.run("kill", "-STOP", str(wedged))  # no loop, no pings
    container.wait("NRestarts=1", ["systemctl", "show", "-p", "NRestarts", "mdevd"])
    container.wait("ActiveState=active", ["systemctl", "show", "-p", "ActiveState", "mdevd"])
    assert main_pid(container) != wedged
    assert "Watchdog timeout (limit 2s)" in container.journal("-u", "mdevd")
    assert device_adds(sim, DEVICE_A) == 1  # the restarted daemon adopted the device


def test_a_client_call_starts_the_service_through_bus_activation(container: Container) -> None:
    assert container.show("mdevd", "ActiveState")["ActiveState"] == "inactive"
    listed = container.run("mdevdctl", "list").stdout
    assert DEVICE_A in listed
    assert container.show("mdevd", "ActiveState")["ActiveState"] == "active"
