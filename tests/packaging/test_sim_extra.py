# SPDX-License-Identifier: LGPL-2.1-or-later
"""`mdevd-sim` without the `sim` extra: every wheel installs the command (a console script
cannot depend on an extra), so without mfusepy it must say so, not fail with a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

#: Runs the command as its console script does, with mfusepy unimportable (None in
#: sys.modules makes `import mfusepy` raise ImportError, as on a system without it).
WITHOUT_MFUSEPY = (
    "import sys; sys.modules['mfusepy'] = None; "
    "from mdevd.sim.cli import main; sys.exit(main(sys.argv[1:]))"
)


def _sim(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_MFUSEPY, *args], capture_output=True, text=True, timeout=60
    )


def test_mount_without_mfusepy_says_what_is_missing(tmp_path: Path) -> None:
    result = _sim("mount", "--scenario", "mtty", str(tmp_path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "mfusepy" in result.stderr and "mdevd[sim]" in result.stderr


def test_ctl_does_not_need_mfusepy(tmp_path: Path) -> None:
    # Nothing is mounted there: ctl fails on that, not on the import.
    result = _sim("ctl", str(tmp_path), "register", "mtty")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "mfusepy" not in result.stderr
