# SPDX-License-Identifier: LGPL-2.1-or-later
"""mdevd supervised by a real systemd as PID 1, on the real kernel (`guest/under_systemd.py`).

mdevd installed from the checkout (`make install PREFIX=/usr`) and started as an admin starts
it, `systemctl start mdevd`: the shipped Type=notify unit with its whole sandbox. This proves
readiness (the unit is active only once the bus name is owned), logging to journald, autostart
through systemd's own udevd, and a clean stop by systemd's SIGTERM after which the running
device is adopted by the next start. It runs in the boot the Debian package's scenario runs in
first (the `systemd_boot` fixture; `guest/systemd_boot.py` says how neither disturbs the other).
"""

from __future__ import annotations

from tests.realkernel.scenario_run import SystemdBoot


def test_mdevd_under_systemd(systemd_boot: SystemdBoot) -> None:
    systemd_boot.systemd.assert_passed("systemd")
    systemd_boot.systemd.assert_exited()
