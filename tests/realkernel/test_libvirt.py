# SPDX-License-Identifier: LGPL-2.1-or-later
"""libvirt itself, unchanged, on mdevd on the real kernel (`guest/libvirt.py`, one guest boot).

Debian's libvirtd (node-device driver) in the guest, with mdevd's front end as the `mdevctl`
first in its PATH, mdevd from the checkout, and the real udevd: every node-device operation
libvirt has for mdevs, its lifecycle events for changes made through it and through
`mdevdctl`, and autostart after the driver is unloaded and loaded again. The host's
tests/compat/test_libvirtd.py does the same on the emulated kernel.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator

import pytest

from tests.realkernel.guest.libvirt import LIBVIRTD, NODEDEV_DRIVER
from tests.realkernel.guest.report import load
from tests.realkernel.harness import RealKernel
from tests.realkernel.scenario_run import ScenarioRun

#: The boot takes 2 to 4 minutes on a busy 2-core machine; this is the hang guard.
LIBVIRT_BOOT_TIMEOUT = 900
LOGS = ("mdevd.log", "libvirtd.log", "nodedev-events.log")

pytestmark = pytest.mark.skipif(
    not (LIBVIRTD.exists() and NODEDEV_DRIVER.exists() and shutil.which("virsh")),
    reason="libvirt-daemon and libvirt-clients are not installed",
)


@pytest.fixture(scope="module")
def libvirt_run(
    real_kernel: RealKernel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ScenarioRun]:
    guest = real_kernel.run(
        [sys.executable, "-m", "tests.realkernel.guest.libvirt"],
        timeout=LIBVIRT_BOOT_TIMEOUT,
        run_dir=tmp_path_factory.mktemp("realkernel-libvirt"),
    )
    scenarios = load(guest.shared_dir / "report.json")
    if not scenarios:
        pytest.fail(f"the libvirt script recorded nothing\n{guest.describe()}")
    yield ScenarioRun(guest, scenarios, logs=LOGS)


def test_libvirt_manages_mdevs_through_mdevd(libvirt_run: ScenarioRun) -> None:
    """nodedev-create (and again: "Device already exists"), -dumpxml, -define with and without
    a UUID (the generated one named back), -start, -autostart on and off (the definition file
    and libvirt's own view), -list --cap mdev with and without --all, -destroy, -undefine; each
    checked in /sys and /etc/mdevctl.d, with the Created/Defined/Deleted/Undefined event."""
    libvirt_run.assert_passed("through-libvirt")


def test_libvirt_sees_changes_made_through_mdevdctl(libvirt_run: ScenarioRun) -> None:
    """define, start, stop, undefine through `mdevdctl`: libvirt reports Defined, Created,
    Deleted, Undefined, and lists the device no more."""
    libvirt_run.assert_passed("through-mdevdctl")


def test_autostart_through_libvirt_survives_a_driver_reload(libvirt_run: ScenarioRun) -> None:
    """nodedev-autostart on the device defined without a UUID, `rmmod mtty` (the transient
    device is Deleted, the parent goes), `modprobe mtty`: the device comes back, created once
    by the kernel and reported Created once by libvirt; the transient one does not."""
    libvirt_run.assert_passed("driver-reload")
    assert libvirt_run.guest.exit_status == 0, libvirt_run.guest.describe()
