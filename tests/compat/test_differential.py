# SPDX-License-Identifier: LGPL-2.1-or-later
"""The front end against the real mdevctl: the same commands on two fresh emulated kernels.

Debian's mdevctl 1.2.0 runs in a private mount namespace (the emulation over /sys, a test
directory over /etc/mdevctl.d); the front end runs against the daemon on an identical emulation.
Exit status, stdout and stderr must be the same, except for clap's usage texts (argparse
words them differently; the exit status 2 is compared), and so must the definition files left
in mdevctl's directory.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.compat.conftest import StackFactory
from tests.compat.reference import REAL_MDEVCTL, run_reference
from tests.support.sim import running_sim

pytestmark = [
    pytest.mark.timeout(300, method="thread"),
    pytest.mark.skipif(REAL_MDEVCTL is None, reason="mdevctl is not installed"),
]

U1 = "11111111-2222-3333-4444-555555555555"
U2 = "21111111-2222-3333-4444-555555555555"
U3 = "31111111-2222-3333-4444-555555555555"
AP = "51111111-2222-3333-4444-555555555555"
GPU = "0000:65:00.0"
_GENERATED = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")

Command = Sequence[str] | tuple[Sequence[str], str]

SESSION: list[Command] = [
    ["mdevctl", "types"],
    ["mdevctl", "types", "-p", "mtty"],
    ["mdevctl", "types", "--dumpjson"],
    ["mdevctl", "types", "-p", "nothing", "--dumpjson"],
    ["mdevctl", "list"],
    ["mdevctl", "list", "-d", "--dumpjson"],
    ["mdevctl", "start", "-p", "mtty", "-t", "mtty-2", "-u", U1],
    ["mdevctl", "list"],
    ["mdevctl", "list", "--dumpjson"],
    ["mdevctl", "list", "-u", U1, "--dumpjson"],
    ["mdevctl", "start", "-p", "mtty", "-t", "mtty-2", "-u", U1],
    ["mdevctl", "start", "-p", "mtty", "-t", "mtty-1", "-u", U1],
    ["mdevctl", "start", "-p", "mdpy", "-t", "mdpy-vga", "-u", U1],
    ["mdevctl", "define", "-u", U1],
    ["mdevctl", "define", "-u", U1],
    ["mdevctl", "list"],
    ["mdevctl", "list", "-d"],
    ["mdevctl", "modify", "-u", U1, "--auto"],
    ["mdevctl", "modify", "-u", U1, "--addattr=first", "--value=1"],
    ["mdevctl", "modify", "-u", U1, "--addattr", "second", "--value", "2", "--index", "0"],
    ["mdevctl", "modify", "-u", U1, "--addattr", "third", "--value", "3", "-i", "9"],
    ["mdevctl", "list", "-dv"],
    ["mdevctl", "list", "-d", "-v", "--dumpjson"],
    ["mdevctl", "modify", "-u", U1, "--delattr", "-i", "1"],
    ["mdevctl", "modify", "-u", U1, "--delattr", "-i", "5"],
    ["mdevctl", "modify", "-u", U1, "--manual", "-p", "mtty"],
    ["mdevctl", "modify", "-u", U1, "-p", "mdpy", "--auto"],
    ["mdevctl", "list", "-d", "-p", "mtty"],
    ["mdevctl", "list", "-d", "-p", "mdpy"],
    ["mdevctl", "stop", "-u", U1],
    ["mdevctl", "stop", "-u", U1],
    ["mdevctl", "list", "-d"],
    ["mdevctl", "start", "-u", U1, "-t", "mtty-1", "-p", "mtty"],
    ["mdevctl", "start", "-u", U1],
    ["mdevctl", "list", "-d"],
    ["mdevctl", "undefine", "-u", U1, "-p", "mdpy"],
    ["mdevctl", "undefine", "-u", U1],
    ["mdevctl", "undefine", "-u", U1],
    ["mdevctl", "list"],
    ["mdevctl", "list", "-d"],
    ["mdevctl", "start", "-u", U2],
    ["mdevctl", "start", "-u", U2, "-p", "mtty"],
    ["mdevctl", "start", "-u", U2, "-t", "mtty-1"],
    ["mdevctl", "start", "-p", "nope", "-t", "mtty-1", "-u", U2],
    ["mdevctl", "start", "-p", "MTTY", "-t", "mtty-1", "-u", U2],
    ["mdevctl", "start", "-p", "mtty", "-t", "mtty-9", "-u", U2],
    ["mdevctl", "define", "-u", U2],
    ["mdevctl", "define", "-u", U2, "-p", "mtty"],
    ["mdevctl", "define", "-u", U2, "-p", "mtty", "-t", "mtty-1", "-a"],
    ["mdevctl", "define", "-u", U2, "-p", "mtty", "-t", "mtty-1"],
    ["mdevctl", "modify", "-u", U3, "--auto"],
    ["mdevctl", "modify", "-u", U3, "-p", "mtty", "--auto"],
    (
        ["mdevctl", "define", "-p", GPU, "--jsonfile", "/dev/stdin", "-u", U3],
        '{"mdev_type": "nvidia-559", "start": "auto", "attrs": []}',
    ),
    (
        ["mdevctl", "define", "-p", GPU, "--jsonfile", "/dev/stdin", "-u", U3],
        '{"mdev_type": "nvidia-559", "start": "auto", "attrs": []}',
    ),
    ["mdevctl", "define", "-u", U3, "--jsonfile", "/dev/stdin"],
    ["mdevctl", "define", "-p", GPU, "--jsonfile", "/nonexistent"],
    ["mdevctl", "start", "-u", U3],
    ["mdevctl", "start", "-p", GPU, "-t", "nvidia-559"],
    ["mdevctl", "start", "-p", GPU, "-t", "nvidia-559"],
    ["mdevctl", "list", "-p", GPU],
    ["mdevctl", "stop", "-u", U3],
    ["mdevctl", "list", "-d", "-p", GPU, "--dumpjson"],
    (
        ["mdevctl", "start", "-p", "mtty", "--jsonfile=/dev/stdin", "-u", U2],
        '{"mdev_type":"mtty-1","start":"manual"}',
    ),
    ["mdevctl", "list", "-p", "mtty"],
    ["mdevctl", "start-parent-mdevs", "mtty"],
    # vfio-ap: attributes written in order; a refused one removes the device again.
    ["mdevctl", "define", "-u", AP, "-p", "matrix", "-t", "vfio_ap-passthrough"],
    ["mdevctl", "modify", "-u", AP, "--addattr=assign_adapter", "--value=5"],
    ["mdevctl", "modify", "-u", AP, "--addattr=assign_domain", "--value=0x4"],
    ["mdevctl", "start", "-u", AP],
    ["mdevctl", "list", "-v"],
    ["mdevctl", "list", "--dumpjson", "-u", AP],
    ["mdevctl", "stop", "-u", AP],
    ["mdevctl", "modify", "-u", AP, "--addattr=assign_domain", "--value=300"],
    ["mdevctl", "start", "-u", AP],
    ["mdevctl", "list"],
    # Usage errors: exit status 2 (clap's and argparse's words differ).
    ["mdevctl", "list", "--bogus"],
    ["mdevctl", "list", "-u", "not-a-uuid"],
    ["mdevctl", "modify", "-u", U2, "--auto", "--manual"],
    ["mdevctl", "modify", "-u", U2, "--addattr", "x"],
    ["mdevctl", "define", "-p", "mtty", "-t", "mtty-1", "--jsonfile", "/dev/null"],
    ["mdevctl", "start"],
    ["mdevctl", "stop"],
    ["mdevctl"],
]


def _normalized(text: str) -> str:
    """Generated UUIDs replaced; a listing that shows one is compared as a set of lines
    (a random UUID sorts anywhere among the others)."""
    replaced = _GENERATED.sub("<generated>", text)
    if replaced != text and "\n" in replaced.strip():
        return "\n".join(sorted(replaced.splitlines()))
    return replaced


def _files(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): path.read_text()
        for path in sorted(root.rglob("*"))
        if path.is_file() and "scripts.d" not in path.parts and not path.name.startswith(".")
    }


def test_the_front_end_answers_as_mdevctl_does(start_stack: StackFactory) -> None:
    reference_dir = Path(tempfile.mkdtemp(dir="/tmp"))
    with running_sim("default") as reference_sim:
        expected = run_reference(reference_sim.root, reference_dir, SESSION)
    stack = start_stack()
    mismatches = []
    for command, want in zip(SESSION, expected, strict=True):
        argv, stdin = (command[0], command[1]) if isinstance(command, tuple) else (command, None)
        got = stack.mdevctl(*argv[1:], stdin=stdin)
        if want.returncode == 2:
            same = got.returncode == 2
        elif argv[1] == "start-parent-mdevs":
            # mdevctl logs a timestamped warning for each device already running; mdevd's
            # start of a running parent's devices is quietly idempotent.
            same = (got.returncode, got.stdout) == (want.returncode, want.stdout)
        else:
            same = (got.returncode, _normalized(got.stdout), _normalized(got.stderr)) == (
                want.returncode,
                _normalized(want.stdout),
                _normalized(want.stderr),
            )
        if not same:
            mismatches.append(
                f"{' '.join(argv)}\n  mdevctl: {want.returncode} {want.stdout!r} {want.stderr!r}"
                f"\n  ours:    {got.returncode} {got.stdout!r} {got.stderr!r}"
            )
    assert not mismatches, "\n".join(mismatches)
    ours = {_normalized(k): v for k, v in _files(stack.dirs.mdevctl).items()}
    assert ours == {_normalized(k): v for k, v in _files(reference_dir).items()}
