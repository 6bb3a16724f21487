# SPDX-License-Identifier: LGPL-2.1-or-later
"""Writable device attributes: vfio-ap's matrix assignments and scenario-declared ones."""

from __future__ import annotations

import errno
import os
import stat
import textwrap
from pathlib import Path

import pytest

from tests.sim.conftest import SimFactory
from tests.sim.helpers import UUID_A, UUID_B, create, remove, write, write_errno
from tests.support.sim import RunningSim

pytestmark = pytest.mark.timeout(60, method="thread")

AP_TYPE = "vfio_ap-passthrough"


def _matrix_device(sim: RunningSim, uuid: str = UUID_A) -> Path:
    create(sim.root, "matrix", AP_TYPE, uuid)
    return sim.root / "bus/mdev/devices" / uuid


def test_vfio_ap_device_has_its_attributes(sim: RunningSim) -> None:
    device = sim.root / "devices/vfio_ap/matrix" / UUID_A
    _matrix_device(sim)
    for name in ("assign", "unassign"):
        for what in ("adapter", "domain", "control_domain"):
            assert stat.S_IMODE(os.stat(device / f"{name}_{what}").st_mode) == 0o200
    assert stat.S_IMODE(os.stat(device / "matrix").st_mode) == 0o444
    assert (device / "matrix").read_text() == ""
    assert (device / "control_domains").read_text() == ""
    # Other types have no such files.
    create(sim.root, "mtty", "mtty-1", UUID_B)
    assert not (sim.root / "bus/mdev/devices" / UUID_B / "assign_adapter").exists()


def test_assignments_accept_decimal_hex_and_octal(sim: RunningSim) -> None:
    device = _matrix_device(sim)
    write(device / "assign_adapter", "5")
    assert (device / "matrix").read_text() == "05.\n"
    write(device / "assign_adapter", "0x0a\n")
    write(device / "assign_domain", "4")
    write(device / "assign_domain", "017")  # octal 15, as kstrtoul(buf, 0) reads it
    assert (device / "matrix").read_text() == "05.0004\n05.000f\n0a.0004\n0a.000f\n"
    write(device / "unassign_adapter", "5")
    assert (device / "matrix").read_text() == "0a.0004\n0a.000f\n"
    write(device / "unassign_adapter", "10")
    assert (device / "matrix").read_text() == ".0004\n.000f\n"
    write(device / "assign_control_domain", "0x7")
    write(device / "assign_control_domain", "255")
    assert (device / "control_domains").read_text() == "0007\n00ff\n"
    write(device / "unassign_control_domain", "7")
    assert (device / "control_domains").read_text() == "00ff\n"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("abc", errno.EINVAL),
        ("-1", errno.EINVAL),
        ("1.5", errno.EINVAL),
        (" 1", errno.EINVAL),
        ("0x", errno.EINVAL),
        ("256", errno.ENODEV),  # above the highest adapter: the driver's ENODEV
        ("0x100", errno.ENODEV),
        ("99999999999999999999999", errno.ERANGE),  # beyond unsigned long: kstrtoul's ERANGE
    ],
)
def test_invalid_adapter_values(sim: RunningSim, value: str, expected: int) -> None:
    device = _matrix_device(sim)
    assert write_errno(device / "assign_adapter", value) == expected
    assert write_errno(device / "assign_domain", value) == expected
    assert (device / "matrix").read_text() == ""


def test_assignment_is_ebusy_while_a_guest_uses_the_device(sim: RunningSim) -> None:
    device = _matrix_device(sim)
    sim.control.hold(UUID_A)
    assert write_errno(device / "assign_adapter", "1") == errno.EBUSY
    sim.control.release(UUID_A)
    assert write_errno(device / "assign_adapter", "1") is None


def test_two_devices_cannot_share_an_apqn(sim: RunningSim) -> None:
    first = _matrix_device(sim, UUID_A)
    second = _matrix_device(sim, UUID_B)
    write(first / "assign_adapter", "5")
    write(first / "assign_domain", "4")
    write(second / "assign_adapter", "5")  # no domain yet: nothing shared
    assert write_errno(second / "assign_domain", "4") == errno.EADDRINUSE
    assert (second / "matrix").read_text() == "05.\n"
    write(second / "assign_domain", "6")
    assert (second / "matrix").read_text() == "05.0006\n"


def test_attribute_of_a_removed_device_is_enodev(sim: RunningSim) -> None:
    device = _matrix_device(sim)
    fd = os.open(device / "assign_adapter", os.O_WRONLY)
    try:
        remove(sim.root, UUID_A)
        with pytest.raises(OSError) as gone:
            os.write(fd, b"1")
        assert gone.value.errno == errno.ENODEV
    finally:
        os.close(fd)


def test_scenario_declared_attribute(start_sim: SimFactory) -> None:
    scenario = textwrap.dedent(
        """
        [[parent]]
        name = "0000:65:00.0"
        devpath = "devices/pci0000:64/0000:64:00.0/0000:65:00.0"
        subsystem = "pci"
        subsystem_path = "bus/pci"
        owned_by_driver = false
        max_instances = 2

        [[parent.type]]
        id = "nvidia-558"

        [[parent.type.attribute]]
        name = "frame_rate_limiter"
        accept = "0|1"
        """
    )
    gpu = start_sim(scenario_text=scenario)
    create(gpu.root, "0000:65:00.0", "nvidia-558", UUID_A)
    attribute = gpu.root / "bus/mdev/devices" / UUID_A / "frame_rate_limiter"
    assert stat.S_IMODE(os.stat(attribute).st_mode) == 0o200
    assert write_errno(attribute, "1\n") is None
    assert write_errno(attribute, "0") is None
    assert write_errno(attribute, "2") == errno.EINVAL
    assert write_errno(attribute, "yes") == errno.EINVAL
