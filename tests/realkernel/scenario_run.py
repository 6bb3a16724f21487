# SPDX-License-Identifier: LGPL-2.1-or-later
"""A guest boot that ran the scenarios, and the assertions the tests make on its report."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pytest

from tests.realkernel.guest.report import CheckResult, ScenarioResult
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


def _describe(title: str, checks: list[CheckResult], run: ScenarioRun) -> str:
    lines = [title]
    lines += [f"- {check.check}: {check.detail}" for check in checks]
    for name in run.logs:
        lines.append(f"--- {name} (guest) ---\n{run.log(name)[-6000:]}")
    return "\n".join(lines)
