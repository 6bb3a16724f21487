# SPDX-License-Identifier: LGPL-2.1-or-later
"""`mdevdctl` and the mdevctl front end import only what their command needs (issue 20: their
start-up is most of what a call costs, and libvirt runs the front end once per operation).

Beyond test_ctl_startup (no asyncio, no dbus-fast), the common commands leave out what they do
not use: no dataclasses (which import inspect), no typing, pathlib, uuid or datetime, no
daemon-side module; `--help` not even the connection (socket) or JSON. Each command runs
through the program's `main` in a fresh interpreter that then lists the modules it imported.
The check is what was imported, not a time.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.daemon.conftest import ClientStack
from tests.daemon.harness import BusClient, new_uuid
from tests.support.paths import REPO

#: What no common command of either program imports.
NEVER = (
    "asyncio", "dbus_fast", "mdevd.client", "mdevd.store", "mdevd.engine", "mdevd.daemon",
    "mdevd.definitions", "mdevd.model", "dataclasses", "inspect", "typing", "pathlib",
    "datetime", "urllib.parse",
)  # fmt: skip
#: What `--help` needs no more than that.
NOT_FOR_HELP = ("socket", "mdevd.wire", "mdevd.calls", "json", "uuid")

# Modules the interpreter had before main (a development install's import finder brings
# pathlib at start-up) are not the program's.
_PROBE = f"""
import os, sys
already = set(sys.modules)
sys.path.insert(0, {str(REPO)!r})
for name in os.environ.get("PROBE_CONTROL", "").split():
    __import__(name)
program = os.environ["PROBE_PROGRAM"]
main = __import__(program, fromlist=["main"]).main
try:
    code = main(sys.argv[1:])
except SystemExit as done:
    code = done.code
wanted = os.environ["PROBE_MODULES"].split()
imported = sorted(m for m in wanted if m in sys.modules and m not in already)
print("IMPORTED", ",".join(imported), file=sys.stderr)
sys.exit(code)
"""


def _probe(
    program: str,
    args: list[str],
    modules: tuple[str, ...],
    *,
    address: str = "unix:path=/nonexistent",
    stdin: str | None = None,
    control: str = "",
) -> set[str]:
    """The `modules` that running `program`'s main with `args` imported."""
    env = {
        **os.environ,
        "DBUS_SYSTEM_BUS_ADDRESS": address,
        "PROBE_PROGRAM": program,
        "PROBE_MODULES": " ".join(modules),
        "PROBE_CONTROL": control,
    }
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, *args],
        input=stdin, capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert done.returncode == 0, (args, done.stderr)
    line = [text for text in done.stderr.splitlines() if text.startswith("IMPORTED ")][-1]
    return set(filter(None, line.removeprefix("IMPORTED ").split(",")))


CTL = "mdevd.cli.mdevdctl"
FRONT = "mdevd.cli.mdevctl"


@pytest.mark.parametrize("program", [CTL, FRONT])
def test_help_imports_neither_the_connection_nor_json(program: str) -> None:
    # The front end's module imports the connection (every command it runs makes calls).
    modules = NEVER + (NOT_FOR_HELP if program == CTL else ("json", "uuid"))
    assert _probe(program, ["--help"], modules) == set()


def test_the_probe_sees_the_imports_it_looks_for() -> None:
    control = "dataclasses typing json uuid socket"
    imported = _probe(CTL, ["--help"], NEVER + NOT_FOR_HELP, control=control)
    assert set(control.split()) <= imported


@pytest.mark.parametrize(
    "args",
    [["list"], ["show", "UUID"], ["stop", "UUID"], ["start", "UUID"], ["create", "mtty", "mtty-1"]],
)
def test_mdevdctl_commands_import_nothing_they_do_not_use(
    stack: ClientStack, client: BusClient, args: list[str]
) -> None:
    uuid = new_uuid()
    client.define_device("mtty", "mtty-1", uuid=uuid, start=args[0] != "start")
    argv = ["--address", stack.address, *(uuid if word == "UUID" else word for word in args)]
    # `create` without --uuid makes one up: only then is uuid imported.
    modules = NEVER + (("json",) if args[0] == "create" else ("json", "uuid"))
    assert _probe(CTL, argv, modules) == set()
    if args[0] == "create":
        assert _probe(CTL, argv, ("uuid",)) == {"uuid"}


def test_mdevdctl_list_json_imports_json_and_no_more(stack: ClientStack) -> None:
    argv = ["--address", stack.address, "list", "--json"]
    assert _probe(CTL, argv, (*NEVER, "json", "uuid")) == {"json"}


def test_libvirts_calls_import_nothing_they_do_not_use(
    stack: ClientStack, client: BusClient
) -> None:
    """The front end's calls as libvirt makes them (shared/reference-data/libvirt-mdevctl-calls).
    A --jsonfile is read with mdevd's own checks of mdevctl's JSON (mdevd.mdevctl_format, the
    definitions' checks and what they import): there, only the daemon's side is left out."""
    uuid = new_uuid()
    document = '{"mdev_type":"mtty-1","start":"manual"}'
    daemon_side = ("asyncio", "dbus_fast", "mdevd.client", "mdevd.store", "mdevd.engine")
    calls: list[tuple[list[str], str | None]] = [
        (["define", "--parent=mtty", "--jsonfile=/dev/stdin", f"--uuid={uuid}"], document),
        (["modify", "--uuid", uuid, "--auto"], None),
        (["start", f"--uuid={uuid}"], None),
        (["list", "--dumpjson", "--defined"], None),
        (["list"], None),
        (["stop", f"--uuid={uuid}"], None),
        (["undefine", f"--uuid={uuid}"], None),
    ]
    for argv, stdin in calls:
        if stdin is not None:
            modules: tuple[str, ...] = daemon_side
        else:
            modules = (*NEVER, "uuid", *(() if "--dumpjson" in argv else ("json",)))
        imported = _probe(FRONT, argv, modules, address=stack.address, stdin=stdin)
        assert imported == set(), (argv, imported)
