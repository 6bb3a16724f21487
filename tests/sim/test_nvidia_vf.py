# SPDX-License-Identifier: LGPL-2.1-or-later
"""NVIDIA's vendor-specific VFIO vGPUs on SR-IOV VFs (`[[nvidia_gpu]]`, mdevd/sim/sriov.py).

"note §N" is a section of the research note on the per-VF sysfs interface
(shared notes, nvidia-vendor-vfio.md); its sources are named where a rule comes from.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from pathlib import Path

import pytest

from mdevd.sim import scenario
from mdevd.sim.control import ControlError, UeventRecord
from tests.sim.conftest import SimFactory
from tests.sim.helpers import write, write_errno
from tests.support.sim import RunningSim

pytestmark = pytest.mark.timeout(60, method="thread")

PF = "0000:3d:00.0"
VF0, VF1, VF2 = "0000:3d:00.4", "0000:3d:00.5", "0000:3d:00.6"
PF2 = "0000:5e:00.0"
HEADER = "ID    : vGPU Name\n"
L40S_TYPES = [
    (1145, "NVIDIA L40S-1B"),
    (1146, "NVIDIA L40S-2B"),
    (1147, "NVIDIA L40S-1Q"),
    (1148, "NVIDIA L40S-2Q"),
    (1149, "NVIDIA L40S-3Q"),
    (1150, "NVIDIA L40S-4Q"),
    (1152, "NVIDIA L40S-8Q"),
    (1156, "NVIDIA L40S-48Q"),
    (2164, "NVIDIA L40S-3B"),
]

#: A small GPU: 4 VFs over a function-7 boundary, 3- and 4-digit ids (RFC v2's RTX 6000 Ada
#: sample has 941..950), 8 GB. `{extra}` takes more GPU keys.
SMALL = """
[[nvidia_gpu]]
name = "0000:81:00.0"
devpath = "devices/pci0000:80/0000:80:01.0/0000:81:00.0"
first_vf = "0000:81:00.6"
total_vfs = 4
enabled_vfs = 4
framebuffer = 8
{extra}
uevent = {{ PCI_ID = "10DE:26B1" }}

[[nvidia_gpu.type]]
id = 941
name = "NVIDIA RTX6000-Ada-1Q"
size = 1

[[nvidia_gpu.type]]
id = 942
name = "NVIDIA RTX6000-Ada-2Q"
size = 2

[[nvidia_gpu.type]]
id = 1523
name = "NVIDIA RTX6000-Ada-4Q"
size = 4
"""
SMALL_VFS = ["0000:81:00.6", "0000:81:00.7", "0000:81:01.0", "0000:81:01.1"]


@pytest.fixture
def sim(start_sim: SimFactory) -> RunningSim:
    return start_sim("nvidia-vf")


def small(start_sim: SimFactory, extra: str = "") -> RunningSim:
    return start_sim(scenario_text=SMALL.format(extra=extra))


def device(sim: RunningSim, address: str) -> Path:
    return sim.root / "bus/pci/devices" / address


def vgpu_file(sim: RunningSim, address: str, name: str) -> Path:
    return device(sim, address) / "nvidia" / name


def creatable(sim: RunningSim, address: str) -> str:
    return vgpu_file(sim, address, "creatable_vgpu_types").read_text()


def current(sim: RunningSim, address: str) -> str:
    return vgpu_file(sim, address, "current_vgpu_type").read_text()


def set_type(sim: RunningSim, address: str, value: str | bytes) -> int | None:
    """The errno of one write to the VF's current_vgpu_type, or None."""
    return write_errno(vgpu_file(sim, address, "current_vgpu_type"), value)


def listing(types: list[tuple[int, str]]) -> str:
    return HEADER + "".join(f"{number:<5d} : {name}\n" for number, name in types)


def events_since(sim: RunningSim, seqnum: int) -> list[UeventRecord]:
    return [e for e in sim.control.uevents() if e.seqnum > seqnum]


def last_seqnum(sim: RunningSim) -> int:
    events = sim.control.uevents()
    return events[-1].seqnum if events else 0


def summary(events: list[UeventRecord]) -> list[tuple[str, str, str]]:
    return [(e.action, e.devpath.rsplit("/", 1)[-1], e.subsystem) for e in events]


# -- layout -----------------------------------------------------------------------------------


