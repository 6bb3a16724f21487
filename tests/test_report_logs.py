# SPDX-License-Identifier: LGPL-2.1-or-later
"""A failing test's report shows what the daemons logged during that test (tests/conftest.py
loads tests/support/report_logs.py): checked by running pytest on small test modules, one with
a real daemon shared by the module, one with a log the module writes itself."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.paths import REPO

pytestmark = pytest.mark.timeout(180)

#: A module-scoped daemon; the test in the middle fails. Each test makes the daemon log lines
#: naming it (a definitions file it rejects), and waits for them.
WITH_A_DAEMON = """
import pytest

from tests.support.stack import running_stack
from tests.support.waiting import wait_until


@pytest.fixture(scope="module")
def stack():
    with running_stack() as running:
        yield running


def _make_the_daemon_log(stack, marker):
    path = stack.daemon.devices_dir / f"{marker}.toml"
    path.write_text("[[device]]\\nuuid = 'x'\\n")
    wait_until(lambda: f"{marker}.toml" in stack.daemon.log(), what=marker)
    path.unlink()  # no later reload complains of it again


def test_first(stack):
    _make_the_daemon_log(stack, "marker-first")


def test_second(stack):
    _make_the_daemon_log(stack, "marker-second")
    assert False, "fails on purpose"


def test_third(stack):
    _make_the_daemon_log(stack, "marker-third")
"""

#: The same without a daemon: the module's fixture registers a log and each test writes to it.
WITH_A_LOG = """
import pytest

from tests.support.logs import watched_log


@pytest.fixture(scope="module")
def log(tmp_path_factory):
    path = tmp_path_factory.mktemp("log") / "fake.log"
    path.write_text("started\\n")
    with watched_log("fake", path):
        yield path


def _write(path, line):
    with path.open("a") as file:
        file.write(line + "\\n")


def test_passes(log):
    _write(log, "line of test_passes")


def test_fails(log):
    _write(log, "line of test_fails")
    assert False, "fails on purpose"


def test_fails_in_teardown(log, request):
    request.addfinalizer(lambda: _write(log, "line of the teardown") or 1 / 0)
    _write(log, "line of test_fails_in_teardown")
"""


def _run_pytest(directory: Path, module: str) -> str:
    (directory / "test_module.py").write_text(module)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "tests.support.report_logs",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(directory),
            "-v",
            "test_module.py",
        ],
        cwd=directory,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert result.returncode == 1, result.stdout + result.stderr  # 1: some tests failed
    return result.stdout


#: A header line of pytest's output: "____ test ____", "---- section ----", "==== x ====".
_HEADER = re.compile(r"([_=-])\1{2,} (.*?) \1{2,}")


def _parts(output: str) -> list[tuple[str, str, str]]:
    """pytest's output cut at its header lines: (header character, title, text below)."""
    parts: list[tuple[str, str, list[str]]] = [("", "", [])]
    for line in output.splitlines():
        header = _HEADER.fullmatch(line)
        if header:
            parts.append((header.group(1), header.group(2), []))
        else:
            parts[-1][2].append(line)
    return [(char, title, "\n".join(lines)) for char, title, lines in parts]


def _log_sections(output: str, failure: str) -> dict[str, str]:
    """The report sections titled "<label> log during this test (...)" of one failure (its
    title: "test_x", "ERROR at teardown of test_x"), by label."""
    parts = _parts(output)
    (start,) = [i for i, (char, title, _) in enumerate(parts) if (char, title) == ("_", failure)]
    sections = {}
    for char, title, text in parts[start + 1 :]:
        if char != "-":
            break
        label = re.fullmatch(r"(\S+) log during this test \(.*\)", title)
        if label:
            sections[label.group(1)] = text
    return sections


def test_a_failure_in_the_middle_of_a_module_shows_the_daemon_log_of_that_test(
    tmp_path: Path,
) -> None:
    output = _run_pytest(tmp_path, WITH_A_DAEMON)
    assert re.search(r"test_first PASSED.*test_second FAILED.*test_third PASSED", output, re.S)
    logged = _log_sections(output, "test_second")["mdevd"]
    assert "marker-second.toml" in logged
    # Only what was written during the test: not the startup (during test_first), not
    # test_first's line, not test_third's (after it).
    assert "ready on org.mdevd.Mdevd1" not in logged
    assert "marker-first" not in logged
    assert "marker-third" not in logged


def test_each_failing_test_gets_the_lines_written_during_it_and_passing_ones_nothing(
    tmp_path: Path,
) -> None:
    output = _run_pytest(tmp_path, WITH_A_LOG)
    assert _log_sections(output, "test_fails") == {"fake": "line of test_fails"}
    assert _log_sections(output, "ERROR at teardown of test_fails_in_teardown") == {
        "fake": "line of test_fails_in_teardown\nline of the teardown"
    }
    assert "line of test_passes" not in output
    assert "started" not in output
