# SPDX-License-Identifier: LGPL-2.1-or-later
"""The control channel: faults, delays, a VM holding a device, and the channel's own errors."""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mdevd.sim.control import CONTROL_PATH, CommandError, ControlError
from tests.sim.conftest import SimFactory
from tests.sim.helpers import (
    UUID_A,
    UUID_B,
    available,
    create,
    remove,
    type_dir,
    write,
    write_errno,
)
from tests.support.paths import REPO
from tests.support.sim import RunningSim

pytestmark = pytest.mark.timeout(60, method="thread")


def _actions_for(sim: RunningSim, uuid: str) -> list[str]:
    return [e.action for e in sim.control.uevents() if e.devpath.endswith("/" + uuid)]


def test_fault_create_fails_the_next_creates_and_leaves_nothing(sim: RunningSim) -> None:
    sim.control.fault_create("mtty", "mtty-2", "EIO", 2)
    create_file = type_dir(sim.root, "mtty", "mtty-2") / "create"
    assert write_errno(create_file, UUID_A) == errno.EIO
    assert write_errno(create_file, UUID_A) == errno.EIO
    assert not (sim.root / "bus/mdev/devices" / UUID_A).exists()
    assert available(sim.root, "mtty", "mtty-2") == 12
    # Other types of the parent are not affected.
    create(sim.root, "mtty", "mtty-1", UUID_B)
    assert write_errno(create_file, UUID_A) is None
    # A driver failure happens after the core added the device: add, remove, never bind.
    assert _actions_for(sim, UUID_A) == ["add", "remove", "add", "remove", "add", "bind"]


def test_fault_create_takes_a_number(sim: RunningSim) -> None:
    sim.control.command("fault", "create", "mdpy", "mdpy-vga", "5")
    assert write_errno(type_dir(sim.root, "mdpy", "mdpy-vga") / "create", UUID_A) == errno.EIO


def test_fault_attribute_for_one_device_or_all(sim: RunningSim) -> None:
    for uuid in (UUID_A, UUID_B):
        create(sim.root, "matrix", "vfio_ap-passthrough", uuid)
    first = sim.root / "bus/mdev/devices" / UUID_A
    second = sim.root / "bus/mdev/devices" / UUID_B
    sim.control.fault_attribute(UUID_A.upper(), "assign_adapter", "EIO")
    assert write_errno(second / "assign_adapter", "1") is None
    assert write_errno(first / "assign_adapter", "2") == errno.EIO
    assert write_errno(first / "assign_adapter", "2") is None
    sim.control.fault_attribute("*", "assign_domain", "EACCES", 2)
    assert write_errno(first / "assign_domain", "3") == errno.EACCES
    assert write_errno(second / "assign_domain", "4") == errno.EACCES
    assert write_errno(second / "assign_domain", "4") is None
    assert (first / "matrix").read_text() == "02.\n"


def test_fault_attribute_can_be_set_before_the_device_exists(sim: RunningSim) -> None:
    """What a test of "create, then the attribute write fails, then roll back" needs."""
    sim.control.fault_attribute(UUID_A, "assign_adapter", "ENXIO")
    create(sim.root, "matrix", "vfio_ap-passthrough", UUID_A)
    device = sim.root / "bus/mdev/devices" / UUID_A
    assert write_errno(device / "assign_adapter", "1") == errno.ENXIO


def test_fault_remove(sim: RunningSim) -> None:
    create(sim.root, "mtty", "mtty-1", UUID_A)
    create(sim.root, "mtty", "mtty-1", UUID_B)
    sim.control.fault_remove(UUID_A, "EBUSY")
    remove_file = sim.root / "bus/mdev/devices" / UUID_A / "remove"
    assert write_errno(remove_file, "1") == errno.EBUSY
    assert (sim.root / "bus/mdev/devices" / UUID_A / "mdev_type").exists()
    assert write_errno(remove_file, "1") is None
    sim.control.fault_remove("*", "EAGAIN")
    assert write_errno(sim.root / "bus/mdev/devices" / UUID_B / "remove", "1") == errno.EAGAIN


