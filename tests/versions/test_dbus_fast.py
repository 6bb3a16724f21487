# SPDX-License-Identifier: LGPL-2.1-or-later
"""The bus and stress tests, again, against each dbus-fast a host may have.

mdevd runs on whatever dbus-fast the distribution ships: Debian 12's 1.84.2 (compiled, with
Debian's tomlkit 0.11.7), 2.44 (Debian 13's), and PyPI's newest (this suite's own `.venv`, compiled,
and here the same version with its compiled modules removed, i.e. the pure-Python build).
`scripts/bootstrap` makes one virtualenv per version in `.venv/matrix`; each run below is a
whole pytest run of `tests/bus` (the send-buffer load with and without the fix included) and
the daemon's stress test, in that environment. A missing environment fails: a skipped row
would hide the version it stands for.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.support.paths import REPO

MATRIX = REPO / ".venv" / "matrix"

#: Environment -> (dbus-fast version, whether its modules are compiled, tomlkit version or
#: None for any).
EXPECTED = {
    "debian12": ("1.84.2", True, "0.11.7"),
    "dbus-fast-2.44": ("2.44.5", True, "0.11.7"),
    "dbus-fast-5.2-pure": ("5.2.0", False, None),
}

#: What each environment runs: everything that talks D-Bus through mdevd.bus, and the load, and
#: the fds Device.Open passes (each version's writer sends them, its reader receives them).
TESTS = [
    "tests/bus",
    "tests/daemon/test_stress.py",
    "tests/daemon/test_introspection.py",
    "tests/daemon/test_non_ascii.py",
    "tests/daemon/test_open.py",
]

DESCRIBE = """
import json, tomlkit, dbus_fast.message_bus as m
from dbus_fast.__version__ import __version__
print(json.dumps([__version__, not m.__file__.endswith(".py"), tomlkit.__version__]))
"""

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _python(name: str) -> Path:
    python = MATRIX / name / "bin" / "python"
    if not python.exists():
        pytest.fail(f"{python} is missing: scripts/bootstrap makes it")
    return python


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_the_environment_is_what_it_stands_for(name: str) -> None:
    described = subprocess.run(
        [_python(name), "-c", DESCRIBE], capture_output=True, text=True, check=True, cwd=REPO
    )
    version, compiled, tomlkit = json.loads(described.stdout)
    expected_version, expected_compiled, expected_tomlkit = EXPECTED[name]
    assert (version, compiled) == (expected_version, expected_compiled)
    if expected_tomlkit is not None:
        assert tomlkit == expected_tomlkit


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bus_and_stress_tests_pass(name: str, tmp_path: Path) -> None:
    run = subprocess.run(
        [_python(name), "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=540,
        check=False,
    )
    (tmp_path / "pytest.log").write_text(run.stdout + run.stderr)
    assert run.returncode == 0, f"with dbus-fast in .venv/matrix/{name}:\n{run.stdout[-6000:]}"
