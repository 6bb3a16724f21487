# SPDX-License-Identifier: LGPL-2.1-or-later
"""A restarted daemon adopts what runs: nothing removed, nothing recreated; definitions survive.

The emulated kernel's uevent log is the witness: a device removed or created again would show
`remove`/`add` events after the restart.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mdevd.bus import names
from tests.daemon.conftest import SCENARIO
from tests.daemon.harness import (
    BusClient,
    DaemonError,
    bus_client,
    device_path,
    device_uevents,
    in_sysfs,
    new_uuid,
)
from tests.support.bus import PROJECT_POLICY, private_bus
from tests.support.daemon import running_daemon
from tests.support.signals import SignalRecorder
from tests.support.sim import RunningSim, running_sim


@pytest.fixture(scope="module")
def address() -> Iterator[str]:
    with private_bus([PROJECT_POLICY]) as bus_address:
        yield bus_address


@pytest.fixture(scope="module")
def sim() -> Iterator[RunningSim]:
    with running_sim(SCENARIO) as running:
        yield running


@pytest.fixture(scope="module")
def devices_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("devices.d")


@pytest.fixture(scope="module")
def client(address: str) -> Iterator[BusClient]:
    with bus_client(address) as connected:
        yield connected


def _state(devices_dir: Path) -> list[str]:
    """One state directory for every daemon of the module: a restart keeps /var/lib/mdevd."""
    return ["--state-dir", str(devices_dir.parent / "state")]


def _mdev_actions(sim: RunningSim, uuid: str) -> list[str]:
    return [record.action for record in device_uevents(sim, uuid)]


def test_a_restart_adopts_running_devices(
    address: str, sim: RunningSim, devices_dir: Path, client: BusClient
) -> None:
    transient, defined, idle = new_uuid(), new_uuid(), new_uuid()
    with running_daemon(address, sim.root, [devices_dir], extra_args=_state(devices_dir)):
        client.create_device("par-a", "par-a-1", uuid=transient, attributes=[("setting", "1")])
        client.define_device("mtty", "mtty-2", uuid=defined, autostart=True, start=True)
        client.define_device("mtty", "mtty-1", uuid=idle)
        before = {uuid: client.device(uuid) for uuid in (transient, defined, idle)}
    # The daemon has stopped; the devices run on.
    assert in_sysfs(sim, transient) and in_sysfs(sim, defined)
    events_before = len(sim.control.uevents())

    mark = client.mark()
    with running_daemon(address, sim.root, [devices_dir], extra_args=_state(devices_dir)):
        after = {uuid: client.device(uuid) for uuid in (transient, defined, idle)}
        # The kernel cannot tell a transient device's attributes; everything else is the same.
        assert after[transient] == {**before[transient], "Attributes": []}
        assert after[defined] == before[defined]
        assert after[idle] == before[idle]
        # No device was touched: not one uevent since the restart.
        assert sim.control.uevents()[events_before:] == []
        assert _mdev_actions(sim, defined) == ["add", "bind"]
        # The new daemon is announced like any owner change; it reports changes as before.
        client.stop(transient)
        assert any(s.is_removed(device_path(transient)) for s in client.signals(mark))
        client.stop(defined)


def test_a_restart_starts_autostart_devices_that_went_away_meanwhile(
    address: str, sim: RunningSim, devices_dir: Path, client: BusClient
) -> None:
    uuid = new_uuid()
    with running_daemon(address, sim.root, [devices_dir], extra_args=_state(devices_dir)):
        client.define_device("par-b", "par-b-1", uuid=uuid, autostart=True, start=True)
    (sim.root / "bus/mdev/devices" / uuid / "remove").write_text("1")
    assert not in_sysfs(sim, uuid)
    with running_daemon(address, sim.root, [devices_dir], extra_args=_state(devices_dir)):
        assert in_sysfs(sim, uuid)
        assert client.device(uuid)["Active"] is True
        assert _mdev_actions(sim, uuid) == ["add", "bind", "unbind", "remove", "add", "bind"]
        client.stop(uuid)


def test_a_definition_survives_a_kill_right_after_the_reply(
    address: str, sim: RunningSim, devices_dir: Path, client: BusClient
) -> None:
    uuid = new_uuid()
    with running_daemon(address, sim.root, [devices_dir], extra_args=_state(devices_dir)) as daemon:
        client.define_device("mdpy", "mdpy-vga", uuid=uuid, attributes=[])
        daemon.stop(signal.SIGKILL)
    with running_daemon(address, sim.root, [devices_dir], extra_args=_state(devices_dir)):
        device = client.device(uuid)
        assert (device["Defined"], device["Parent"], device["Type"]) == (True, "mdpy", "mdpy-vga")


def test_without_a_daemon_the_name_is_gone_and_calls_fail_cleanly(
    address: str, client: BusClient
) -> None:
    with pytest.raises(DaemonError) as raised:
        client.get_device(new_uuid())
    assert raised.value.name == "org.freedesktop.DBus.Error.ServiceUnknown"
    assert names.BUS_NAME in raised.value.message


def test_start_up_exports_without_announcing(
    address: str, sim: RunningSim, devices_dir: Path
) -> None:
    """Objects exported before the name is owned are not announced one by one: no client can
    match their signals yet (10,000 definitions would be 10,000 signals for nobody). What
    changes later is announced as usual, which this watcher of every sender sees too."""
    defined = [new_uuid() for _ in range(3)]
    for uuid in defined:
        (devices_dir / f"{uuid}.toml").write_text(
            f'[[device]]\nuuid = "{uuid}"\nparent = "mtty"\ntype = "mtty-1"\n'
        )
    later = new_uuid()

    def run_daemon() -> None:
        with running_daemon(
            address, sim.root, [devices_dir], extra_args=_state(devices_dir)
        ) as daemon:
            daemon.ctl("create", "mtty", "mtty-1", "--uuid", later, check=True)
            daemon.ctl("stop", later, check=True)

    # Every sender's ObjectManager signals: also those of a daemon that does not own the name.
    every_sender = (f"type='signal',interface='{names.OBJECT_MANAGER_INTERFACE}'",)
    try:
        with SignalRecorder(address, every_sender) as recorder:
            run_daemon()
            time.sleep(0.2)
        added = [s.object_path for s in recorder.signals() if s.member == "InterfacesAdded"]
    finally:
        for uuid in defined:
            (devices_dir / f"{uuid}.toml").unlink()
    assert added == [device_path(later)]
