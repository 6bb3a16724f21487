# SPDX-License-Identifier: LGPL-2.1-or-later
"""`mdevdctl`'s reads start like a small program: no asyncio, no dbus-fast (issue 20).

Those two imports alone took longer than all of `mdevctl list` on the real-kernel guest; the
read commands go through mdevd.wire instead. The check is what was imported, not a time.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.daemon.conftest import Stack
from tests.daemon.harness import BusClient, new_uuid

_PROBE = """
import sys
from mdevd.ctl import main
try:
    main(sys.argv[1:])
except SystemExit as done:
    code = done.code
heavy = sorted(m for m in ("asyncio", "dbus_fast", "mdevd.client") if m in sys.modules)
print("IMPORTED", ",".join(heavy), file=sys.stderr)
sys.exit(code)
"""


def _probe(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _PROBE, "--address", stack.address, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "command", [["list"], ["list", "--json"], ["types"], ["status"], ["show", "UUID"]]
)
def test_the_reads_import_neither_asyncio_nor_dbus_fast(
    stack: Stack, client: BusClient, command: list[str]
) -> None:
    uuid = new_uuid()
    client.create_device("mtty", "mtty-1", uuid=uuid)
    done = _probe(stack, *(uuid if word == "UUID" else word for word in command))
    assert done.returncode == 0, done.stderr
    assert "IMPORTED \n" in done.stderr, done.stderr
    if command[0] in ("list", "show"):
        assert uuid in done.stdout


def test_a_change_still_uses_the_asyncio_client(stack: Stack, client: BusClient) -> None:
    """The probe itself can see the heavy imports: a create makes them."""
    done = _probe(stack, "create", "mtty", "mtty-1")
    assert done.returncode == 0, done.stderr
    assert "IMPORTED asyncio,dbus_fast,mdevd.client" in done.stderr


def test_read_errors_keep_their_exit_codes(stack: Stack, client: BusClient) -> None:
    missing = _probe(stack, "show", "00000000-0000-4000-8000-000000000000")
    assert missing.returncode == 5, missing.stderr
    assert "[NotFound]" in missing.stderr
    gone = subprocess.run(
        [sys.executable, "-m", "mdevd.ctl", "--address", "unix:path=/nonexistent", "list"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert gone.returncode == 3, gone.stderr
    assert "systemctl status mdevd" in gone.stderr