def test_pf_directory(sim: RunningSim) -> None:
    # The PCI core's SR-IOV files (drivers/pci/iov.c) and the driver core's links; no nvidia/
    # on the PF (note §1, R5xx source: the group is created only if is_virtfn).
    pf = device(sim, PF)
    assert os.readlink(pf) == "../../../devices/pci0000:3a/0000:3a:00.0/0000:3d:00.0"
    assert not (pf / "nvidia").exists()
    assert (pf / "sriov_totalvfs").read_text() == "16\n"
    assert (pf / "sriov_numvfs").read_text() == "16\n"
    assert (pf / "sriov_offset").read_text() == "4\n"
    assert (pf / "sriov_stride").read_text() == "1\n"
    assert (pf / "sriov_vf_device").read_text() == "26b9\n"
    assert (pf / "vendor").read_text() == "0x10de\n"
    assert (pf / "device").read_text() == "0x26b9\n"
    assert (pf / "class").read_text() == "0x030200\n"
    assert stat.S_IMODE(os.stat(pf / "sriov_totalvfs").st_mode) == 0o444
    assert stat.S_IMODE(os.stat(pf / "sriov_numvfs").st_mode) == 0o644
    assert os.path.realpath(pf / "driver") == str(sim.root / "bus/pci/drivers/nvidia")
    assert os.path.realpath(pf / "subsystem") == str(sim.root / "bus/pci")
    assert (pf / "uevent").read_text() == (
        "DRIVER=nvidia\nPCI_CLASS=30200\nPCI_ID=10DE:26B9\nPCI_SUBSYS_ID=10DE:1851\n"
        f"PCI_SLOT_NAME={PF}\nMODALIAS=pci:v000010DEd000026B9sv000010DEsd00001851bc03sc02i00\n"
    )
    virtfns = sorted(
        (n for n in os.listdir(pf) if n.startswith("virtfn")), key=lambda n: int(n[6:])
    )
    assert len(virtfns) == 16
    assert os.readlink(pf / "virtfn0") == f"../{VF0}"
    assert os.path.realpath(pf / "virtfn0") == os.path.realpath(device(sim, VF0))


def test_vf_addresses_follow_routing_id_arithmetic(sim: RunningSim) -> None:
    # VF i is first_vf + i functions: function 7 is followed by function 0 of the next device
    # (pci_iov_virtfn_devfn: devfn + offset + stride * i).
    pf = device(sim, PF)
    names = [os.path.basename(os.readlink(pf / f"virtfn{i}")) for i in range(16)]
    assert names[:6] == [VF0, VF1, VF2, "0000:3d:00.7", "0000:3d:01.0", "0000:3d:01.1"]
    assert names[-1] == "0000:3d:02.3"


def test_vf_directory(sim: RunningSim) -> None:
    # A VF is its PF's sibling (virtfn->dev.parent = dev->dev.parent), with physfn, its own
    # iommu group, and while nvidia is bound the six files seen on real hardware (note §1,
    # cubecos #312 [hw]) and a VFIO device (note §5, KubeVirt #17642).
    vf = device(sim, VF0)
    pf_dir = os.path.realpath(device(sim, PF))
    assert os.path.dirname(os.path.realpath(vf)) == os.path.dirname(pf_dir)
    assert os.path.realpath(vf / "physfn") == pf_dir
    assert os.readlink(vf / "physfn") == f"../{PF}"
    assert os.path.realpath(vf / "driver") == str(sim.root / "bus/pci/drivers/nvidia")
    assert os.path.realpath(vf / "subsystem") == str(sim.root / "bus/pci")
    assert (vf / "vendor").read_text() == "0x10de\n"
    assert (vf / "device").read_text() == "0x26b9\n"
    assert sorted(os.listdir(vf / "nvidia")) == [
        "creatable_vgpu_types",
        "current_vgpu_type",
        "gpu_instance_id",
        "placement_id",
        "vgpu_params",
        "warm_update",
    ]
    modes = {n: stat.S_IMODE(os.stat(vf / "nvidia" / n).st_mode) for n in os.listdir(vf / "nvidia")}
    assert modes.pop("creatable_vgpu_types") == 0o444
    assert set(modes.values()) == {0o644}
    uevent = (vf / "uevent").read_text().splitlines()
    assert uevent[0] == "DRIVER=nvidia"
    assert f"PCI_SLOT_NAME={VF0}" in uevent
    assert "PCI_ID=10DE:26B9" in uevent
    (vfio_dev,) = os.listdir(vf / "vfio-dev")
    assert vfio_dev.startswith("vfio")
    assert os.path.realpath(sim.root / "class/vfio-dev" / vfio_dev) == str(
        Path(os.path.realpath(vf)) / "vfio-dev" / vfio_dev
    )


def test_each_vf_has_its_own_iommu_group_and_vfio_node(sim: RunningSim) -> None:
    # Each VF is its own iommu group, /dev/vfio/<group> (note §5); groups come from the same
    # pool as mdev devices', starting at first_iommu_group.
    groups = []
    for index in range(16):
        vf = device(sim, PF) / f"virtfn{index}"
        group = os.path.basename(os.readlink(vf / "iommu_group"))
        groups.append(int(group))
        members = os.listdir(sim.root / "kernel/iommu_groups" / group / "devices")
        assert members == [os.path.basename(os.readlink(device(sim, PF) / f"virtfn{index}"))]
        assert sim.control.vfio_group_path(int(group)).exists()
        assert (sim.root / "class/vfio" / group).is_symlink()
    assert groups == list(range(16))


def test_bus_pci_drivers_nvidia_lists_the_bound_pfs_and_vfs(sim: RunningSim) -> None:
    # How the daemon finds VFs: the nvidia driver's directory holds a link per bound device.
    names = os.listdir(sim.root / "bus/pci/drivers/nvidia")
    vfs = [os.path.basename(os.readlink(device(sim, PF) / f"virtfn{i}")) for i in range(16)]
    assert sorted(names) == sorted([PF, PF2, *vfs])
    for name in names:
        assert os.path.realpath(sim.root / "bus/pci/drivers/nvidia" / name) == os.path.realpath(
            device(sim, name)
        )
    # The second GPU has SR-IOV off: no VFs anywhere.
    assert (device(sim, PF2) / "sriov_numvfs").read_text() == "0\n"
    assert not [n for n in os.listdir(device(sim, PF2)) if n.startswith("virtfn")]


