# SPDX-License-Identifier: LGPL-2.1-or-later
"""Autostart failures: each is a `start-failed` event and the device's LastError; transient
ones (EBUSY, a parent that lists no types yet) are retried a bounded number of times with
growing delays, permanent ones never. Attempts are counted in the emulated kernel's uevent log
(every create the kernel sees is an `add` of the mdev device)."""

from __future__ import annotations

import pytest

from tests.udev.conftest import Setup, StartDaemon
from tests.udev.support import Wanted, attempts, objects, uuid_for, write_definitions

pytestmark = pytest.mark.timeout(120, method="thread")

RETRIES = 3  # tests.udev.support.daemon_config's default: 0.1, 0.2, 0.4 s


def _barrier(world: Setup, index: int) -> None:
    """Return once the daemon has handled every kernel event sent before this."""
    uuid = uuid_for(index, family=0xBA)
    create = world.sim.root / "class/mdev_bus/mdpy/mdev_supported_types/mdpy-vga/create"
    create.write_text(uuid)
    world.recorder.wait_for_events(1, uuid, "started", "kernel")
    (world.sim.root / "bus/mdev/devices" / uuid / "remove").write_text("1")
    world.recorder.wait_for_events(1, uuid, "stopped", "kernel")


def _setup(world: Setup, start_daemon: StartDaemon, *wanted: Wanted, **config: object) -> None:
    world.sim.control.unregister("mtty")
    write_definitions(world.devices_dir / "a.toml", wanted)
    start_daemon(world, **config)


def test_ebusy_is_retried_until_the_device_starts(world: Setup, start_daemon: StartDaemon) -> None:
    device = uuid_for(1)
    _setup(world, start_daemon, Wanted(device, "mtty", "mtty-1"))
    world.sim.control.fault_create("mtty", "mtty-1", "EBUSY", 2)

    world.sim.control.register("mtty")

    world.recorder.wait_for_events(1, device, "started", "autostart")
    failures = world.recorder.events(device, "start-failed")
    assert [f.details["error_name"] for f in failures] == ["org.mdevd.Mdevd1.Error.Busy"] * 2
    assert [f.details["retry_in"] for f in failures] == ["0.1", "0.2"]
    assert all(f.details["reason"] == "autostart" for f in failures)
    assert attempts(world.sim, device) == 3
    shown = objects(world.address).devices[device]
    assert shown.active and shown.last_error == ""  # a success clears the last error


def test_a_lasting_ebusy_is_retried_a_bounded_number_of_times(
    world: Setup, start_daemon: StartDaemon
) -> None:
    device = uuid_for(1)
    _setup(world, start_daemon, Wanted(device, "mtty", "mtty-1"))
    world.sim.control.fault_create("mtty", "mtty-1", "EBUSY", 1000)

    world.sim.control.register("mtty")

    failures = world.recorder.wait_for_events(RETRIES + 1, device, "start-failed")
    assert [f.details.get("retry_in") for f in failures] == ["0.1", "0.2", "0.4", None]
    # Events keep coming (other devices, other parents): they do not restart the retries.
    for index in range(3):
        _barrier(world, index)
    assert len(world.recorder.events(device, "start-failed")) == RETRIES + 1
    assert attempts(world.sim, device) == RETRIES + 1
    shown = objects(world.address).devices[device]
    assert not shown.active
    assert shown.last_error.startswith("Busy: ")
    assert "busy" in failures[-1].details["error_message"]


@pytest.mark.parametrize(
    ("errno_name", "error"),
    [("ENOSPC", "NoInstancesAvailable"), ("EIO", "Failed"), ("EINVAL", "InvalidArgument")],
)
def test_permanent_failures_are_not_retried(
    world: Setup, start_daemon: StartDaemon, errno_name: str, error: str
) -> None:
    device = uuid_for(1)
    _setup(world, start_daemon, Wanted(device, "mtty", "mtty-1"))
    world.sim.control.fault_create("mtty", "mtty-1", errno_name, 1000)

    world.sim.control.register("mtty")

    (failure,) = world.recorder.wait_for_events(1, device, "start-failed")
    assert failure.details["error_name"] == f"org.mdevd.Mdevd1.Error.{error}"
    assert "retry_in" not in failure.details
    _barrier(world, 1)
    assert len(world.recorder.events(device, "start-failed")) == 1
    assert attempts(world.sim, device) == 1
    assert objects(world.address).devices[device].last_error.startswith(f"{error}: ")


def test_a_parent_that_lists_its_types_late_gets_its_devices_started(
    world: Setup, start_daemon: StartDaemon
) -> None:
    """The types directory is empty for a while after the registration (a driver still
    setting up): that is retried; once the types are there the device starts."""
    device = uuid_for(1)
    _setup(
        world,
        start_daemon,
        Wanted(device, "mtty", "mtty-1"),
        autostart_retries=6,
        autostart_retry_delay=0.1,
    )
    world.sim.control.delay("types", 1.5)

    world.sim.control.register("mtty")

    world.recorder.wait_for_events(1, device, "started", "autostart")
    failures = world.recorder.events(device, "start-failed")
    assert failures, "the first attempt came before the types were there"
    assert {f.details["error_name"] for f in failures} == {
        "org.mdevd.Mdevd1.Error.TypeNotSupported"
    }
    assert all("retry_in" in f.details for f in failures)
    assert attempts(world.sim, device) == 1  # no create was written before the types existed
    assert objects(world.address).devices[device].last_error == ""


def test_a_type_the_parent_does_not_list_fails_once(
    world: Setup, start_daemon: StartDaemon
) -> None:
    device, other = uuid_for(1), uuid_for(2)
    _setup(
        world,
        start_daemon,
        Wanted(device, "mtty", "mtty-7"),
        Wanted(other, "mtty", "mtty-1"),
    )

    world.sim.control.register("mtty")

    world.recorder.wait_for_events(1, other, "started", "autostart")
    (failure,) = world.recorder.wait_for_events(1, device, "start-failed")
    assert failure.details["error_name"] == "org.mdevd.Mdevd1.Error.TypeNotSupported"
    assert "retry_in" not in failure.details
    _barrier(world, 1)
    assert len(world.recorder.events(device, "start-failed")) == 1
    assert attempts(world.sim, device) == 0
