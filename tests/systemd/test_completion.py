# SPDX-License-Identifier: LGPL-2.1-or-later
"""Bash completion, run by real bash-completion: commands, options, and the daemon's devices."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from tests.support.daemon import running_daemon
from tests.support.paths import REPO
from tests.support.sim import RunningSim
from tests.systemd.helpers import DEVICE_A, define

BASH_COMPLETION = Path("/usr/share/bash-completion/bash_completion")


def complete(*words: str) -> list[str]:
    """What pressing TAB after `words` (the last one being completed) offers."""
    program = words[0]
    # As bash has them at TAB: the words so far, then the (unquoted) prefix being completed.
    line = " ".join([*map(shlex.quote, words[:-1]), words[-1]])
    script = "\n".join(
        [
            f"source {BASH_COMPLETION}",
            f"source {REPO / 'completions' / program}",
            f"COMP_WORDS=({shlex.join(words)})",
            f"COMP_CWORD={len(words) - 1}",
            f"COMP_LINE={shlex.quote(line)}",
            "COMP_POINT=${#COMP_LINE}",
            f"_{program}",
            'printf "%s\\n" "${COMPREPLY[@]}"',
        ]
    )
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 0, result.stderr
    return sorted(x for x in result.stdout.splitlines() if x)


def test_commands_and_options_complete() -> None:
    assert complete("mdevdctl", "st") == ["start", "status", "stop"]
    assert complete("mdevdctl", "list", "--d") == ["--defined"]
    assert complete("mdevdctl", "op") == ["open"]
    assert complete("mdevdctl", "open", "--c") == ["--cdev"]
    assert complete("mdevdctl", "open", "7a3c1d52-0b8e-4c1f-9f62-3d1e5a4b7c90", "") == ["--"]
    # After `--`, the command to run completes as a command line of its own.
    assert "readlink" in complete("mdevdctl", "open", "x", "--", "readli")
    assert complete("mdevd", "--log-level", "") == ["debug", "error", "info", "warning"]
    assert complete("mdevd", "im") == ["import-mdevctl"]
    assert complete("mdevd", "import-mdevctl", "--dr") == ["--dry-run"]


def test_uuids_parents_and_types_come_from_the_daemon(
    bus: str, sim: RunningSim, devices_dir: Path
) -> None:
    define(devices_dir, DEVICE_A, autostart=True)
    with running_daemon(bus, sim.root, [devices_dir]):
        assert complete("mdevdctl", "--address", bus, "stop", "") == [DEVICE_A]
        assert complete("mdevdctl", "--address", bus, "define", "") == ["mtty"]
        assert complete("mdevdctl", "--address", bus, "create", "mtty", "") == [
            "mtty-1",
            "mtty-2",
        ]


def test_nothing_is_offered_when_the_daemon_is_not_there(tmp_path: Path) -> None:
    address = f"unix:path={tmp_path}/nobody-listens"
    assert complete("mdevdctl", "--address", address, "stop", "") == []