# -- creatable_vgpu_types ------------------------------------------------------------------------


def test_creatable_lists_every_type_on_a_gpu_without_vgpus(sim: RunningSim) -> None:
    # note §2: header always, then "%-5d : %s\n" per type (R5xx source; the L40S capture of
    # harvester/pcidevices gpuhelper.go shows 4-digit ids followed by two spaces).
    assert creatable(sim, VF0) == listing(L40S_TYPES)
    assert creatable(sim, VF0).startswith("ID    : vGPU Name\n1145  : NVIDIA L40S-1B\n")


def test_creatable_format_is_byte_exact_for_3_and_4_digit_ids(start_sim: SimFactory) -> None:
    # note §2: under %-5d a 3-digit id is followed by 3 spaces before the colon (RFC v2's
    # "941   : NVIDIA RTX6000-Ada-1Q"), a 4-digit id by 2.
    sim = small(start_sim)
    raw = vgpu_file(sim, SMALL_VFS[0], "creatable_vgpu_types").read_bytes()
    assert raw == (
        b"ID    : vGPU Name\n"
        b"941   : NVIDIA RTX6000-Ada-1Q\n"
        b"942   : NVIDIA RTX6000-Ada-2Q\n"
        b"1523  : NVIDIA RTX6000-Ada-4Q\n"
    )


def test_a_vf_with_a_type_lists_the_header_only(sim: RunningSim) -> None:
    # note §4: "On a configured VF this catalog is frequently empty or reduced" (PR #192); the
    # proprietary driver prints the header unconditionally (note §2, R5xx source).
    assert set_type(sim, VF0, "1147\n") is None
    assert creatable(sim, VF0) == HEADER


def test_capacity_collapses_to_the_first_vgpus_size(sim: RunningSim) -> None:
    # note §4, cubecos PR #1338 [hw]: after the first write every remaining VF's list
    # collapsed to that size (homogeneous mode, NVIDIA's default).
    assert set_type(sim, VF0, "1149") is None  # L40S-3Q, 3 GB
    same_size = [(1149, "NVIDIA L40S-3Q"), (2164, "NVIDIA L40S-3B")]
    for index in range(1, 16):
        vf = os.path.basename(os.readlink(device(sim, PF) / f"virtfn{index}"))
        assert creatable(sim, vf) == listing(same_size)
    # Clearing the only vGPU gives the whole list back.
    assert set_type(sim, VF0, "0") is None
    assert creatable(sim, VF1) == listing(L40S_TYPES)


def test_a_full_gpu_lists_the_header_only(sim: RunningSim) -> None:
    # note §4, PR #192 README: "On a fully consumed card that catalog is reduced to its header
    # on every function". One 48Q takes the whole 48 GB.
    assert set_type(sim, VF0, "1156") is None
    for index in range(1, 16):
        vf = os.path.basename(os.readlink(device(sim, PF) / f"virtfn{index}"))
        assert creatable(sim, vf) == HEADER


def test_same_size_types_stay_listed_only_while_another_fits(start_sim: SimFactory) -> None:
    # note §4: the list is computed per VF at read time and follows the siblings (cubecos
    # #1316 [hw]: same-size 3Q + 3A both succeeded). 8 GB: four 2 GB vGPUs fill it.
    sim = small(start_sim)
    for vf in SMALL_VFS[:3]:
        assert set_type(sim, vf, "942") is None
    assert creatable(sim, SMALL_VFS[3]) == listing([(942, "NVIDIA RTX6000-Ada-2Q")])
    assert set_type(sim, SMALL_VFS[3], "942") is None
    assert set_type(sim, SMALL_VFS[0], "0") is None
    assert creatable(sim, SMALL_VFS[0]) == listing([(942, "NVIDIA RTX6000-Ada-2Q")])


def test_heterogeneous_lists_every_type_that_still_fits(start_sim: SimFactory) -> None:
    # note §4, Proxmox dc023d60: mixed mode exists but is not the default. A vGPU of size S
    # takes an S-aligned range: after a 2 GB one at 0..2, a 4 GB one still fits at 4..8.
    sim = small(start_sim, "heterogeneous = true")
    vfs = SMALL_VFS
    assert set_type(sim, vfs[0], "942") is None
    assert creatable(sim, vfs[1]) == listing(
        [
            (941, "NVIDIA RTX6000-Ada-1Q"),
            (942, "NVIDIA RTX6000-Ada-2Q"),
            (1523, "NVIDIA RTX6000-Ada-4Q"),
        ]
    )
    assert set_type(sim, vfs[1], "1523") is None
    assert vgpu_file(sim, vfs[1], "placement_id").read_text() == "4\n"
    assert creatable(sim, vfs[2]) == listing(
        [(941, "NVIDIA RTX6000-Ada-1Q"), (942, "NVIDIA RTX6000-Ada-2Q")]
    )
    assert set_type(sim, vfs[2], "942") is None
    assert creatable(sim, vfs[3]) == HEADER
    assert set_type(sim, vfs[3], "941") == errno.ENOSPC


