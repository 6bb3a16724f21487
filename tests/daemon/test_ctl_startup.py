# SPDX-License-Identifier: LGPL-2.1-or-later
"""`mdevdctl` starts like a small program: no asyncio, no dbus-fast (issue 20).

Those two imports alone took longer than all of `mdevctl list` on the real-kernel guest; every
command but `monitor` goes through mdevd.wire instead. The check is what was imported, not a
time.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.daemon.conftest import ClientStack
from tests.daemon.harness import BusClient, new_uuid

_PROBE = """
import os, sys
if os.environ.get("PROBE_CONTROL"):
    import mdevd.client
from mdevd.cli.mdevdctl import main
try:
    main(sys.argv[1:])
except SystemExit as done:
    code = done.code
heavy = sorted(m for m in ("asyncio", "dbus_fast", "mdevd.client") if m in sys.modules)
print("IMPORTED", ",".join(heavy), file=sys.stderr)
sys.exit(code)
"""


def _probe(
    stack: ClientStack, *args: str, control: bool = False
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _PROBE, "--address", stack.address, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PROBE_CONTROL": "1" if control else ""},
    )


@pytest.mark.parametrize(
    "command",
    [
        ["list"],
        ["list", "--json"],
        ["types"],
        ["status"],
        ["show", "UUID"],
        ["stop", "UUID"],
        ["modify", "UUID", "--autostart"],
        ["create", "mtty", "mtty-2"],
        ["define", "mtty", "mtty-1", "--autostart"],
        ["reload"],
    ],
)
def test_no_command_but_monitor_imports_asyncio_or_dbus_fast(
    stack: ClientStack, client: BusClient, command: list[str]
) -> None:
    uuid = new_uuid()
    client.define_device("mtty", "mtty-1", uuid=uuid, start=True)
    done = _probe(stack, *(uuid if word == "UUID" else word for word in command))
    assert done.returncode == 0, done.stderr
    assert "IMPORTED \n" in done.stderr, done.stderr
    if command[0] in ("list", "show"):
        assert uuid in done.stdout


def test_the_probe_sees_the_imports_it_looks_for(stack: ClientStack, client: BusClient) -> None:
    done = _probe(stack, "list", control=True)
    assert done.returncode == 0, done.stderr
    assert "IMPORTED asyncio,dbus_fast,mdevd.client" in done.stderr


def test_read_errors_keep_their_exit_codes(stack: ClientStack, client: BusClient) -> None:
    missing = _probe(stack, "show", "00000000-0000-4000-8000-000000000000")
    assert missing.returncode == 5, missing.stderr
    assert "[NotFound]" in missing.stderr
    gone = subprocess.run(
        [sys.executable, "-m", "mdevd.cli.mdevdctl", "--address", "unix:path=/nonexistent", "list"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert gone.returncode == 3, gone.stderr
    assert "systemctl status mdevd" in gone.stderr
