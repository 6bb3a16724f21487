# SPDX-License-Identifier: LGPL-2.1-or-later
"""The kernel layer against the emulated kernel: every read, every write, every errno mapping."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from mdevd.errors import (
    AttributeRejected,
    Busy,
    Exists,
    KernelIOError,
    NoInstancesAvailable,
    NotActive,
    ParentNotFound,
    TypeNotSupported,
)
from mdevd.kernel import Sysfs
from tests.support.sim import RunningSim, running_sim

U1 = "8a3c0000-0000-4000-8000-000000000001"
U2 = "8a3c0000-0000-4000-8000-000000000002"


@pytest.fixture(scope="module")
def sim() -> Iterator[RunningSim]:
    with running_sim("default") as running:
        yield running


@pytest.fixture
def kernel(sim: RunningSim) -> Iterator[Sysfs]:
    sysfs = Sysfs(sim.root, sim.control.vfio_group_path(0).parent.parent)
    yield sysfs
    sim.control.clear()
    for uuid in sysfs.device_uuids():
        sysfs.remove(uuid, check_busy=False)
    for parent in ("mtty", "mdpy", "mbochs", "0000:65:00.0", "matrix"):
        if not sysfs.parent_exists(parent):
            sim.control.register(parent)


def test_parents_and_types(kernel: Sysfs) -> None:
    parents = kernel.list_parents()
    assert set(parents) >= {"mtty", "mdpy", "mbochs", "0000:65:00.0", "matrix"}
    mtty = parents["mtty"]
    assert mtty.subsystem == "mtty"
    assert mtty.sysfs_path.endswith("/devices/virtual/mtty/mtty")
    assert set(mtty.types) == {"mtty-1", "mtty-2"}
    assert mtty.types["mtty-1"].available_instances == 24
    assert mtty.types["mtty-2"].available_instances == 12
    assert mtty.types["mtty-1"].device_api == "vfio-pci"
    assert mtty.types["mtty-1"].description == ""  # mtty has no description file
    gpu = parents["0000:65:00.0"]
    assert gpu.subsystem == "pci"
    assert "framebuffer" in gpu.types["nvidia-556"].description


def test_create_lowercases_and_resolves_parent_type_group(kernel: Sysfs) -> None:
    device = kernel.create("mtty", "mtty-2", U1.upper())
    assert device.uuid == U1
    assert device.parent == "mtty"
    assert device.type_id == "mtty-2"
    assert device.iommu_group >= 0
    assert kernel.list_devices() == {U1: device}
    # The shared pool: one 2-port device leaves 22 single ports and 11 dual ones.
    assert kernel.available_instances("mtty", "mtty-1") == 22
    assert kernel.available_instances("mtty", "mtty-2") == 11


def test_duplicate_uuid_across_parents_is_exists(kernel: Sysfs) -> None:
    kernel.create("mtty", "mtty-1", U1)
    with pytest.raises(Exists):
        kernel.create("mdpy", "mdpy-vga", U1)


def test_full_pool_enospc_is_no_instances(kernel: Sysfs) -> None:
    for index in range(12):
        kernel.create("mtty", "mtty-2", f"00000000-0000-4000-8000-{index:012x}")
    with pytest.raises(NoInstancesAvailable, match="available_instances 0"):
        kernel.create("mtty", "mtty-1", U1)


def test_counts_alone_follow_a_shared_pool(kernel: Sysfs) -> None:
    assert kernel.read_available_instances("mtty", ["mtty-1", "mtty-2"]) == {
        "mtty-1": 24,
        "mtty-2": 12,
    }
    kernel.create("mtty", "mtty-2", U1)  # two ports of the 24 shared by both types
    counts = kernel.read_available_instances("mtty", ["mtty-1", "mtty-2"])
    assert counts == {"mtty-1": 22, "mtty-2": 11}
    assert counts == {
        type_id: t.available_instances for type_id, t in kernel.read_types("mtty").items()
    }
    with pytest.raises(TypeNotSupported):
        kernel.read_available_instances("mtty", ["mtty-3"])
    with pytest.raises(ParentNotFound):
        kernel.read_available_instances("nosuchparent", ["mtty-1"])


def test_core_counted_eusers_is_no_instances(kernel: Sysfs) -> None:
    for index in range(4):
        kernel.create("mdpy", "mdpy-vga", f"00000000-0000-4000-8000-{index:012x}")
    with pytest.raises(NoInstancesAvailable):
        kernel.create("mdpy", "mdpy-hd", U1)


def test_unknown_type_and_parent(kernel: Sysfs, sim: RunningSim) -> None:
    with pytest.raises(TypeNotSupported):
        kernel.create("mtty", "mtty-9", U1)
    with pytest.raises(ParentNotFound):
        kernel.create("nosuchparent", "mtty-1", U1)
    sim.control.unregister("mtty")
    with pytest.raises(ParentNotFound):
        kernel.create("mtty", "mtty-1", U1)
    with pytest.raises(ParentNotFound):
        kernel.read_parent("mtty")


def test_driver_error_is_kernel_io_error_with_errno(kernel: Sysfs, sim: RunningSim) -> None:
    sim.control.fault_create("mtty", "mtty-1", "EIO")
    with pytest.raises(KernelIOError) as caught:
        kernel.create("mtty", "mtty-1", U1)
    assert caught.value.errno == 5
    assert kernel.read_device(U1) is None
    kernel.create("mtty", "mtty-1", U1)  # the fault was for one create only


def test_remove_and_not_active(kernel: Sysfs) -> None:
    kernel.create("mtty", "mtty-1", U1)
    kernel.remove(U1)
    assert kernel.read_device(U1) is None
    with pytest.raises(NotActive):
        kernel.remove(U1)


def test_remove_of_held_device_is_busy_not_a_hang(kernel: Sysfs, sim: RunningSim) -> None:
    device = kernel.create("mtty", "mtty-1", U1)
    sim.control.hold(U1)
    assert kernel.group_in_use(device.iommu_group)
    with pytest.raises(Busy):
        kernel.remove(U1)
    assert kernel.read_device(U1) is not None
    sim.control.release(U1)
    assert not kernel.group_in_use(device.iommu_group)
    kernel.remove(U1)


@pytest.mark.timeout(30)
def test_remove_without_busy_check_blocks_until_released(kernel: Sysfs, sim: RunningSim) -> None:
    kernel.create("mtty", "mtty-1", U1)
    sim.control.hold(U1)
    done = threading.Event()

    def remove() -> None:
        kernel.remove(U1, check_busy=False)
        done.set()

    thread = threading.Thread(target=remove, daemon=True)
    thread.start()
    assert not done.wait(0.5)  # the kernel blocks the write while a VM holds the device
    sim.control.release(U1)
    thread.join(10)
    assert done.is_set()
    assert kernel.read_device(U1) is None


def test_remove_fault_ebusy_is_busy(kernel: Sysfs, sim: RunningSim) -> None:
    kernel.create("mtty", "mtty-1", U1)
    sim.control.fault_remove(U1, "EBUSY")
    with pytest.raises(Busy):
        kernel.remove(U1)
    kernel.remove(U1)


def test_attributes_written_in_order_and_rejected_values(kernel: Sysfs) -> None:
    kernel.create("matrix", "vfio_ap-passthrough", U1)
    kernel.write_attribute(U1, "assign_adapter", "5")
    kernel.write_attribute(U1, "assign_domain", "0xab")
    matrix = kernel.read_attribute(U1, "matrix")
    assert "05.00ab" in matrix
    with pytest.raises(AttributeRejected, match="rejected value"):
        kernel.write_attribute(U1, "assign_adapter", "banana")
    with pytest.raises(AttributeRejected, match="no attribute"):
        kernel.write_attribute(U1, "assign_everything", "1")


def test_attribute_fault_is_reported(kernel: Sysfs, sim: RunningSim) -> None:
    kernel.create("matrix", "vfio_ap-passthrough", U2)
    sim.control.fault_attribute(U2, "assign_adapter", "EINVAL")
    with pytest.raises(AttributeRejected):
        kernel.write_attribute(U2, "assign_adapter", "1")
    kernel.write_attribute(U2, "assign_adapter", "1")


def test_unregister_removes_devices(kernel: Sysfs, sim: RunningSim) -> None:
    kernel.create("mtty", "mtty-1", U1)
    kernel.create("mdpy", "mdpy-vga", U2)
    sim.control.unregister("mtty")
    assert set(kernel.device_uuids()) == {U2}
    assert "mtty" not in kernel.parent_names()
    sim.control.register("mtty")
    assert kernel.available_instances("mtty", "mtty-1") == 24


#: vfio-ap's matrix with room for two devices: its probe answers EPERM when none is left.
SMALL_MATRIX = """
[[parent]]
name = "matrix"
devpath = "devices/vfio_ap/matrix"
subsystem = "matrix"
subsystem_path = "bus/matrix"
driver = "vfio_ap_mdev"
pools = { instances = 2 }
pool_errno = "EPERM"

[[parent.type]]
id = "vfio_ap-passthrough"
name = "VFIO AP Passthrough Device"
device_api = "vfio-ap"
pool = "instances"
vfio_ap = { max_adapter = 255, max_domain = 255 }
"""


def test_a_full_type_is_no_instances_whatever_the_errno() -> None:
    with running_sim(scenario_text=SMALL_MATRIX) as small:
        kernel = Sysfs(small.root)
        kernel.create("matrix", "vfio_ap-passthrough", U1)
        # With an instance left, a driver's EPERM is the driver's error, not "full".
        small.control.fault_create("matrix", "vfio_ap-passthrough", "EPERM")
        with pytest.raises(KernelIOError, match="EPERM") as driver_error:
            kernel.create("matrix", "vfio_ap-passthrough", U2)
        assert not isinstance(driver_error.value, NoInstancesAvailable)
        kernel.create("matrix", "vfio_ap-passthrough", U2)
        with pytest.raises(NoInstancesAvailable) as full:
            kernel.create("matrix", "vfio_ap-passthrough", "8a3c0000-0000-4000-8000-000000000003")
        assert "available_instances 0" in full.value.message
        assert "EPERM" in full.value.message