# -- current_vgpu_type ---------------------------------------------------------------------------


def test_current_type_reads_zero_then_the_id(sim: RunningSim) -> None:
    # note §3, R5xx source: sprintf(buf, "%d\n", type_id), 0 when no vGPU exists; cubecos #312
    # [hw] read 0, then the id written.
    assert current(sim, VF0) == "0\n"
    assert set_type(sim, VF0, "1145\n") is None
    assert current(sim, VF0) == "1145\n"
    assert set_type(sim, VF0, "0\n") is None
    assert current(sim, VF0) == "0\n"


def test_clearing_without_a_type_is_eperm(sim: RunningSim) -> None:
    # note §3, R5xx source: "Failed to remove vGPU. No vGPU exists on current device" -> -EPERM.
    assert set_type(sim, VF0, "0") == errno.EPERM


@pytest.mark.parametrize("second", ["1145", "1147", "1146"])
def test_setting_a_type_when_one_is_set_is_eperm_even_the_same(
    sim: RunningSim, second: str
) -> None:
    # note §3, R5xx source: "vGPU device already created with type ID: %d" -> -EPERM, even
    # for the same id (hence Proxmox writes 0 first, NTNU compares before writing).
    assert set_type(sim, VF0, "1145") is None
    assert set_type(sim, VF0, second) == errno.EPERM
    assert current(sim, VF0) == "1145\n"


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"1145", None),
        (b"1145\n", None),
        (b"+1145", None),
        (b"01145", None),  # base 10: a leading zero is not octal
        (b"1145\0junk", None),  # the store sees a C string
        (b" 1145", errno.EINVAL),
        (b"1145 ", errno.EINVAL),
        (b"1145\n\n", errno.EINVAL),
        (b"0x47b", errno.EINVAL),
        (b"abc", errno.EINVAL),
        (b"\n", errno.EINVAL),
        (b"-", errno.EINVAL),
        (b"9223372036854775808", errno.ERANGE),  # LONG_MAX + 1
        (b"99999999999999999999999", errno.ERANGE),
        (b"-9223372036854775809", errno.ERANGE),
    ],
)
def test_current_type_is_parsed_like_kstrtol(
    sim: RunningSim, payload: bytes, expected: int | None
) -> None:
    # note §3, R5xx source: kstrtol(buf, 10, &l); a parse failure returns kstrtol's error.
    assert set_type(sim, VF0, payload) == expected
    assert current(sim, VF0) == ("1145\n" if expected is None else "0\n")


def test_an_unknown_id_is_the_unknown_type_errno(sim: RunningSim) -> None:
    # note §3, RFC v2: unknown id -> -ENODEV (the scenario's unknown_type_errno). A negative
    # number parses and is no type either.
    assert set_type(sim, VF0, "557") == errno.ENODEV
    assert set_type(sim, VF0, "-1") == errno.ENODEV
    assert current(sim, VF0) == "0\n"


def test_another_size_in_homogeneous_mode_is_the_size_conflict_errno(sim: RunningSim) -> None:
    # note §3: cubecos #1316 [hw] was refused 3Q then 6Q on a sibling VF (errno not shown);
    # RFC v2 answers -EINVAL (the scenario's size_conflict_errno).
    assert set_type(sim, VF0, "1149") is None
    assert set_type(sim, VF1, "1152") == errno.EINVAL
    assert set_type(sim, VF1, "2164") is None  # the same size: fine (3Q + 3B)


def test_no_room_is_the_full_errno(sim: RunningSim) -> None:
    # note §3, RFC v2: GPU full -> -ENOSPC (the scenario's full_errno).
    assert set_type(sim, VF0, "1156") is None
    assert set_type(sim, VF1, "1156") == errno.ENOSPC


def test_errnos_are_settings(start_sim: SimFactory) -> None:
    # The note marks the proprietary driver's errnos [unverified] (§3): one setting each.
    sim = small(
        start_sim,
        'size_conflict_errno = "EPERM"\nunknown_type_errno = "EINVAL"\nfull_errno = "EUSERS"',
    )
    vfs = SMALL_VFS
    assert set_type(sim, vfs[0], "12345") == errno.EINVAL
    assert set_type(sim, vfs[0], "1523") is None
    assert set_type(sim, vfs[1], "942") == errno.EPERM
    assert set_type(sim, vfs[1], "1523") is None
    assert set_type(sim, vfs[2], "1523") == errno.EUSERS


