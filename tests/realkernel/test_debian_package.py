# SPDX-License-Identifier: LGPL-2.1-or-later
"""The .deb built from this checkout, installed with apt on the real kernel under systemd.

The host builds the packages (tests/packaging/build.py: sdist, then dpkg-buildpackage) and
fetches from Debian 12 the .debs of the Python packages mdevd depends on; the guest
(`guest/debian_package.py`) purges those, installs `./mdevd_*.deb` with apt, offline, and checks
the service, autostart after `modprobe mtty`, and what `apt-get purge` leaves.
"""

from __future__ import annotations

import sys

import pytest

from tests.packaging.build import build_debs
from tests.realkernel.guest.debian_package import PYTHON_DEPENDENCIES
from tests.realkernel.guest.report import load
from tests.realkernel.harness import RealKernel
from tests.realkernel.prepare import download
from tests.realkernel.scenario_run import ScenarioRun


def test_the_debian_package_on_the_real_kernel(
    real_kernel: RealKernel, tmp_path_factory: pytest.TempPathFactory
) -> None:
    run_dir = tmp_path_factory.mktemp("realkernel-debian")
    debs = run_dir / "shared" / "debs"
    debs.mkdir(parents=True)
    built = build_debs(tmp_path_factory.mktemp("debs"))
    (debs / built["mdevd"].name).write_bytes(built["mdevd"].read_bytes())
    # The candidates of the host's package lists, which the guest's apt resolves against.
    download(PYTHON_DEPENDENCIES, debs)
    guest = real_kernel.run(
        [sys.executable, "-m", "tests.realkernel.guest.debian_package"],
        systemd=True,
        timeout=600,
        run_dir=run_dir,
    )
    ScenarioRun(guest, load(guest.shared_dir / "report.json")).assert_passed("debian")
    assert guest.exit_status == 0, guest.describe()
