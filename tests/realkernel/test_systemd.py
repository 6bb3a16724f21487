# SPDX-License-Identifier: LGPL-2.1-or-later
"""mdevd supervised by a real systemd as PID 1, on the real kernel (`guest/under_systemd.py`).

One boot with systemd as PID 1: mdevd runs as a Type=notify service (a transient unit with the
checkout's interpreter), so this proves readiness (the unit is active only once the bus name is
owned), logging to journald, autostart through systemd's own udevd, and a clean stop by
systemd's SIGTERM after which the running device is adopted by the next start.
"""

from __future__ import annotations

import sys

import pytest

from tests.realkernel.guest.report import load
from tests.realkernel.harness import RealKernel
from tests.realkernel.scenario_run import ScenarioRun


def test_mdevd_under_systemd(
    real_kernel: RealKernel, tmp_path_factory: pytest.TempPathFactory
) -> None:
    guest = real_kernel.run(
        [sys.executable, "-m", "tests.realkernel.guest.under_systemd"],
        systemd=True,
        timeout=600,
        run_dir=tmp_path_factory.mktemp("realkernel-systemd"),
    )
    ScenarioRun(guest, load(guest.shared_dir / "report.json")).assert_passed("systemd")
    assert guest.exit_status == 0, guest.describe()
