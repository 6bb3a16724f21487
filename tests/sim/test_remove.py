# SPDX-License-Identifier: LGPL-2.1-or-later
"""Writing a device's `remove`: `1` removes, `0` does nothing, the rest is EINVAL."""

from __future__ import annotations

import errno
import os
import subprocess

import pytest

from tests.sim.helpers import UUID_A, available, create, type_dir, write, write_errno
from tests.support.sim import RunningSim

pytestmark = pytest.mark.timeout(60, method="thread")


def _device_gone(sim: RunningSim, uuid: str, group: str) -> None:
    assert not (sim.root / "bus/mdev/devices" / uuid).exists()
    assert not (sim.root / "devices/virtual/mtty/mtty" / uuid).exists()
    assert os.listdir(type_dir(sim.root, "mtty", "mtty-2") / "devices") == []
    assert not (sim.root / "kernel/iommu_groups" / group).exists()
    assert not sim.control.vfio_group_path(int(group)).exists()


# kstrtoul(buf, 0): any non-zero number removes, in any base, with one trailing newline.
@pytest.mark.parametrize("value", ["1", "1\n", "0x1", "2"])
def test_a_non_zero_number_removes(sim: RunningSim, value: str) -> None:
    create(sim.root, "mtty", "mtty-2", UUID_A)
    device = sim.root / "bus/mdev/devices" / UUID_A
    group = os.path.basename(os.readlink(device / "iommu_group"))
    assert available(sim.root, "mtty", "mtty-2") == 11
    assert write(device / "remove", value) == len(value)
    _device_gone(sim, UUID_A, group)
    assert available(sim.root, "mtty", "mtty-2") == 12


@pytest.mark.parametrize("value", ["0", "0\n", "00"])
def test_zero_is_accepted_and_does_nothing(sim: RunningSim, value: str) -> None:
    create(sim.root, "mtty", "mtty-2", UUID_A)
    remove_file = sim.root / "bus/mdev/devices" / UUID_A / "remove"
    assert write(remove_file, value) == len(value)
    assert (sim.root / "bus/mdev/devices" / UUID_A / "mdev_type").exists()


@pytest.mark.parametrize("value", ["abc", "-1", " 1", "1 ", "1\n\n", "0x", "08", "y"])
def test_anything_else_is_einval(sim: RunningSim, value: str) -> None:
    create(sim.root, "mtty", "mtty-2", UUID_A)
    remove_file = sim.root / "bus/mdev/devices" / UUID_A / "remove"
    assert write_errno(remove_file, value) == errno.EINVAL
    assert (sim.root / "bus/mdev/devices" / UUID_A).exists()


def test_after_removal_remove_is_enoent_and_an_old_handle_enodev(sim: RunningSim) -> None:
    create(sim.root, "mtty", "mtty-2", UUID_A)
    remove_file = sim.root / "devices/virtual/mtty/mtty" / UUID_A / "remove"
    stale = os.open(remove_file, os.O_WRONLY)
    try:
        write(remove_file, "1")
        with pytest.raises(OSError) as reopened:
            os.open(remove_file, os.O_WRONLY)
        assert reopened.value.errno == errno.ENOENT
        with pytest.raises(OSError) as old_handle:
            os.write(stale, b"1")
        assert old_handle.value.errno == errno.ENODEV
    finally:
        os.close(stale)


def test_shell_redirection_works(sim: RunningSim) -> None:
    """`echo 1 > remove` opens with O_TRUNC, which sysfs ignores."""
    create(sim.root, "mtty", "mtty-2", UUID_A)
    remove_file = sim.root / "bus/mdev/devices" / UUID_A / "remove"
    subprocess.run(["sh", "-c", f"echo 1 > {remove_file}"], check=True)
    assert not (sim.root / "bus/mdev/devices" / UUID_A).exists()
