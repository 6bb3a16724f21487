# SPDX-License-Identifier: LGPL-2.1-or-later
"""The reference: Debian's real `mdevctl` run against the emulated kernel.

mdevctl only knows the real paths (/sys, /etc/mdevctl.d). Each session runs in its own mount
namespace (`unshare --mount --propagation private`, nested in the suite's private one) where the
mounted emulation is bound over /sys and a directory of the test's over /etc/mdevctl.d, so the
test reads what mdevctl wrote afterwards; the host's /sys and /etc/mdevctl.d are never touched.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REAL_MDEVCTL = shutil.which("mdevctl", path="/usr/bin:/usr/sbin:/bin:/sbin")

# Runs inside the new mount namespace: mounts, then each command, results as JSON on stdout.
_SESSION = r"""
import json, os, subprocess, sys
sysfs, config, commands = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
if os.stat("/proc/self/ns/mnt").st_ino == os.stat(f"/proc/{os.getppid()}/ns/mnt").st_ino:
    sys.exit("not in a mount namespace of its own: refusing to mount over /sys")
subprocess.run(["mount", "--bind", sysfs, "/sys"], check=True)
subprocess.run(["mount", "--bind", config, "/etc/mdevctl.d"], check=True)
results = []
for argv, stdin in commands:
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60)
    results.append([done.returncode, done.stdout, done.stderr])
json.dump(results, sys.stdout)
"""


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str


def run_reference(
    sysfs: Path, config_dir: Path, commands: Sequence[Sequence[str] | tuple[Sequence[str], str]]
) -> list[Ran]:
    """Run mdevctl commands (argv, or (argv, stdin)) with `sysfs` as /sys and `config_dir` as
    /etc/mdevctl.d. `mdevctl` in an argv means the real binary."""
    assert REAL_MDEVCTL is not None
    for sub in ("callouts", "notifiers"):
        (config_dir / "scripts.d" / sub).mkdir(parents=True, exist_ok=True)
    prepared = []
    for command in commands:
        argv, stdin = (command[0], command[1]) if isinstance(command, tuple) else (command, "")
        argv = [REAL_MDEVCTL if a == "mdevctl" else a for a in argv]
        prepared.append([list(argv), stdin])
    unshare = ["unshare", "--mount", "--propagation", "private"]
    done = subprocess.run(
        [
            *unshare,
            sys.executable,
            "-c",
            _SESSION,
            str(sysfs),
            str(config_dir),
            json.dumps(prepared),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [Ran(*result) for result in json.loads(done.stdout)]