#: A delay no test outlasts: the longest the control channel takes, an hour. A delay that
#: `clear()` failed to drop holds the next such write that long.
KEPT_DELAY = 3600.0
#: How long a write after `clear()` may take: far under KEPT_DELAY and the module's timeout,
#: far over what a write takes on a loaded machine.
WRITE_BOUND = 10.0


def _finishes_within(seconds: float, write: Callable[[], None]) -> None:
    """Run `write` on a thread of its own; fail the test if it has not returned (or has raised)
    after `seconds`. A write held by a delay stays blocked until the emulation stops."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            write()
        except BaseException as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise AssertionError(f"the write was still blocked after {seconds:g} s")
    if outcome[0] is not None:
        raise outcome[0]


def test_clear_drops_faults_and_delays(sim: RunningSim) -> None:
    sim.control.fault_create("mtty", "mtty-1", "EIO", 5)
    sim.control.fault_remove("*", "EBUSY", 5)
    sim.control.delay("create", KEPT_DELAY)
    sim.control.delay("remove", KEPT_DELAY)
    sim.control.clear()
    # A fault left in place fails the write (OSError); a delay left in place blocks it
    # for an hour, and the bound fails the test after WRITE_BOUND seconds.
    _finishes_within(WRITE_BOUND, lambda: create(sim.root, "mtty", "mtty-1", UUID_A))
    _finishes_within(WRITE_BOUND, lambda: remove(sim.root, UUID_A))


def test_the_bound_catches_a_delay_that_was_not_dropped(sim: RunningSim) -> None:
    """The control of the test above: the same delay, not cleared, fails its check."""
    sim.control.delay("create", KEPT_DELAY)
    with pytest.raises(AssertionError, match="still blocked"):
        # A shorter bound than WRITE_BOUND, to keep this quick: any bound under the delay
        # catches it.
        _finishes_within(1.0, lambda: create(sim.root, "mtty", "mtty-1", UUID_A))


def _timed(action: str, run: object) -> float:
    start = time.monotonic()
    run()  # type: ignore[operator]
    return time.monotonic() - start


@pytest.mark.parametrize("kind", ["create", "remove", "attribute"])
def test_delays_slow_every_such_write(sim: RunningSim, kind: str) -> None:
    create(sim.root, "matrix", "vfio_ap-passthrough", UUID_A)
    device = sim.root / "bus/mdev/devices" / UUID_A
    sim.control.delay(kind, 0.3)
    if kind == "create":
        slow = _timed(kind, lambda: create(sim.root, "mtty", "mtty-1", UUID_B))
    elif kind == "remove":
        slow = _timed(kind, lambda: remove(sim.root, UUID_A))
    else:
        slow = _timed(kind, lambda: write(device / "assign_adapter", "1"))
    # Only a lower bound: the write cannot return before the delay is over.
    assert slow >= 0.29  # a hair under: timers may round the sleep down by microseconds
    sim.control.delay(kind, 0)


def test_a_delayed_create_does_not_hold_up_other_operations(sim: RunningSim) -> None:
    sim.control.delay("create", 1.0)
    errors: list[int | None] = []
    slow = threading.Thread(
        target=lambda: errors.append(
            write_errno(type_dir(sim.root, "mtty", "mtty-1") / "create", UUID_A)
        ),
        daemon=True,
    )
    slow.start()
    # Reads, other types' files and the control channel keep answering meanwhile.
    assert available(sim.root, "mdpy", "mdpy-vga") == 4
    sim.control.fault_remove("*", "EBUSY")
    slow.join(10)
    assert errors == [None]


def test_hold_makes_the_vfio_group_busy(sim: RunningSim) -> None:
    create(sim.root, "mtty", "mtty-1", UUID_A)
    group = int(
        os.path.basename(os.readlink(sim.root / "bus/mdev/devices" / UUID_A / "iommu_group"))
    )
    node = sim.control.vfio_group_path(group)
    os.close(os.open(node, os.O_RDWR))
    sim.control.hold(UUID_A)
    with pytest.raises(OSError) as busy:
        os.open(node, os.O_RDWR)
    assert busy.value.errno == errno.EBUSY
    sim.control.release(UUID_A)
    os.close(os.open(node, os.O_RDWR))


def test_the_vfio_group_has_one_opener_and_removal_does_not_wait_for_it(
    sim: RunningSim,
) -> None:
    """As vfio's group file: a second open is EBUSY while the first is open; a group opened
    without using the device (libvirt's check before a removal) does not hold the removal."""
    create(sim.root, "mtty", "mtty-1", UUID_A)
    group = int(
        os.path.basename(os.readlink(sim.root / "bus/mdev/devices" / UUID_A / "iommu_group"))
    )
    node = sim.control.vfio_group_path(group)
    first = os.open(node, os.O_RDONLY)
    try:
        with pytest.raises(OSError) as busy:
            os.open(node, os.O_RDWR)
        assert busy.value.errno == errno.EBUSY
    finally:
        os.close(first)

    def opens() -> bool:
        try:
            os.close(os.open(node, os.O_RDWR))
        except OSError as exc:
            assert exc.errno == errno.EBUSY
            return False
        return True

    # FUSE releases a closed file asynchronously: wait for it.
    deadline = time.monotonic() + 10
    while not opens():
        assert time.monotonic() < deadline, "the group stayed busy after its opener closed it"
        time.sleep(0.01)
    held = os.open(node, os.O_RDONLY)
    try:
        assert write_errno(sim.root / "bus/mdev/devices" / UUID_A / "remove", "1") is None
        assert not (sim.root / "bus/mdev/devices" / UUID_A).exists()
    finally:
        os.close(held)


def test_removing_a_held_device_blocks_until_release(sim: RunningSim) -> None:
    create(sim.root, "mtty", "mtty-2", UUID_A)
    device = sim.root / "devices/virtual/mtty/mtty" / UUID_A
    sim.control.hold(UUID_A)
    results: list[int | None] = []
    remover = threading.Thread(
        target=lambda: results.append(write_errno(device / "remove", "1")), daemon=True
    )
    remover.start()
    # Wait for the removal to start (the core unlinks the bus entry first), not for time.
    bus_entry = sim.root / "bus/mdev/devices" / UUID_A
    for _ in range(500):
        if not bus_entry.exists():
            break
        remover.join(0.01)
    assert not bus_entry.exists()
    assert remover.is_alive()
    # Waiting for the driver: still in sysfs, still counted, its UUID still taken.
    assert sorted(os.listdir(device)) == ["driver", "iommu_group", "vfio-dev"]
    assert available(sim.root, "mtty", "mtty-2") == 11
    assert write_errno(type_dir(sim.root, "mtty", "mtty-1") / "create", UUID_A) == errno.EEXIST
    with pytest.raises(OSError) as reopen:
        os.open(device / "remove", os.O_WRONLY)
    assert reopen.value.errno == errno.ENOENT
    assert _actions_for(sim, UUID_A) == ["add", "bind"]
    sim.control.release(UUID_A)
    remover.join(10)
    assert not remover.is_alive()
    assert results == [None]
    assert not device.exists()
    assert _actions_for(sim, UUID_A) == ["add", "bind", "unbind", "remove"]


def test_hold_of_an_unknown_device_is_enoent(sim: RunningSim) -> None:
    with pytest.raises(ControlError) as unknown:
        sim.control.hold(UUID_A)
    assert unknown.value.errno == errno.ENOENT


@pytest.mark.parametrize(
    "line",
    [
        "frobnicate",
        "register",
        "fault create mtty mtty-1",
        "fault create mtty mtty-1 ENOTANERRNO",
        "fault create mtty mtty-1 EIO 0",
        "fault remove not-a-uuid EIO",
        "delay create soon",
        "delay later 1",
        "hold",
        "clear now",
    ],
)
def test_malformed_commands_are_einval_with_a_message(sim: RunningSim, line: str) -> None:
    fd = os.open(sim.root / CONTROL_PATH, os.O_RDWR)
    try:
        with pytest.raises(OSError) as refused:
            os.write(fd, line.encode() + b"\n")
        assert refused.value.errno == errno.EINVAL
        assert os.pread(fd, 4096, 0).decode().strip() != ""
    finally:
        os.close(fd)
    with pytest.raises(CommandError):
        sim.control.command(*line.split())


def test_fault_on_an_unknown_type_is_enoent(sim: RunningSim) -> None:
    with pytest.raises(ControlError) as unknown:
        sim.control.fault_create("mtty", "mtty-3", "EIO")
    assert unknown.value.errno == errno.ENOENT


def test_control_file_is_root_only(sim: RunningSim) -> None:
    assert os.stat(sim.root / CONTROL_PATH).st_mode & 0o777 == 0o600
    assert Path(sim.root / ".sim").is_dir()


def _open_when_free(node: Path) -> int:
    """Opens `node` once the last opener's close has reached the emulation: FUSE releases a
    closed file asynchronously, so an open right after a close (this test's own probes too)
    may still see it busy."""
    deadline = time.monotonic() + 10
    while True:
        try:
            return os.open(node, os.O_RDWR)
        except OSError as exc:
            assert exc.errno == errno.EBUSY
            assert time.monotonic() < deadline, f"{node} stayed busy after its opener closed it"
        time.sleep(0.01)


def _until_opens(node: Path) -> None:
    os.close(_open_when_free(node))


def test_the_vfio_device_node_shares_the_groups_one_user(
    start_sim: SimFactory, tmp_path: Path
) -> None:
    """`.sim/dev/vfio/devices/vfioN` (a device's `vfio-dev/vfioN`, kernels 6.6+): EBUSY while
    the group is open or held or the node is open, and the group is EBUSY while the node is
    (Linux refuses the iommufd bind then; the emulation has no ioctls, so it refuses the open)."""
    sim = start_sim(_with_vfio_cdev(tmp_path))
    create(sim.root, "mtty", "mtty-1", UUID_A)
    device = sim.root / "bus/mdev/devices" / UUID_A
    group = sim.control.vfio_group_path(int(os.path.basename(os.readlink(device / "iommu_group"))))
    (name,) = os.listdir(device / "vfio-dev")
    cdev = sim.control.vfio_cdev_path(name)
    assert cdev.exists()
    first = os.open(cdev, os.O_RDWR)
    try:
        for node in (cdev, group):
            with pytest.raises(OSError) as busy:
                os.open(node, os.O_RDWR)
            assert busy.value.errno == errno.EBUSY
    finally:
        os.close(first)
    # The group opens once the node's close has been released, the probe's included.
    held_group = _open_when_free(group)
    try:
        with pytest.raises(OSError) as busy:
            os.open(cdev, os.O_RDWR)
        assert busy.value.errno == errno.EBUSY
    finally:
        os.close(held_group)
    _until_opens(group)
    sim.control.hold(UUID_A)
    with pytest.raises(OSError) as busy:
        os.open(cdev, os.O_RDWR)
    assert busy.value.errno == errno.EBUSY
    sim.control.release(UUID_A)
    _until_opens(cdev)
    assert write_errno(device / "remove", "1") is None
    assert not cdev.exists()


def _with_vfio_cdev(tmp_path: Path) -> Path:
    """The default scenario on a kernel with VFIO device nodes (`[sim] vfio_cdev`)."""
    scenario = tmp_path / "cdev.toml"
    default = (REPO / "config" / "sim" / "default.toml").read_text()
    scenario.write_text("[sim]\nvfio_cdev = true\n\n" + default)
    return scenario


def test_without_vfio_cdev_there_is_no_device_node(sim: RunningSim) -> None:
    """Debian 12's kernels (6.1, and 6.12) have `vfio-dev/vfioN` but no char device: no `dev`
    there, and no /dev/vfio/devices (the real-kernel fidelity check compares this)."""
    create(sim.root, "mtty", "mtty-1", UUID_A)
    device = sim.root / "bus/mdev/devices" / UUID_A
    (name,) = os.listdir(device / "vfio-dev")
    assert not (device / "vfio-dev" / name / "dev").exists()
    assert not sim.control.vfio_cdev_path(name).exists()
    assert not (sim.root / ".sim/dev/vfio/devices").exists()