def test_clearing_resets_the_placement(sim: RunningSim) -> None:
    # note §1: the cubecos #312 [hw] host read placement_id 0 and gpu_instance_id 3 (MIG) after
    # a write; their meaning is [unverified]. Here placement_id is the vGPU's start in GB.
    assert vgpu_file(sim, VF0, "placement_id").read_text() == "0\n"
    assert vgpu_file(sim, VF0, "gpu_instance_id").read_text() == "0\n"
    assert vgpu_file(sim, VF0, "vgpu_params").read_text() == "\n"
    assert vgpu_file(sim, VF0, "warm_update").read_text() == "0\n"
    assert set_type(sim, VF0, "1149") is None
    assert set_type(sim, VF1, "1149") is None
    assert vgpu_file(sim, VF1, "placement_id").read_text() == "3\n"
    write(vgpu_file(sim, VF1, "gpu_instance_id"), "3\n")
    assert vgpu_file(sim, VF1, "gpu_instance_id").read_text() == "3\n"
    assert set_type(sim, VF1, "0") is None
    assert vgpu_file(sim, VF1, "placement_id").read_text() == "0\n"
    assert vgpu_file(sim, VF1, "gpu_instance_id").read_text() == "0\n"
    # The freed range is taken again first.
    assert set_type(sim, VF2, "2164") is None
    assert vgpu_file(sim, VF2, "placement_id").read_text() == "3\n"


def test_the_plain_attributes_keep_what_is_written(sim: RunningSim) -> None:
    # note §1: vgpu_params and warm_update are rw; their formats are [unverified].
    write(vgpu_file(sim, VF0, "vgpu_params"), "frame_rate_limiter=0\n")
    write(vgpu_file(sim, VF0, "warm_update"), "1")
    assert vgpu_file(sim, VF0, "vgpu_params").read_text() == "frame_rate_limiter=0\n"
    assert vgpu_file(sim, VF0, "warm_update").read_text() == "1\n"


def test_writing_the_type_sends_no_uevent(sim: RunningSim) -> None:
    # note §7: neither the R5xx nor the RFC v2 store calls kobject_uevent.
    before = last_seqnum(sim)
    assert set_type(sim, VF0, "1145") is None
    assert set_type(sim, VF0, "1145") == errno.EPERM
    assert set_type(sim, VF0, "0") is None
    assert set_type(sim, VF0, "0") == errno.EPERM
    assert events_since(sim, before) == []


# -- a VM holding the VF -------------------------------------------------------------------------


def test_writes_are_busy_while_a_vm_holds_the_vf(sim: RunningSim) -> None:
    # note §3, RFC v2: current_vgpu_type_store returns -EBUSY if vdev_is_opened ("The VFIO
    # device must be closed before the user can de-select the vGPU type").
    assert set_type(sim, VF0, "1145") is None
    sim.control.hold_vf(VF0)
    assert set_type(sim, VF0, "0") == errno.EBUSY
    assert set_type(sim, VF0, "1145") == errno.EBUSY
    assert current(sim, VF0) == "1145\n"
    # Its siblings are not affected.
    assert set_type(sim, VF1, "1145") is None
    sim.control.release_vf(VF0)
    assert set_type(sim, VF0, "0") is None


def test_clearing_stays_busy_for_release_busy_seconds(start_sim: SimFactory) -> None:
    # note §3, Proxmox 48ada698: writing 0 is "not always immediately ready after QEMU
    # closes", so Proxmox retries for up to 10 s.
    sim = small(start_sim, "release_busy_seconds = 0.6")
    vf = SMALL_VFS[0]
    assert set_type(sim, vf, "941") is None
    sim.control.hold_vf(vf)
    sim.control.release_vf(vf)
    released = time.monotonic()
    assert set_type(sim, vf, "0") == errno.EBUSY
    while set_type(sim, vf, "0") == errno.EBUSY:
        assert time.monotonic() - released < 5
        time.sleep(0.05)
    assert time.monotonic() - released >= 0.6
    assert current(sim, vf) == "0\n"


def test_the_busy_errno_is_a_setting(start_sim: SimFactory) -> None:
    # note §3: for the proprietary driver the errno is [unverified].
    sim = small(start_sim, 'busy_errno = "EAGAIN"')
    assert set_type(sim, SMALL_VFS[0], "941") is None
    sim.control.hold_vf(SMALL_VFS[0])
    assert set_type(sim, SMALL_VFS[0], "0") == errno.EAGAIN


def test_holding_a_vf_without_a_type_is_enodev(sim: RunningSim) -> None:
    # note §3, R5xx source: nv_vfio_pci_open_device returns -ENODEV ("current_vgpu_type of VF
    # not configured").
    with pytest.raises(ControlError) as failure:
        sim.control.hold_vf(VF0)
    assert failure.value.errno == errno.ENODEV


def test_the_vfio_group_is_busy_while_held(sim: RunningSim) -> None:
    # vfio allows one opener of /dev/vfio/<group>: hypeman's in-use check (note §5) and the
    # daemon's see EBUSY while a VM has it.
    group = int(os.path.basename(os.readlink(device(sim, VF0) / "iommu_group")))
    node = sim.control.vfio_group_path(group)
    fd = os.open(node, os.O_RDWR)
    with pytest.raises(OSError) as second:
        os.open(node, os.O_RDWR)
    assert second.value.errno == errno.EBUSY
    os.close(fd)
    assert set_type(sim, VF0, "1145") is None  # an open group is not an open device
    sim.control.hold_vf(VF0)
    with pytest.raises(OSError) as held:
        os.close(os.open(node, os.O_RDWR))
    assert held.value.errno == errno.EBUSY
    sim.control.release_vf(VF0)
    deadline = time.monotonic() + 5
    while True:  # FUSE releases the earlier handle asynchronously
        try:
            os.close(os.open(node, os.O_RDWR))
            break
        except OSError as exc:
            assert exc.errno == errno.EBUSY and time.monotonic() < deadline
            time.sleep(0.02)


