# SPDX-License-Identifier: LGPL-2.1-or-later
"""The .deb built from this checkout, installed with apt on the real kernel under systemd.

The host builds the packages (tests/packaging/build.py: sdist, then dpkg-buildpackage) and
fetches from Debian 12 the .debs of the Python packages mdevd depends on; the guest
(`guest/debian_package.py`) purges those, installs `./mdevd_*.deb` with apt, offline, and checks
the service, autostart after `modprobe mtty`, and what `apt-get purge` leaves. It runs first in
the boot test_systemd.py's scenario runs in (the `systemd_boot` fixture, `guest/systemd_boot.py`).
"""

from __future__ import annotations

import pytest

from tests.realkernel.scenario_run import SystemdBoot


def test_the_debian_package_on_the_real_kernel(systemd_boot: SystemdBoot) -> None:
    if systemd_boot.deb_error is not None:
        pytest.fail(f"building or fetching the .debs failed:\n{systemd_boot.deb_error}")
    systemd_boot.debian.assert_passed("debian")
    systemd_boot.debian.assert_exited()
