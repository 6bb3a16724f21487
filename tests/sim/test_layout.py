# SPDX-License-Identifier: LGPL-2.1-or-later
"""The served tree: parents, types, devices, links and modes, as Linux lays them out."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from tests.sim.helpers import UUID_A, available, create, type_dir, write_errno
from tests.support.sim import RunningSim

pytestmark = pytest.mark.timeout(60, method="thread")


def test_parents_are_links_into_devices(sim: RunningSim) -> None:
    mdev_bus = sim.root / "class/mdev_bus"
    assert sorted(os.listdir(mdev_bus)) == ["0000:65:00.0", "matrix", "mbochs", "mdpy", "mtty"]
    assert os.readlink(mdev_bus / "mtty") == "../../devices/virtual/mtty/mtty"
    expected = {
        "mtty": "devices/virtual/mtty/mtty",
        "0000:65:00.0": "devices/pci0000:64/0000:64:00.0/0000:65:00.0",
        "matrix": "devices/vfio_ap/matrix",
    }
    for name, devpath in expected.items():
        link = mdev_bus / name
        assert not os.readlink(link).startswith("/")
        assert os.path.realpath(link) == str(sim.root / devpath)


@pytest.mark.parametrize(
    ("parent", "subsystem"),
    [("mtty", "mtty"), ("mdpy", "mdpy"), ("0000:65:00.0", "pci"), ("matrix", "matrix")],
)
def test_parent_subsystem_link_names_its_own_subsystem(
    sim: RunningSim, parent: str, subsystem: str
) -> None:
    link = sim.root / "class/mdev_bus" / parent / "subsystem"
    target = os.path.realpath(link)
    assert os.path.basename(target) == subsystem
    assert target.startswith(str(sim.root) + "/")
    assert os.path.isdir(target)


def test_type_directory_files(sim: RunningSim) -> None:
    mtty2 = type_dir(sim.root, "mtty", "mtty-2")
    # mtty has no description: the file is absent, not empty.
    assert sorted(os.listdir(mtty2)) == [
        "available_instances",
        "create",
        "device_api",
        "devices",
        "name",
    ]
    assert (mtty2 / "name").read_text() == "Dual port serial\n"
    assert (mtty2 / "device_api").read_text() == "vfio-pci\n"
    assert (mtty2 / "available_instances").read_text() == "12\n"
    nvidia = type_dir(sim.root, "0000:65:00.0", "nvidia-558")
    assert "framebuffer=4096M" in (nvidia / "description").read_text()
    ap = type_dir(sim.root, "matrix", "vfio_ap-passthrough")
    assert (ap / "device_api").read_text() == "vfio-ap\n"


def test_modes_and_directions(sim: RunningSim) -> None:
    mtty1 = type_dir(sim.root, "mtty", "mtty-1")
    assert stat.S_IMODE(os.stat(mtty1 / "create").st_mode) == 0o200
    assert stat.S_IMODE(os.stat(mtty1 / "available_instances").st_mode) == 0o444
    assert stat.S_ISLNK(os.lstat(sim.root / "class/mdev_bus/mtty").st_mode)
    # Root may open anything by permission bits; sysfs still refuses a direction it lacks.
    with pytest.raises(OSError) as read_create:
        os.open(mtty1 / "create", os.O_RDONLY)
    assert read_create.value.errno == errno.EACCES
    with pytest.raises(OSError) as write_name:
        os.open(mtty1 / "name", os.O_WRONLY)
    assert write_name.value.errno == errno.EACCES
    with pytest.raises(OSError) as new_file:
        os.open(mtty1 / "new", os.O_WRONLY | os.O_CREAT, 0o644)
    assert new_file.value.errno == errno.EACCES


def test_device_layout(sim: RunningSim) -> None:
    create(sim.root, "mtty", "mtty-2", UUID_A)
    bus_link = sim.root / "bus/mdev/devices" / UUID_A
    assert os.readlink(bus_link) == f"../../../devices/virtual/mtty/mtty/{UUID_A}"
    device = sim.root / "devices/virtual/mtty/mtty" / UUID_A
    assert os.path.realpath(bus_link) == str(device)
    assert {"mdev_type", "remove", "iommu_group", "uevent", "driver", "subsystem"} <= set(
        os.listdir(device)
    )
    assert os.readlink(device / "mdev_type") == "../mdev_supported_types/mtty-2"
    mtty2 = os.path.realpath(type_dir(sim.root, "mtty", "mtty-2"))
    assert os.path.realpath(device / "mdev_type") == mtty2
    group = os.path.realpath(device / "iommu_group")
    assert os.path.dirname(group) == str(sim.root / "kernel/iommu_groups")
    assert os.path.realpath(os.path.join(group, "devices", UUID_A)) == str(device)
    assert stat.S_IMODE(os.stat(device / "remove").st_mode) == 0o200
    assert (device / "uevent").read_text() == "DRIVER=mtty\n"
    type_devices = type_dir(sim.root, "mtty", "mtty-2") / "devices"
    assert os.listdir(type_devices) == [UUID_A]
    assert os.path.realpath(type_devices / UUID_A) == str(device)
    assert (sim.control.vfio_group_path(int(os.path.basename(group)))).exists()


def test_pools_are_shared_across_types(sim: RunningSim) -> None:
    create(sim.root, "mtty", "mtty-2", UUID_A)
    assert available(sim.root, "mtty", "mtty-1") == 22
    assert available(sim.root, "mtty", "mtty-2") == 11


def test_unknown_paths_are_enoent(sim: RunningSim) -> None:
    assert write_errno(type_dir(sim.root, "mtty", "mtty-3") / "create", UUID_A) == errno.ENOENT
    assert not (sim.root / "class/mdev_bus/nope").exists()


# What the driver core gives every device, and the sample drivers' `vendor` groups, as the real
# kernel showed them (tests/realkernel/test_fidelity.py compares the whole probe).
POWER = {
    "async": (0o644, "disabled\n"),
    "autosuspend_delay_ms": (0o644, None),  # reading is EIO
    "control": (0o644, "auto\n"),
    "runtime_active_kids": (0o444, "0\n"),
    "runtime_active_time": (0o444, "0\n"),
    "runtime_enabled": (0o444, "disabled\n"),
    "runtime_status": (0o444, "unsupported\n"),
    "runtime_suspended_time": (0o444, "0\n"),
    "runtime_usage": (0o444, "0\n"),
}


def _assert_power_directory(directory: Path) -> None:
    power = directory / "power"
    assert sorted(os.listdir(power)) == sorted(POWER)
    for name, (mode, content) in POWER.items():
        assert stat.S_IMODE(os.stat(power / name).st_mode) == mode, name
        if content is None:
            with pytest.raises(OSError) as unreadable:
                (power / name).read_text()
            assert unreadable.value.errno == errno.EIO
        else:
            assert (power / name).read_text() == content, name


def test_every_device_has_a_power_directory(sim: RunningSim) -> None:
    create(sim.root, "mtty", "mtty-2", UUID_A)
    device = sim.root / "bus/mdev/devices" / UUID_A
    group = os.path.basename(os.readlink(device / "iommu_group"))
    for directory in (
        sim.root / "class/mdev_bus/mtty",
        sim.root / "class/mdev_bus/mdpy",
        device,
        next((device / "vfio-dev").iterdir()),
        sim.root / "class/vfio" / group,
    ):
        _assert_power_directory(directory)


@pytest.mark.parametrize(
    ("parent", "type_id", "name", "content"),
    [
        ("mtty", "mtty-1", "sample_mdev_dev", f"This is MDEV {UUID_A}\n"),
        ("mtty", "mtty-2", "sample_mdev_dev", f"This is MDEV {UUID_A}\n"),
        ("mdpy", "mdpy-vga", "resolution", "640x480\n"),
        ("mdpy", "mdpy-hd", "resolution", "1920x1080\n"),
        ("mbochs", "mbochs-small", "memory", "4 MB\n"),
        ("mbochs", "mbochs-large", "memory", "64 MB\n"),
    ],
)
def test_sample_drivers_read_only_vendor_attributes(
    sim: RunningSim, parent: str, type_id: str, name: str, content: str
) -> None:
    create(sim.root, parent, type_id, UUID_A)
    vendor = sim.root / "bus/mdev/devices" / UUID_A / "vendor"
    assert os.listdir(vendor) == [name]
    assert (vendor / name).read_text() == content
    assert stat.S_IMODE(os.stat(vendor / name).st_mode) == 0o444
    assert write_errno(vendor / name, "1") == errno.EACCES


def test_mbochs_describes_its_types_by_memory_only(sim: RunningSim) -> None:
    descriptions = {
        t: (type_dir(sim.root, "mbochs", t) / "description").read_text()
        for t in ("mbochs-small", "mbochs-medium", "mbochs-large")
    }
    assert descriptions == {
        "mbochs-small": "virtual display, 4 MB video memory\n",
        "mbochs-medium": "virtual display, 16 MB video memory\n",
        "mbochs-large": "virtual display, 64 MB video memory\n",
    }