# -- SR-IOV enabling and disabling -------------------------------------------------------------


def test_enabling_sriov_adds_and_binds_each_vf(sim: RunningSim) -> None:
    # note §7 [unverified] and drivers/pci/iov.c: per VF `add`, `change` (the virtfn/physfn
    # links), nvidia's probe (vfio group and vfio-dev `add`, nvidia/ created) and `bind`
    # DRIVER=nvidia; then the PF's `change`.
    pf = device(sim, PF2)
    before = last_seqnum(sim)
    write(pf / "sriov_numvfs", "2\n")
    assert (pf / "sriov_numvfs").read_text() == "2\n"
    vfs = ["0000:5e:00.4", "0000:5e:00.5"]
    events = events_since(sim, before)
    groups = [os.path.basename(os.readlink(device(sim, vf) / "iommu_group")) for vf in vfs]
    per_vf = [
        [
            ("add", vf, "pci"),
            ("change", vf, "pci"),
            ("add", group, "vfio"),
            ("add", os.listdir(device(sim, vf) / "vfio-dev")[0], "vfio-dev"),
            ("bind", vf, "pci"),
        ]
        for vf, group in zip(vfs, groups, strict=True)
    ]
    assert summary(events) == [*per_vf[0], *per_vf[1], ("change", PF2, "pci")]
    bind = events[4]
    assert bind.properties["DRIVER"] == "nvidia"
    assert bind.properties["PCI_SLOT_NAME"] == vfs[0]
    assert "DRIVER" not in events[0].properties
    assert creatable(sim, vfs[0]) == listing(
        [
            (1145, "NVIDIA L40S-1B"),
            (1147, "NVIDIA L40S-1Q"),
            (1149, "NVIDIA L40S-3Q"),
            (2164, "NVIDIA L40S-3B"),
        ]
    )
    assert sorted(n for n in os.listdir(pf) if n.startswith("virtfn")) == ["virtfn0", "virtfn1"]
    assert set(vfs) <= set(os.listdir(sim.root / "bus/pci/drivers/nvidia"))


def test_disabling_sriov_unbinds_and_removes_each_vf(sim: RunningSim) -> None:
    # drivers/pci/iov.c sriov_del_vfs: VF 0 first; each unbinds (vfio-dev and group go first,
    # no DRIVER in `unbind`) and is removed. The types set on them go with them.
    pf = device(sim, PF2)
    write(pf / "sriov_numvfs", "2")
    assert set_type(sim, "0000:5e:00.4", "1149") is None
    before = last_seqnum(sim)
    write(pf / "sriov_numvfs", "0")
    actions = [(a, name, sub) for a, name, sub in summary(events_since(sim, before))]
    assert [a for a, _, sub in actions if sub == "pci"] == ["unbind", "remove"] * 2
    assert [n for _, n, sub in actions if sub == "pci"] == ["0000:5e:00.4"] * 2 + [
        "0000:5e:00.5"
    ] * 2
    assert [a for a, _, sub in actions if sub != "pci"] == ["remove"] * 4
    assert all("DRIVER" not in e.properties for e in events_since(sim, before))
    assert not device(sim, "0000:5e:00.4").exists()
    assert not [n for n in os.listdir(pf) if n.startswith("virtfn")]
    write(pf / "sriov_numvfs", "1")
    assert current(sim, "0000:5e:00.4") == "0\n"


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ("17", errno.ERANGE),  # more than sriov_totalvfs
        ("65536", errno.EINVAL),  # kstrtou16 fails: any failure is EINVAL
        ("x", errno.EINVAL),
        ("-1", errno.EINVAL),
        ("0x10", None),  # base 0, as kstrtou16(buf, 0)
        ("16\n", None),
    ],
)
def test_sriov_numvfs_parses_like_the_pci_core(
    sim: RunningSim, payload: str, expected: int | None
) -> None:
    # drivers/pci/iov.c sriov_numvfs_store.
    assert write_errno(device(sim, PF2) / "sriov_numvfs", payload) == expected


def test_sriov_numvfs_refuses_a_change_while_enabled(sim: RunningSim) -> None:
    # sriov_numvfs_store: the current number does nothing; another non-zero one is EBUSY
    # ("Disable before enabling").
    pf = device(sim, PF)
    before = last_seqnum(sim)
    assert write_errno(pf / "sriov_numvfs", "16") is None
    assert events_since(sim, before) == []
    assert write_errno(pf / "sriov_numvfs", "4") == errno.EBUSY
    assert (pf / "sriov_numvfs").read_text() == "16\n"


def test_sriov_numvfs_needs_the_pf_driver(sim: RunningSim) -> None:
    # sriov_numvfs_store: "no driver bound to device; cannot configure SR-IOV" -> -ENOENT.
    sim.control.nvidia_unload(PF2)
    assert write_errno(device(sim, PF2) / "sriov_numvfs", "4") == errno.ENOENT
    sim.control.nvidia_load(PF2)
    assert write_errno(device(sim, PF2) / "sriov_numvfs", "4") is None


