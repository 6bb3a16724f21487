# SPDX-License-Identifier: LGPL-2.1-or-later
"""`mixed_type_errno`: a parent whose driver refuses a second type at create time only (NVIDIA
GPUs before Ada), without showing it in `available_instances`."""

from __future__ import annotations

import errno
import textwrap

import pytest

from mdevd.sim.scenario import ScenarioError, parse
from tests.sim.conftest import SimFactory
from tests.sim.helpers import (
    UUID_A,
    UUID_B,
    UUID_C,
    available,
    create,
    remove,
    type_dir,
    write_errno,
)

pytestmark = pytest.mark.timeout(90, method="thread")

SCENARIO = textwrap.dedent(
    """
    [[parent]]
    name = "0000:67:00.0"
    devpath = "devices/pci0000:64/0000:64:02.0/0000:67:00.0"
    subsystem = "pci"
    subsystem_path = "bus/pci"
    driver = "nvidia_vgpu_vfio"
    owned_by_driver = false
    max_instances = 8
    mixed_type_errno = "EINVAL"

    [[parent.type]]
    id = "nvidia-556"
    name = "GRID T4-1Q"
    device_api = "vfio-pci"

    [[parent.type]]
    id = "nvidia-558"
    name = "GRID T4-4Q"
    device_api = "vfio-pci"
    """
)
GPU = "0000:67:00.0"


def test_a_second_type_is_refused_with_the_errno_and_nothing_shows_it(
    start_sim: SimFactory,
) -> None:
    sim = start_sim(scenario_text=SCENARIO)
    create(sim.root, GPU, "nvidia-556", UUID_A)
    # available_instances does not tell: the driver decides at create time.
    assert available(sim.root, GPU, "nvidia-558") == 7
    before = len(sim.control.uevents())
    create_file = type_dir(sim.root, GPU, "nvidia-558") / "create"
    assert write_errno(create_file, UUID_B) == errno.EINVAL
    assert not (sim.root / "bus/mdev/devices" / UUID_B).exists()
    # Refused in the driver's probe: the device was added, then removed.
    refused = [
        (record.action, record.subsystem)
        for record in sim.control.uevents()[before:]
        if record.devpath.endswith(UUID_B)
    ]
    assert refused == [("add", "mdev"), ("remove", "mdev")]
    # The same type is fine; once the GPU is empty again, so is the other one.
    create(sim.root, GPU, "nvidia-556", UUID_C)
    remove(sim.root, UUID_A)
    remove(sim.root, UUID_C)
    create(sim.root, GPU, "nvidia-558", UUID_B)


def test_mixed_type_errno_must_be_an_errno() -> None:
    bad = SCENARIO.replace('mixed_type_errno = "EINVAL"', 'mixed_type_errno = "ENOPE"')
    with pytest.raises(ScenarioError, match="mixed_type_errno"):
        parse(bad)
