# SPDX-License-Identifier: LGPL-2.1-or-later
"""Device.Open on the real kernel: the fd mdevd hands over, used by an unprivileged user.

Both scenarios run last in the scenarios' boot (`guest/handoff.py`, with `guest/vfio_probe.py`
as the program the fd is handed to), so they cost seconds, not a boot of their own.

The VFIO device node (`Open` with `node=cdev`) needs a kernel with CONFIG_VFIO_DEVICE_CDEV,
which needs CONFIG_IOMMUFD: the harness boots the kernel `linux-image-amd64` depends on
(6.1, no VFIO device nodes), and Debian's 6.12 for bookworm (`linux-image-6.12.*+deb12-amd64`,
the kernel bookworm-backports carries too) is built with `# CONFIG_IOMMUFD is not set`, so it
has none either. The cdev scenario therefore records what the kernel has and what `Open`
answers; its part that drives the device through iommufd runs only where a kernel has them.
"""

from __future__ import annotations

import pytest

from tests.realkernel.scenario_run import ScenarioRun

#: The check that mdevd fails on 6.1 (see test_open_cdev_on_a_kernel_without_device_nodes).
CDEV_NOT_SUPPORTED = "open --cdev on a kernel without VFIO device nodes -> NotSupported (exit 1)"


def test_a_member_of_group_mdevd_drives_the_device_through_the_handed_over_fd(
    scenario_run: ScenarioRun,
) -> None:
    """A user in group `mdevd` (granted org.mdevd.mdevd1.use-device by the example polkit
    rules, through configure-devices' imply) runs `mdevdctl open UUID -- vfio_probe.py` on an
    mtty device root created: `/dev/vfio/<group>` stays 0600 root:root and the probe cannot
    open it by its name (EACCES), yet with the inherited fd it attaches the group to a
    container, sets the type1v2 IOMMU, gets the device fd by UUID, reads VFIO_DEVICE_GET_INFO
    (a PCI device with regions and IRQs) and BAR0's region info (8 bytes, read-write), writes
    the UART scratch register and reads it back, and sends two bytes through the transmit
    register that mtty loops back to the receive register. While it holds the group, a second
    Open and Stop are `Busy`, the kernel says EBUSY, and mdevd holds no fd to the node; once
    it exits, Open succeeds again. `nobody` is refused: exit 4, NotAuthorizedCanObtain."""
    scenario_run.assert_passed("handoff")


def test_open_cdev_on_a_kernel_without_device_nodes(scenario_run: ScenarioRun) -> None:
    """`mdevdctl open --cdev`: on a kernel with VFIO device nodes, the probe binds the device
    fd to an iommufd and drives the device as above; on one without (this harness's), Open
    must answer NotSupported, as docs/dbus-api.md says.

    Linux 6.1 already lists `<device>/vfio-dev/vfioN` in sysfs, without a `dev` attribute or a
    node in /dev/vfio/devices (the char device came with VFIO_DEVICE_CDEV in 6.6). mdevd takes
    the sysfs entry for a node, its open fails with ENOENT, and Open answers NotActive ("not
    present in the kernel") for an active device. Reported against mdevd (not fixed here: the
    test suite's side stays out of `mdevd/`): until then this exact failure is an expected one,
    any other fails the test."""
    scenario = scenario_run.scenarios.get("handoff-cdev")
    if scenario is not None and scenario.finished:
        failed = scenario.failed
        if [c.check for c in failed] == [CDEV_NOT_SUPPORTED] and "NotActive" in failed[0].detail:
            pytest.xfail(
                "mdevd answers NotActive, not NotSupported, to Open(node=cdev) on a kernel that "
                "lists vfio-dev/vfioN in sysfs without the char device (6.1 to 6.5, or 6.6+ "
                f"without CONFIG_VFIO_DEVICE_CDEV): {failed[0].detail}"
            )
    scenario_run.assert_passed("handoff-cdev")
