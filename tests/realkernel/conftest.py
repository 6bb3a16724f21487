# SPDX-License-Identifier: LGPL-2.1-or-later
"""Fixtures of the real-kernel suite: the prepared kernel, and one guest boot for all scenarios.

The suite skips, with the reason in pytest's summary, only where the guest cannot run at all
(not x86-64, not root, no qemu and no apt to install it). Anything else that goes wrong,
preparation included, fails: a CI machine that should run the suite must not pass silently.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.realkernel.guest.report import load
from tests.realkernel.harness import RealKernel
from tests.realkernel.prepare import host_can_run_guests
from tests.realkernel.scenario_run import ScenarioRun

#: A full scenario boot takes 3 minutes on a busy 2-core machine; this is the hang guard.
SCENARIO_BOOT_TIMEOUT = 900


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
            item.add_marker(pytest.mark.timeout(SCENARIO_BOOT_TIMEOUT + 300))


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
