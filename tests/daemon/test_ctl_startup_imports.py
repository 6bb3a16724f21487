# SPDX-License-Identifier: LGPL-2.1-or-later
"""`mdevdctl` and the mdevctl front end import only what their command needs (issue 20: their
start-up is most of what a call costs, and libvirt runs the front end once per operation).

Beyond test_ctl_startup (no asyncio, no dbus-fast), the common commands leave out what they do
not use: no dataclasses (which import inspect), no typing, pathlib, uuid or datetime, no
daemon-side module; `--help` not even the connection (socket) or JSON. The front end's
`--jsonfile` calls (libvirt's define, create and update) read mdevctl's JSON without the TOML
store's modules (mdevd.definitions, mdevd.model, tomllib, tomli_w, difflib). Each command runs
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
#: What reading mdevctl's JSON (`--jsonfile`) needs no more than the other commands.
NOT_FOR_JSONFILE = (
    *NEVER, "mdevd.mdevctl_format", "tomllib", "tomli_w",
    "difflib", "tomlkit", "mdevd.atomic", "uuid",
)  # fmt: skip

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
    [
        ["list"], ["show", "UUID"], ["stop", "UUID"], ["start", "UUID"],
        ["create", "mtty", "mtty-1"], ["define", "mtty", "mtty-1"],
    ],
)  # fmt: skip
def test_mdevdctl_commands_import_nothing_they_do_not_use(
    stack: ClientStack, client: BusClient, args: list[str]
) -> None:
    uuid = new_uuid()
    client.define_device("mtty", "mtty-1", uuid=uuid, start=args[0] != "start")
    argv = ["--address", stack.address, *(uuid if word == "UUID" else word for word in args)]
    # `create` and `define` without --uuid make one up: only then is uuid imported.
    makes_one = args[0] in ("create", "define")
    modules = NEVER + (("json",) if makes_one else ("json", "uuid"))
    assert _probe(CTL, argv, modules) == set()
    if makes_one:
        assert _probe(CTL, argv, ("uuid",)) == {"uuid"}


def test_mdevdctl_list_json_imports_json_and_no_more(stack: ClientStack) -> None:
    argv = ["--address", stack.address, "list", "--json"]
    assert _probe(CTL, argv, (*NEVER, "json", "uuid")) == {"json"}


def test_libvirts_calls_import_nothing_they_do_not_use(
    stack: ClientStack, client: BusClient
) -> None:
    """The front end's calls as libvirt makes them (shared/reference-data/libvirt-mdevctl-calls).
    A --jsonfile is read with mdevd's own checks of mdevctl's JSON (mdevd.mdevctl_config), not
    with the definitions' store and types."""
    uuid = new_uuid()
    document = '{"mdev_type":"mtty-1","start":"manual"}'
    calls: list[tuple[list[str], str | None]] = [
        (["define", "--parent=mtty", "--jsonfile=/dev/stdin", f"--uuid={uuid}"], document),
        (["modify", "--uuid", uuid, "--auto"], None),
        (["modify", "--parent=mtty", "--jsonfile=/dev/stdin", f"--uuid={uuid}", "--defined"],
         document),
        (["start", f"--uuid={uuid}"], None),
        (["modify", "--parent=mtty", "--jsonfile=/dev/stdin", f"--uuid={uuid}", "--live"],
         document),
        (["list", "--dumpjson", "--defined"], None),
        (["list"], None),
        (["stop", f"--uuid={uuid}"], None),
        (["undefine", f"--uuid={uuid}"], None),
        (["start", "--parent=mtty", "--jsonfile=/dev/stdin", f"--uuid={uuid}"], document),
        (["stop", f"--uuid={uuid}"], None),
    ]  # fmt: skip
    for argv, stdin in calls:
        if stdin is not None:
            modules = NOT_FOR_JSONFILE
        else:
            modules = (*NEVER, "uuid", *(() if "--dumpjson" in argv else ("json",)))
        imported = _probe(FRONT, argv, modules, address=stack.address, stdin=stdin)
        assert imported == set(), (argv, imported)


def test_a_create_named_on_the_command_line_imports_nothing_it_does_not_use(
    stack: ClientStack,
) -> None:
    """`start -p PARENT -t TYPE -u UUID`: the device is an mdevctl_shapes.MdevctlConfig, not a
    model.Definition (dataclasses)."""
    uuid = new_uuid()
    for argv in (["start", "-p", "mtty", "-t", "mtty-1", "-u", uuid], ["stop", "-u", uuid]):
        imported = _probe(FRONT, argv, (*NEVER, "json", "uuid"), address=stack.address)
        assert imported == set(), (argv, imported)


def test_a_define_without_a_uuid_imports_uuid_to_make_one_up(stack: ClientStack) -> None:
    """libvirt's nodedev-define of a device without a `<uuid>`: the front end makes one up."""
    document = '{"mdev_type":"mtty-1","start":"manual"}'
    argv = ["define", "--parent=mtty", "--jsonfile=/dev/stdin"]
    imported = _probe(FRONT, argv, NOT_FOR_JSONFILE, address=stack.address, stdin=document)
    assert imported == {"uuid"}


@pytest.mark.parametrize(
    "text", ["", ".", "/", "//", "///", "a", "./a/", "//a//b/", "///a/./b/../", "/dev/stdin"]
)
def test_the_jsonfile_path_is_read_and_printed_as_pathlib_would(text: str) -> None:
    """`--jsonfile` is not a pathlib.Path any more (4 ms of imports), but the same path: the
    file opened and the name in error messages."""
    from pathlib import Path

    from mdevd.cli.mdevctl import build_parser

    args = build_parser().parse_args(["define", "-p", "mtty", f"--jsonfile={text}"])
    assert args.jsonfile == str(Path(text))
