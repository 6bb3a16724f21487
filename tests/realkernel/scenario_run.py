# SPDX-License-Identifier: LGPL-2.1-or-later
"""A guest boot that ran the scenarios, and the assertions the tests make on its report."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pytest

from tests.realkernel.guest.report import CHECKS_FAILED, CheckResult, ScenarioResult
from tests.realkernel.harness import GuestResult


@dataclass(frozen=True)
class ScenarioRun:
    guest: GuestResult
    scenarios: dict[str, ScenarioResult]
    #: The guest's logs (in `<shared>/logs`) a failure message ends with.
    logs: Sequence[str] = ("mdevd.log",)

    def log(self, name: str) -> str:
        try:
            return (self.guest.shared_dir / "logs" / name).read_text(errors="replace")
        except OSError:
            return f"(no {name})"

    def assert_passed(self, name: str) -> None:
        """Fail with every failed check of scenario `name`, and the logs that explain them."""
        system = self.scenarios.get("system")
        if system is not None and system.failed:
            pytest.fail(_describe("the guest's services did not start", system.failed, self))
        scenario = self.scenarios.get(name)
        if scenario is None:
            pytest.fail(f"scenario {name!r} never ran in the guest\n{self.guest.describe()}")
        if not scenario.finished:
            pytest.fail(
                f"scenario {name!r} did not finish (the guest stopped in it)\n"
                + _describe("", scenario.checks[-3:], self)
                + self.guest.describe()
            )
        if scenario.failed:
            pytest.fail(
                _describe(
                    f"{len(scenario.failed)} of {len(scenario.checks)} checks of {name!r} failed",
                    scenario.failed,
                    self,
                )
            )
        assert scenario.checks, f"scenario {name!r} recorded no check"

    def assert_exited(self) -> None:
        """The guest script ran to its end and exited by itself (no crash after its scenarios,
        no timeout): status 0, or `CHECKS_FAILED` if checks failed, which the tests of their
        scenarios report. After `assert_passed`, so in a boot shared by several tests, a test
        does not fail for another's scenario."""
        failed = any(scenario.failed for scenario in self.scenarios.values())
        assert self.guest.exit_status == (CHECKS_FAILED if failed else 0), self.guest.describe()


@dataclass(frozen=True)
class SystemdBoot:
    """The boot with systemd as PID 1 (`guest/systemd_boot.py`) that test_debian_package.py and
    test_systemd.py read their scenarios from."""

    #: The same boot's report twice, each with its scenario's daemon log for failure messages.
    debian: ScenarioRun
    systemd: ScenarioRun
    #: Why the host could not build or fetch the .debs, with the traceback; the boot then ran
    #: the `systemd` scenario alone, and test_debian_package.py fails with this.
    deb_error: str | None


def _describe(title: str, checks: list[CheckResult], run: ScenarioRun) -> str:
    lines = [title]
    lines += [f"- {check.check}: {check.detail}" for check in checks]
    for name in run.logs:
        lines.append(f"--- {name} (guest) ---\n{run.log(name)[-6000:]}")
    return "\n".join(lines)
