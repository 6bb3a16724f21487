# SPDX-License-Identifier: LGPL-2.1-or-later
"""The kernel layer refuses every name that could lead a write outside its directory.

These tests build a plain directory tree shaped like sysfs, because the attack they model (a
symlink or a dot-dot planted where an attribute is expected) is one the real kernel and the
emulated one never offer: the point is what mdevd does if the tree is hostile.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from mdevd import validate
from mdevd.errors import AttributeRejected, InvalidName, InvalidUUID, NotActive
from mdevd.kernel import Sysfs

UUID = "9a4b8f2e-52a7-4b1c-9d2e-0f5e1c3a7b6d"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """root/ shaped like sysfs with one device; `outside` sits next to root."""
    root = tmp_path / "sys"
    parent = root / "devices" / "virtual" / "mtty" / "mtty"
    type_dir = parent / "mdev_supported_types" / "mtty-1"
    type_dir.mkdir(parents=True)
    (type_dir / "available_instances").write_text("24\n")
    (type_dir / "device_api").write_text("vfio-pci\n")
    (type_dir / "create").write_text("")
    device = parent / UUID
    device.mkdir()
    (device / "mdev_type").symlink_to("../mdev_supported_types/mtty-1")
    (device / "remove").write_text("")
    (device / "assign_adapter").write_text("")
    (root / "class" / "mdev_bus").mkdir(parents=True)
    (root / "class" / "mdev_bus" / "mtty").symlink_to("../../devices/virtual/mtty/mtty")
    (root / "bus" / "mdev" / "devices").mkdir(parents=True)
    (root / "bus" / "mdev" / "devices" / UUID).symlink_to(
        f"../../../devices/virtual/mtty/mtty/{UUID}"
    )
    outside = tmp_path / "outside"
    outside.write_text("untouched")
    (device / "evil_link").symlink_to(outside)
    (device / "subdir").mkdir()
    return root


def outside_untouched(tree: Path) -> bool:
    return (tree.parent / "outside").read_text() == "untouched"


@pytest.mark.parametrize(
    "name",
    [
        "../outside",
        "../../outside",
        "..",
        ".",
        "a/b",
        "/etc/passwd",
        "x\0y",
        "",
        "a" * 256,
        "has space",
        "tab\there",
        "naïve",
        ".hidden",
    ],
)
def test_hostile_attribute_names_are_refused(tree: Path, name: str) -> None:
    sysfs = Sysfs(tree)
    with pytest.raises(InvalidName):
        sysfs.write_attribute(UUID, name, "1")
    assert outside_untouched(tree)


def test_symlinked_attribute_is_refused_and_target_untouched(tree: Path) -> None:
    with pytest.raises(AttributeRejected, match="symbolic link"):
        Sysfs(tree).write_attribute(UUID, "evil_link", "pwned")
    assert outside_untouched(tree)


def test_directory_attribute_is_refused(tree: Path) -> None:
    with pytest.raises(AttributeRejected):
        Sysfs(tree).write_attribute(UUID, "subdir", "1")


@pytest.mark.parametrize("name", ["remove", "uevent", "mdev_type", "iommu_group", "driver"])
def test_driver_core_files_are_not_attributes(tree: Path, name: str) -> None:
    with pytest.raises(AttributeRejected, match="not a device attribute"):
        Sysfs(tree).write_attribute(UUID, name, "1")
    assert (tree / "devices/virtual/mtty/mtty" / UUID / "remove").read_text() == ""


def test_missing_attribute_is_rejected_not_created(tree: Path) -> None:
    with pytest.raises(AttributeRejected, match="no attribute"):
        Sysfs(tree).write_attribute(UUID, "assign_domain", "1")
    assert not (tree / "devices/virtual/mtty/mtty" / UUID / "assign_domain").exists()


def test_regular_attribute_is_written(tree: Path) -> None:
    Sysfs(tree).write_attribute(UUID, "assign_adapter", "5")
    assert (tree / "devices/virtual/mtty/mtty" / UUID / "assign_adapter").read_text() == "5"


def test_attribute_value_with_nul_or_oversized_is_refused(tree: Path) -> None:
    sysfs = Sysfs(tree)
    with pytest.raises(InvalidName):
        sysfs.write_attribute(UUID, "assign_adapter", "1\0" + "2")
    with pytest.raises(InvalidName):
        sysfs.write_attribute(UUID, "assign_adapter", "x" * 5000)


@pytest.mark.parametrize(
    "uuid",
    [
        "../../../outside",
        f"{UUID}/..",
        UUID + "x",
        UUID[:-1],
        "not-a-uuid",
        "",
        f" {UUID}",
        UUID.replace("-", ""),
    ],
)
def test_hostile_uuids_are_refused_everywhere(tree: Path, uuid: str) -> None:
    sysfs = Sysfs(tree)
    calls: list[Callable[[], object]] = [
        lambda: sysfs.write_attribute(uuid, "assign_adapter", "1"),
        lambda: sysfs.remove(uuid),
        lambda: sysfs.create("mtty", "mtty-1", uuid),
        lambda: sysfs.read_device(uuid),
    ]
    for call in calls:
        with pytest.raises(InvalidUUID):
            call()
    assert outside_untouched(tree)


@pytest.mark.parametrize("name", ["..", "../..", "mtty/../..", "x\0", "", "a" * 300])
def test_hostile_parent_and_type_names_are_refused(tree: Path, name: str) -> None:
    sysfs = Sysfs(tree)
    with pytest.raises(InvalidName):
        sysfs.create(name, "mtty-1", UUID)
    with pytest.raises(InvalidName):
        sysfs.create("mtty", name, UUID)
    with pytest.raises(InvalidName):
        sysfs.read_types(name)
    assert (tree / "devices/virtual/mtty/mtty/mdev_supported_types/mtty-1/create").read_text() == ""


def test_upper_case_uuid_is_canonicalised(tree: Path) -> None:
    device = Sysfs(tree).read_device(UUID.upper())
    assert device is not None
    assert device.uuid == UUID
    assert device.parent == "mtty"
    assert device.type_id == "mtty-1"
    assert device.iommu_group == -1


def test_foreign_entries_in_the_devices_dir_are_ignored(tree: Path) -> None:
    os.symlink("/", tree / "bus/mdev/devices/not-a-uuid")
    assert Sysfs(tree).device_uuids() == [UUID]


def test_attribute_of_absent_device_is_not_active(tree: Path) -> None:
    with pytest.raises(NotActive):
        Sysfs(tree).write_attribute("00000000-0000-0000-0000-000000000000", "assign_adapter", "1")


def test_validation_accepts_real_kernel_names() -> None:
    for parent in ("0000:65:00.0", "0.0.0052", "matrix", "mtty"):
        assert validate.parent_name(parent) == parent
    for type_id in ("nvidia-558", "mtty-2", "vfio_ap-passthrough", "i915-GVTg_V5_4"):
        assert validate.type_id(type_id) == type_id
    for attribute in ("assign_adapter", "assign_control_domain", "example-attribute"):
        assert validate.attribute_name(attribute) == attribute
