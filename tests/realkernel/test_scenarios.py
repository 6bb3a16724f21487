# SPDX-License-Identifier: LGPL-2.1-or-later
"""mdevd on a real Linux kernel: the mdev core and the mtty/mdpy sample drivers under qemu.

All five run in one guest boot (`guest/scenarios.py`, in this order); each test here asserts
the checks its scenario recorded, and names every failed one with the daemon's log.
"""

from __future__ import annotations

from tests.realkernel.scenario_run import ScenarioRun


def test_autostart_when_the_drivers_load(scenario_run: ScenarioRun) -> None:
    """Definitions in /etc/mdevd/devices.d before mdevd starts, then `modprobe mtty mdpy`: the
    autostart devices appear in the kernel with their types (the manual one does not), D-Bus
    shows them with their sysfs paths and IOMMU groups, and two clients (the Python client and
    `mdevdctl monitor`) saw each start once, with reason `autostart`."""
    scenario_run.assert_passed("autostart")


def test_lifecycle_and_the_kernels_errors(scenario_run: ScenarioRun) -> None:
    """create, define, start, stop, undefine through mdevdctl, each checked in /sys; the
    kernel's EEXIST (a UUID mdevd had not seen yet, udevd paused), ENOSPC (mtty's shared port
    pool) and EUSERS (mdpy's max_instances) reach mdevdctl and gdbus as `Exists` and
    `NoInstancesAvailable`; AlreadyActive and NotActive; the failed create's add/remove uevent
    pair leaves no object behind."""
    scenario_run.assert_passed("lifecycle")


def test_unprivileged_user_is_refused(scenario_run: ScenarioRun) -> None:
    """User `nobody` may list, but create, define, stop, undefine and reload are refused with a
    NotAuthorized* error (mdevdctl exits 4), and nothing changes: not the kernel's devices, the
    definition files or the D-Bus objects."""
    scenario_run.assert_passed("unprivileged")


def test_restart_adopts_running_devices(scenario_run: ScenarioRun) -> None:
    """mdevd stopped (SIGTERM) and started with four devices running (autostart, manual,
    transient): no mdev uevent, no started/stopped signal, the kernel's devices and every
    D-Bus property are as they were."""
    scenario_run.assert_passed("restart")


def test_hot_unplug_and_replug(scenario_run: ScenarioRun) -> None:
    """`rmmod mtty` with three devices running: the Parent object goes, defined devices stay
    inactive, the transient one's object goes, each got a `stopped` signal; `modprobe mtty`:
    the autostart device comes back, started once (one signal, one kernel add), and the manual
    and transient ones do not."""
    scenario_run.assert_passed("hot-unplug")
