# SPDX-License-Identifier: LGPL-2.1-or-later
"""Per-check results of a guest run, written to the shared folder as they happen.

A guest script records each check (`report.check(name, ok, detail)`) under the scenario it
belongs to; an exception inside `with report.scenario(name):` is recorded as a failed check
with its traceback, and the script goes on with the next scenario. The file is rewritten
after every check, so a guest that hangs or crashes still leaves what it had found. The host
side (`tests/realkernel/conftest.py`) turns the file into assertions.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

#: The exit status of a guest script that ran to its end with failed checks: not Python's 1,
#: which an uncaught exception gives, so the host can tell the two apart.
CHECKS_FAILED = 3


@dataclass(frozen=True, slots=True)
class CheckResult:
    scenario: str
    check: str
    ok: bool
    detail: str = ""


@dataclass
class ScenarioResult:
    name: str
    checks: list[CheckResult] = field(default_factory=list)
    finished: bool = False
    seconds: float = 0.0

    @property
    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.ok]


class Report:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.scenarios: dict[str, ScenarioResult] = {}
        self._current: ScenarioResult | None = None
        self._started = time.monotonic()

    @contextmanager
    def scenario(self, name: str) -> Iterator[ScenarioResult]:
        result = self.scenarios.setdefault(name, ScenarioResult(name))
        self._current = result
        started = self._started = time.monotonic()
        self._write()
        try:
            yield result
        except Exception as exc:
            self.check("ran to the end", False, f"{exc!r}\n{traceback.format_exc()}")
        finally:
            result.finished = True
            result.seconds = round(time.monotonic() - started, 2)
            self._current = None
            self._write()

    def check(self, name: str, ok: bool, detail: object = "") -> bool:
        """Record one check of the current scenario; returns `ok` so callers can branch."""
        assert self._current is not None, "checks belong to a scenario"
        self._current.checks.append(CheckResult(self._current.name, name, bool(ok), str(detail)))
        # With the seconds since the scenario began: where a slow guest spends its time.
        elapsed = time.monotonic() - self._started
        print(
            f"[{'ok' if ok else 'FAILED'}] {self._current.name} +{elapsed:.1f}s: {name}", flush=True
        )
        if not ok and detail:
            print(f"    {detail}", flush=True)
        self._write()
        return bool(ok)

    def equal(self, name: str, actual: object, expected: object) -> bool:
        return self.check(name, actual == expected, f"expected {expected!r}, got {actual!r}")

    def _write(self) -> None:
        data = {
            name: {
                "finished": s.finished,
                "seconds": s.seconds,
                "checks": [asdict(c) for c in s.checks],
            }
            for name, s in self.scenarios.items()
        }
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_text(json.dumps(data, indent=1))
        temporary.replace(self.path)


def load(path: Path) -> dict[str, ScenarioResult]:
    """The host side: the scenarios a guest recorded (empty if it recorded none)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {
        name: ScenarioResult(
            name,
            [CheckResult(**c) for c in s["checks"]],
            finished=s["finished"],
            seconds=s["seconds"],
        )
        for name, s in data.items()
    }
