# SPDX-License-Identifier: LGPL-2.1-or-later
"""Fixtures of the real-kernel suite: the prepared kernel, one guest boot for all scenarios, and
one boot with systemd as PID 1 for the systemd and Debian package scenarios.

The suite skips, with the reason in pytest's summary, only where the guest cannot run at all
(not x86-64, not root, no qemu and no apt to install it). Anything else that goes wrong,
preparation included, fails: a CI machine that should run the suite must not pass silently.
"""

from __future__ import annotations

import shutil
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.packaging.build import build_debs
from tests.realkernel.guest.debian_package import LOG as DEBIAN_LOG
from tests.realkernel.guest.debian_package import PYTHON_DEPENDENCIES
from tests.realkernel.guest.report import load
from tests.realkernel.harness import RealKernel
from tests.realkernel.prepare import download, host_can_run_guests
from tests.realkernel.scenario_run import ScenarioRun, SystemdBoot

#: A full scenario boot takes 3 minutes on a busy 2-core machine; this is the hang guard.
SCENARIO_BOOT_TIMEOUT = 900
#: The systemd boot (the .deb's scenario, then the checkout's) takes 2.5 minutes on a quiet
#: 2-core machine, up to twice that on a busy one; this is the hang guard.
SYSTEMD_BOOT_TIMEOUT = 900


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "realkernel: boots a real Linux kernel under qemu (tests/realkernel)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(pytest.mark.realkernel)
            # The first test of a session also prepares the kernel and boots the guest.
            boot_timeout = max(SCENARIO_BOOT_TIMEOUT, SYSTEMD_BOOT_TIMEOUT)
            item.add_marker(pytest.mark.timeout(boot_timeout + 300))


@pytest.fixture(scope="session")
def real_kernel() -> RealKernel:
    reason = host_can_run_guests()
    if reason is not None:
        pytest.skip(f"REAL-KERNEL SUITE NOT RUN: {reason}")
    return RealKernel.prepare()


@pytest.fixture(scope="session")
def scenario_run(
    real_kernel: RealKernel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ScenarioRun]:
    """One boot running every scenario of `guest/scenarios.py` (each boot costs seconds), then
    the benchmark's short run (`guest/bench.py`), which would otherwise need a boot of its own."""
    run_dir = tmp_path_factory.mktemp("realkernel-scenarios")
    guest = real_kernel.run(
        [sys.executable, "-m", "tests.realkernel.guest.scenarios", "--bench"],
        timeout=SCENARIO_BOOT_TIMEOUT,
        run_dir=run_dir,
    )
    scenarios = load(guest.shared_dir / "report.json")
    if not scenarios:
        pytest.fail(f"the scenario script recorded nothing\n{guest.describe()}")
    yield ScenarioRun(guest, scenarios)


@pytest.fixture(scope="session")
def systemd_boot(real_kernel: RealKernel, tmp_path_factory: pytest.TempPathFactory) -> SystemdBoot:
    """One boot with systemd as PID 1 for two scenario sets (`guest/systemd_boot.py`, which
    says why in this order): the .deb built from the checkout, installed with apt and purged,
    then the checkout's `make install` started with systemctl. A failure to build the .deb
    leaves the second to run alone (and fails test_debian_package.py only)."""
    run_dir = tmp_path_factory.mktemp("realkernel-systemd")
    sets = ["debian", "systemd"]
    deb_error = None
    try:
        _stage_debs(run_dir / "shared" / "debs", tmp_path_factory.mktemp("debs"))
    except Exception:
        deb_error = traceback.format_exc()
        sets.remove("debian")
    guest = real_kernel.run(
        [sys.executable, "-m", "tests.realkernel.guest.systemd_boot", *sets],
        systemd=True,
        timeout=SYSTEMD_BOOT_TIMEOUT,
        run_dir=run_dir,
    )
    scenarios = load(guest.shared_dir / "report.json")
    return SystemdBoot(
        debian=ScenarioRun(guest, scenarios, logs=(DEBIAN_LOG,)),
        systemd=ScenarioRun(guest, scenarios),
        deb_error=deb_error,
    )


def _stage_debs(debs: Path, build_dir: Path) -> None:
    """The mdevd .deb built from the checkout (tests/packaging/build.py), and from the host's
    package lists (which the guest's apt resolves against) the .debs of its Python
    dependencies, in the folder the guest's `debian` scenario installs from."""
    debs.mkdir(parents=True)
    built = build_debs(build_dir)
    shutil.copy(built["mdevd"], debs / built["mdevd"].name)
    download(PYTHON_DEPENDENCIES, debs)