# -- the driver going and coming back -----------------------------------------------------------


def test_unload_unbinds_the_vfs_then_the_pf_and_forgets_the_types(sim: RunningSim) -> None:
    # Unloading nvidia: driver_detach takes the last bound device first, so the VFs (last VF
    # first), then the PF; `unbind` carries no DRIVER. nvidia/ and the VFIO nodes go with the
    # binding, the VFs stay enabled (note §5: VFs remain while SR-IOV is on).
    assert set_type(sim, VF0, "1145") is None
    group = int(os.path.basename(os.readlink(device(sim, VF0) / "iommu_group")))
    before = last_seqnum(sim)
    sim.control.nvidia_unload(PF)
    pci = [(a, n) for a, n, sub in summary(events_since(sim, before)) if sub == "pci"]
    vfs = [os.path.basename(os.readlink(device(sim, PF) / f"virtfn{i}")) for i in range(16)]
    assert pci == [("unbind", vf) for vf in reversed(vfs)] + [("unbind", PF)]
    assert all("DRIVER" not in e.properties for e in events_since(sim, before))
    vf = device(sim, VF0)
    assert vf.exists() and not (vf / "nvidia").exists() and not (vf / "vfio-dev").exists()
    assert not (vf / "driver").exists()
    assert not sim.control.vfio_group_path(group).exists()
    assert (vf / "iommu_group").exists()
    assert os.listdir(sim.root / "bus/pci/drivers/nvidia") == [PF2]
    assert (device(sim, PF) / "sriov_numvfs").read_text() == "16\n"
    assert "DRIVER=nvidia" not in (vf / "uevent").read_text()


def test_load_binds_again_with_fresh_nvidia_directories(sim: RunningSim) -> None:
    # The daemon tells one driver load from the next by the (st_dev, st_ino) of nvidia/; the
    # driver's state does not survive an unload.
    assert set_type(sim, VF0, "1145") is None
    first = os.stat(device(sim, VF0) / "nvidia")
    sim.control.nvidia_unload(PF)
    before = last_seqnum(sim)
    sim.control.nvidia_load(PF)
    pci = [(e.action, e.devpath.rsplit("/", 1)[-1]) for e in events_since(sim, before)]
    pci_binds = [(a, n) for a, n in pci if a == "bind"]
    vfs = [os.path.basename(os.readlink(device(sim, PF) / f"virtfn{i}")) for i in range(16)]
    assert pci_binds == [("bind", PF)] + [("bind", vf) for vf in vfs]
    assert all(
        e.properties["DRIVER"] == "nvidia" for e in events_since(sim, before) if e.action == "bind"
    )
    second = os.stat(device(sim, VF0) / "nvidia")
    assert (first.st_dev, first.st_ino) != (second.st_dev, second.st_ino)
    # Unchanged while the binding stays.
    assert os.stat(device(sim, VF0) / "nvidia").st_ino == second.st_ino
    assert current(sim, VF0) == "0\n"
    assert creatable(sim, VF1) == listing(L40S_TYPES)


def test_files_opened_before_an_unload_answer_enodev(sim: RunningSim) -> None:
    # Like kernfs nodes that were removed: an old handle does not reach the new binding.
    fd = os.open(vgpu_file(sim, VF0, "current_vgpu_type"), os.O_RDWR)
    try:
        sim.control.nvidia_unload(PF)
        sim.control.nvidia_load(PF)
        with pytest.raises(OSError) as stale:
            os.write(fd, b"1145")
        assert stale.value.errno == errno.ENODEV
        with pytest.raises(OSError) as stale_read:
            os.pread(fd, 100, 0)
        assert stale_read.value.errno == errno.ENODEV
    finally:
        os.close(fd)
    assert current(sim, VF0) == "0\n"


def test_unload_blocks_while_a_vm_holds_a_vf(sim: RunningSim) -> None:
    # vfio_unregister_group_dev waits for the device's users, as removing a held mdev does.
    assert set_type(sim, VF0, "1145") is None
    sim.control.hold_vf(VF0)
    done = threading.Event()

    def unload() -> None:
        sim.control.nvidia_unload(PF)
        done.set()

    thread = threading.Thread(target=unload, daemon=True)
    thread.start()
    assert not done.wait(0.5)
    sim.control.release_vf(VF0)
    assert done.wait(10)
    thread.join()
    assert not (device(sim, VF0) / "nvidia").exists()


def test_disabling_sriov_waits_for_a_vm_to_let_go(sim: RunningSim) -> None:
    # Removing a VF unbinds it first, and the VFIO device's users are waited for.
    pf = device(sim, PF2)
    write(pf / "sriov_numvfs", "1")
    assert set_type(sim, "0000:5e:00.4", "1145") is None
    sim.control.hold_vf("0000:5e:00.4")
    done = threading.Event()

    def disable() -> None:
        write(pf / "sriov_numvfs", "0")
        done.set()

    thread = threading.Thread(target=disable, daemon=True)
    thread.start()
    assert not done.wait(0.5)
    assert device(sim, "0000:5e:00.4").exists()
    sim.control.release_vf("0000:5e:00.4")
    assert done.wait(10)
    thread.join()
    assert (pf / "sriov_numvfs").read_text() == "0\n"
    assert not device(sim, "0000:5e:00.4").exists()


