# SPDX-License-Identifier: LGPL-2.1-or-later
"""A create the parent's driver refuses with EINVAL and no reason: the error says what mdevd
checked and found, instead of blaming the UUID it validated itself.

The emulated parents here refuse a second type the way NVIDIA GPUs before Ada do
(`mixed_type_errno`, docs/emulated-kernel.md): `available_instances` does not show it, the
create answers EINVAL.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from mdevd.bus import names
from mdevd.explain import ONE_TYPE_AT_A_TIME, VENDOR_HINTS, CreateFacts, checked
from tests.daemon.conftest import ClientStack, daemon_stack
from tests.daemon.harness import BusClient, DaemonError, new_uuid

SCENARIO = textwrap.dedent(
    """
    [[parent]]
    name = "mtty"
    devpath = "devices/virtual/mtty/mtty"
    subsystem = "mtty"
    driver = "mtty"
    pools = { ports = 64 }
    mixed_type_errno = "EINVAL"

    [[parent.type]]
    id = "mtty-1"
    name = "Single port serial"
    device_api = "vfio-pci"
    pool = "ports"
    cost = 1

    [[parent.type]]
    id = "mtty-2"
    name = "Dual port serial"
    device_api = "vfio-pci"
    pool = "ports"
    cost = 2

    [[parent]]
    name = "0000:67:00.0"
    devpath = "devices/pci0000:64/0000:64:02.0/0000:67:00.0"
    subsystem = "pci"
    subsystem_path = "bus/pci"
    driver = "nvidia_vgpu_vfio"
    owned_by_driver = false
    max_instances = 16
    mixed_type_errno = "EINVAL"

    [parent.uevent]
    DRIVER = "nvidia"

    [[parent.type]]
    id = "nvidia-556"
    name = "GRID T4-1Q"
    device_api = "vfio-pci"

    [[parent.type]]
    id = "nvidia-558"
    name = "GRID T4-4Q"
    device_api = "vfio-pci"
    max_instances = 4

    [[parent]]
    name = "matrix"
    devpath = "devices/vfio_ap/matrix"
    subsystem = "matrix"
    subsystem_path = "bus/matrix"
    driver = "vfio_ap_mdev"
    pools = { instances = 65536 }
    pool_errno = "EPERM"
    uevent = { DRIVER = "vfio_ap" }

    [[parent.type]]
    id = "vfio_ap-passthrough"
    name = "VFIO AP Passthrough Device"
    device_api = "vfio-ap"
    pool = "instances"
    vfio_ap = { max_adapter = 255, max_domain = 255 }

    [[parent]]
    name = "par-a"
    devpath = "devices/virtual/par-a/par-a"
    subsystem = "par-a"
    driver = "par-a"
    pools = { slots = 256 }

    [[parent.type]]
    id = "par-a-1"
    name = "first type of par-a"
    device_api = "vfio-pci"
    pool = "slots"
    cost = 1
    """
)
GPU = "0000:67:00.0"
INVALID_ARGUMENT = "org.mdevd.Mdevd1.Error.InvalidArgument"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClientStack]:
    scenario = Path(tmp_path_factory.mktemp("scenario")) / "mixed-types.toml"
    scenario.write_text(SCENARIO)
    with daemon_stack(scenario=scenario) as running:
        yield running


def _refusal(client: BusClient, parent: str, type_id: str, uuid: str) -> DaemonError:
    with pytest.raises(DaemonError) as caught:
        client.create_device(parent, type_id, uuid=uuid)
    return caught.value


def test_a_second_type_names_the_active_one_and_the_facts_checked(
    client: BusClient, stack: ClientStack
) -> None:
    running = new_uuid()
    client.create_device("mtty", "mtty-1", uuid=running)
    refused = new_uuid()

    error = _refusal(client, "mtty", "mtty-2", refused)

    # The name stays what it was (clients match it); the message no longer blames the UUID.
    assert error.name == INVALID_ARGUMENT
    message = error.message
    assert "rejected the UUID" not in message
    assert f"device {refused}: parent mtty refused to create it as type mtty-2 (EINVAL" in message
    assert "mdevd validated the UUID itself" in message
    # Each fact it checked, with what it found.
    assert "parent mtty is still registered with the mdev core" in message
    assert "devices active on it: 1 of type mtty-1" in message
    assert "type mtty-2 shows available_instances 31" in message
    assert "its driver is mtty" in message
    assert (
        "parent mtty already has active devices of type mtty-1; some drivers, e.g. NVIDIA "
        "GPUs before Ada, accept one vGPU type per GPU at a time" in message
    )
    # Nothing was left behind.
    assert refused not in str(client.managed_objects())
    client.stop(running)
    # With the parent empty again, the second type is created.
    client.create_device("mtty", "mtty-2", uuid=refused)
    client.stop(refused)


def test_last_error_of_a_failed_start_repeats_the_explanation(client: BusClient) -> None:
    running, defined = new_uuid(), new_uuid()
    client.create_device(GPU, "nvidia-556", uuid=running)
    client.define_device(GPU, "nvidia-558", uuid=defined)

    with pytest.raises(DaemonError) as caught:
        client.start(defined)

    assert caught.value.name == INVALID_ARGUMENT
    message = caught.value.message
    assert f"parent {GPU} already has active devices of type nvidia-556" in message
    # The vendor's rules, known from the driver's name in the type ids.
    assert "its driver is nvidia" in message
    assert "nvidia-vgpu-mgr service running" in message
    device = client.device(defined)
    assert device["LastError"] == f"InvalidArgument: {message}"
    assert device["Status"] == "failed"
    client.stop(running)
    client.start(defined)
    device = client.device(defined)
    assert device["LastError"] == ""
    assert device["Status"] == "active"
    client.stop(defined)


def test_a_refusal_with_nothing_suspicious_still_lists_what_was_checked(
    client: BusClient, stack: ClientStack
) -> None:
    uuid = new_uuid()
    stack.sim.control.fault_create("par-a", "par-a-1", "EINVAL")

    error = _refusal(client, "par-a", "par-a-1", uuid)

    assert error.name == INVALID_ARGUMENT
    message = error.message
    assert "rejected the UUID" not in message
    assert "parent par-a is still registered with the mdev core" in message
    assert "devices active on it: none" in message
    assert "type par-a-1 shows available_instances 256" in message
    assert "its driver is par-a (from its type names; no driver link)" in message
    assert "Possible causes" not in message  # no other type, no known vendor


def test_the_hints_known_for_the_parents_driver(client: BusClient, stack: ClientStack) -> None:
    stack.sim.control.fault_create("matrix", "vfio_ap-passthrough", "EINVAL")

    error = _refusal(client, "matrix", "vfio_ap-passthrough", new_uuid())

    assert "its driver is vfio_ap" in error.message
    assert "Possible causes: s390 vfio_ap: the matrix device must be bound" in error.message
    assert "/sys/bus/ap/apmask and aqmask" in error.message


def test_a_parent_gone_meanwhile_is_said_so() -> None:
    """What a refusal looks like when the parent unregistered between the cache and the write
    (no sysfs to read then: the facts alone)."""
    facts = CreateFacts("0000:65:00.0", "nvidia-558", registered=False)
    assert checked(facts) == (
        "mdevd checked: parent 0000:65:00.0 is no longer registered with the mdev core (its "
        "driver was unbound or unloaded); its driver is not known (no driver link)"
    )
    bound = CreateFacts(
        "0000:00:02.0",
        "i915-GVTg_V5_4",
        registered=True,
        bound_driver="i915",
        active_types={"i915-GVTg_V5_4": 0, "i915-GVTg_V5_8": 2},
        available_instances=3,
    )
    assert checked(bound) == (
        "mdevd checked: parent 0000:00:02.0 is still registered with the mdev core; its device "
        "is bound to driver i915; devices active on it: 2 of type i915-GVTg_V5_8; type "
        "i915-GVTg_V5_4 shows available_instances 3. Possible causes: parent 0000:00:02.0 "
        "already has active devices of type i915-GVTg_V5_8; "
        + ONE_TYPE_AT_A_TIME
        + ". "
        + VENDOR_HINTS["i915"]
    )


def test_another_errno_gets_the_same_facts_under_its_own_name(
    client: BusClient, stack: ClientStack
) -> None:
    stack.sim.control.fault_create("par-a", "par-a-1", "EIO")

    error = _refusal(client, "par-a", "par-a-1", new_uuid())

    assert error.name == f"{names.ERROR_PREFIX}Failed"
    assert "(EIO)" in error.message
    assert "rejected the UUID" not in error.message
    assert "mdevd checked: parent par-a is still registered" in error.message
