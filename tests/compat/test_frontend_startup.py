# SPDX-License-Identifier: LGPL-2.1-or-later
"""The mdevctl front end starts like a small program (issue 20): libvirt runs it once per
node-device operation, so what it imports is most of its cost.

Each of libvirt's own calls (shared/reference-data/libvirt-mdevctl-calls) is run through the
front end's `main` with a probe that reports which heavy modules were imported: neither
asyncio nor dbus-fast (the calls go through mdevd.wire), nor the definition store it never
uses. The check is what was imported, not a time.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.compat.conftest import CompatStack, StackFactory
from tests.support.paths import REPO

U = "d069d019-36ea-4111-8f0a-8c9a70e21366"
JSON = '{"mdev_type":"mtty-1","start":"manual"}'
HEAVY = ("asyncio", "dbus_fast", "mdevd.client", "mdevd.store", "mdevd.atomic")

_PROBE = f"""
import os, sys
sys.path.insert(0, {str(REPO)!r})
if os.environ.get("PROBE_CONTROL"):
    import mdevd.client, mdevd.store
from mdevd.cli.mdevctl import main
code = main(sys.argv[1:])
heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)
print("IMPORTED", ",".join(heavy), file=sys.stderr)
sys.exit(code)
"""


def _probe(
    stack: CompatStack, *args: str, stdin: str | None = None, control: bool = False
) -> subprocess.CompletedProcess[str]:
    env = {**stack.daemon.env, "PROBE_CONTROL": "1" if control else ""}
    return subprocess.run(
        [sys.executable, "-c", _PROBE, *args],
        input=stdin, capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip


#: libvirt's calls, in the order of a device's life (the .argv files, with mtty for the GPU).
LIBVIRT_CALLS = [
    (["define", "--parent=mtty", "--jsonfile=/dev/stdin", f"--uuid={U}"], JSON),
    (["modify", "--uuid", U, "--auto"], None),
    (["start", f"--uuid={U}"], None),
    (["list", "--dumpjson", "--defined"], None),
    (["types", "--dumpjson"], None),
    (["stop", f"--uuid={U}"], None),
    (["modify", "--uuid", U, "--manual"], None),
    (["undefine", f"--uuid={U}"], None),
    (["start", "--parent=mtty", "--jsonfile=/dev/stdin", f"--uuid={U}"], JSON),
    (["stop", f"--uuid={U}"], None),
]


@pytest.fixture
def stack(start_stack: StackFactory) -> CompatStack:
    return start_stack()


def test_libvirts_calls_import_nothing_heavy(stack: CompatStack) -> None:
    for argv, stdin in LIBVIRT_CALLS:
        done = _probe(stack, *argv, stdin=stdin)
        assert done.returncode == 0, (argv, done.stderr)
        assert "IMPORTED \n" in done.stderr, (argv, done.stderr)
    assert _probe(stack, "list").stdout.strip() == ""  # the last call removed the device


def test_the_probe_sees_the_imports_it_looks_for(stack: CompatStack) -> None:
    done = _probe(stack, "list", control=True)
    assert done.returncode == 0, done.stderr
    assert "IMPORTED " + ",".join(sorted(HEAVY)) in done.stderr


def test_a_refusal_still_reads_as_mdevctls(stack: CompatStack) -> None:
    done = _probe(stack, "stop", f"--uuid={U}")
    assert done.returncode == 1
    assert "Error: " in done.stderr