# -- the control channel -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("words", "code"),
    [
        (("nvidia", "load", PF), errno.EALREADY),
        (("nvidia", "load", "0000:99:00.0"), errno.ENOENT),
        (("nvidia", "unload", "0000:99:00.0"), errno.ENOENT),
        (("hold-vf", "0000:99:00.4"), errno.ENOENT),
        (("release-vf", "0000:5e:00.4"), errno.ENOENT),  # SR-IOV is off on that GPU
        (("fault", "vgpu-type", "0000:99:00.4", "EIO"), errno.ENOENT),
    ],
)
def test_control_errors(sim: RunningSim, words: tuple[str, ...], code: int) -> None:
    with pytest.raises(ControlError) as failure:
        sim.control.command(*words)
    assert failure.value.errno == code


def test_unloading_twice_is_ealready(sim: RunningSim) -> None:
    sim.control.nvidia_unload(PF2)
    with pytest.raises(ControlError) as failure:
        sim.control.nvidia_unload(PF2)
    assert failure.value.errno == errno.EALREADY


def test_fault_and_delay_and_clear(start_sim: SimFactory) -> None:
    # `fault vgpu-type` fails the next writes; `delay vf-release` overrides
    # release_busy_seconds; `clear` drops both.
    sim = small(start_sim)
    vf = SMALL_VFS[0]
    sim.control.fault_vgpu_type(vf, "EIO", 2)
    assert set_type(sim, vf, "941") == errno.EIO
    assert set_type(sim, vf, "941") == errno.EIO
    assert set_type(sim, vf, "941") is None
    sim.control.fault_vgpu_type("*", "EAGAIN")
    sim.control.delay("vf-release", 30)
    sim.control.clear()
    assert set_type(sim, SMALL_VFS[1], "941") is None
    sim.control.hold_vf(vf)
    sim.control.release_vf(vf)
    assert set_type(sim, vf, "0") is None  # no busy window after clear
    assert set_type(sim, SMALL_VFS[1], "0") is None
    sim.control.delay("vf-release", 30)
    assert set_type(sim, vf, "941") is None
    sim.control.hold_vf(vf)
    sim.control.release_vf(vf)
    assert set_type(sim, vf, "0") == errno.EBUSY


def test_a_scenario_without_nvidia_gpus_serves_no_pci_driver(start_sim: SimFactory) -> None:
    # Scenarios without [[nvidia_gpu]] are served exactly as before.
    sim = start_sim("mtty")
    assert not (sim.root / "bus/pci").exists()


# -- scenario checks ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("framebuffer = 8", "framebuffer = 8\nframe_buffer = 8"), "unknown key"),
        (('name = "0000:81:00.0"', 'name = "0000:81:0.0"'), "not a PCI address"),
        (('first_vf = "0000:81:00.6"', 'first_vf = "0001:81:00.6"'), "not a PCI address in"),
        (("enabled_vfs = 4", "enabled_vfs = 5"), "more than total_vfs"),
        (('first_vf = "0000:81:00.6"', 'first_vf = "0000:ff:1f.7"'), "past bus ff"),
        (('first_vf = "0000:81:00.6"', 'first_vf = "0000:80:1f.7"'), "PF's address"),
        (('PCI_ID = "10DE:26B1"', 'DRIVER = "nvidia"'), "per device"),
        (("size = 4", "size = 0"), "at least 1"),
        (("id = 942", "id = 941"), "declared twice"),
        (("framebuffer = 8", 'framebuffer = 8\nbusy_errno = "EWHAT"'), "busy_errno"),
        (("framebuffer = 8", "framebuffer = 8\nrelease_busy_seconds = -1"), "between 0"),
    ],
)
def test_scenario_errors_name_the_problem(change: tuple[str, str], message: str) -> None:
    text = SMALL.format(extra="").replace(*change, 1)
    with pytest.raises(scenario.ScenarioError) as failure:
        scenario.parse(text, "test.toml")
    assert message in str(failure.value)
    assert str(failure.value).startswith("test.toml")


def test_a_vf_may_not_collide_with_another_device() -> None:
    # A second GPU at the address of the first one's third VF.
    second = SMALL.format(extra="").replace("0000:81:00.0", "0000:81:01.0")
    second = second.replace('first_vf = "0000:81:00.6"', 'first_vf = "0000:82:00.4"')
    with pytest.raises(scenario.ScenarioError, match="share a name or PCI address"):
        scenario.parse(SMALL.format(extra="") + second)


def test_the_shipped_scenario() -> None:
    loaded = scenario.load(Path(__file__).parents[2] / "config/sim/nvidia-vf.toml")
    first, second = loaded.nvidia_gpus
    assert (first.total_vfs, first.enabled_vfs, first.framebuffer) == (16, 16, 48)
    assert [(t.type_id, t.name) for t in first.types] == L40S_TYPES
    assert second.enabled_vfs == 0
    assert first.busy_errno == errno.EBUSY and first.full_errno == errno.ENOSPC
