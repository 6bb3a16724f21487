# SPDX-License-Identifier: LGPL-2.1-or-later
"""Golden files of mdevdctl's output: the real mdevdctl against the real daemon with a fixed set
of devices (fixed UUIDs, one of each kind an admin meets: failed, waiting, a pending restart, a
pending live update, transient, inactive, plain), compared with `tests/data/golden/`.

Only what differs from run to run is replaced before comparing: the emulated kernel's mount
point (`@SYSFS@`), the daemon's definition directory (`@DEVICES_DIR@`), mdevd's version
(`@VERSION@`) and the owner mdevd records for a caller that names none (`@OWNER@`: the test
runner's systemd unit, else its uid). A change of output is then a change of a golden file,
seen in review.
`MDEVD_REGENERATE_GOLDEN=1` rewrites the files from this run instead of comparing (as
mdevctl's own tests do); read the diff before committing it. docs/json.md describes every
key found in the JSON files, which the last test checks.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from mdevd import __version__
from mdevd.owners import unit_of_cgroup
from tests.daemon.conftest import ClientStack
from tests.support.golden import GOLDEN, assert_matches_golden
from tests.support.paths import REPO

FAILED = "11111111-1111-4111-8111-111111111111"
WAITING = "22222222-2222-4222-8222-222222222222"
PENDING_RESTART = "33333333-3333-4333-8333-333333333333"
PENDING_LIVE = "44444444-4444-4444-8444-444444444444"
TRANSIENT = "55555555-5555-4555-8555-555555555555"
INACTIVE = "66666666-6666-4666-8666-666666666666"
PLAIN = "77777777-7777-4777-8777-777777777777"
#: Created and stopped while the monitors watch.
WATCHED = "88888888-8888-4888-8888-888888888888"

#: The owner of the devices made without `--owner` (all but TRANSIENT's, `nova`).
OWNER = "nova"

#: golden file -> (mdevdctl's arguments, its exit status).
CASES: dict[str, tuple[tuple[str, ...], int]] = {
    "list.txt": (("list",), 0),
    "list.schema0.json": (("list", "--json"), 0),
    "list.schema1.json": (("list", "--schema", "1"), 0),
    "show-failed.txt": (("show", FAILED), 0),
    "show-waiting.txt": (("show", WAITING), 0),
    "show-pending-restart.txt": (("show", PENDING_RESTART), 0),
    "show-pending-live.txt": (("show", PENDING_LIVE), 0),
    "show.schema0.json": (("show", PENDING_LIVE, "--json"), 0),
    "show.schema1.json": (("show", PENDING_LIVE, "--schema", "1"), 0),
    "types.schema0.json": (("types", "--json"), 0),
    "types.schema1.json": (("types", "--schema", "1"), 0),
    "status.txt": (("status",), 7),
    "status.schema1.json": (("status", "--json"), 7),
}
#: golden file -> monitor's arguments; each holds the lines of one create and stop.
MONITORS = {
    "monitor.schema0.jsonl": ("--json",),
    "monitor.schema1.jsonl": ("--schema", "1"),
}


def _default_owner() -> str:
    """The owner the daemon records for mdevdctl run from here without `--owner`: its systemd
    unit (mdevdctl is in this process's cgroup), else its uid."""
    try:
        with open("/proc/self/cgroup", encoding="utf-8") as file:
            unit = unit_of_cgroup(file.read())
    except OSError:
        unit = ""
    return f"unit:{unit}" if unit else f"uid:{os.getuid()}"


def _normalised(text: str, stack: ClientStack) -> str:
    owner = _default_owner()
    text = text.replace(f"Owner:       {owner}\n", "Owner:       @OWNER@\n")
    text = text.replace(f'"owner": "{owner}"', '"owner": "@OWNER@"')
    text = text.replace(str(stack.sim.root), "@SYSFS@")
    text = text.replace(str(stack.daemon.devices_dir), "@DEVICES_DIR@")
    text = text.replace(f"mdevd {__version__} answers", "mdevd @VERSION@ answers")
    return text.replace(f'"version": "{__version__}"', '"version": "@VERSION@"')


def _matches_golden(name: str, actual: str) -> None:
    assert_matches_golden(GOLDEN / name, actual, "mdevdctl's output")


def _ctl(stack: ClientStack, *args: str, code: int = 0) -> str:
    result = stack.daemon.ctl(*args)
    assert (result.returncode, result.stderr) == (code, ""), (args, result.stderr)
    return result.stdout


@pytest.fixture(scope="module")
def devices(stack: ClientStack) -> Iterator[ClientStack]:
    """The fixed devices, made through mdevdctl, in a fixed order (IOMMU groups and available
    instances follow from it)."""
    _ctl(stack, "define", "par-a", "par-a-1", "-u", FAILED, "--attr", "setting=abc", "--autostart")
    # par-a's `setting` takes digits only: the start fails, and LastError says so.
    assert stack.daemon.ctl("start", FAILED).returncode == 1
    _ctl(stack, "define", "0000:66:00.0", "nvidia-556", "-u", WAITING, "--autostart")
    _ctl(stack, "define", "mtty", "mtty-1", "-u", PENDING_RESTART, "--start")
    _ctl(stack, "modify", PENDING_RESTART, "--type", "mtty-2")
    _ctl(stack, "define", "par-a", "par-a-1", "-u", PENDING_LIVE, "--attr", "setting=1", "--start")
    _ctl(stack, "modify", PENDING_LIVE, "--add-attr", "other=2")
    _ctl(stack, "create", "mdpy", "mdpy-vga", "-u", TRANSIENT, "--owner", OWNER)
    _ctl(stack, "define", "par-b", "par-b-1", "-u", INACTIVE)
    _ctl(stack, "define", "0000:65:00.0", "nvidia-558", "-u", PLAIN, "--autostart", "--start")
    yield stack


@pytest.mark.parametrize("name", sorted(CASES))
def test_output_matches_its_golden_file(devices: ClientStack, name: str) -> None:
    args, code = CASES[name]
    _matches_golden(name, _normalised(_ctl(devices, *args, code=code), devices))


def test_monitor_output_matches_its_golden_files(devices: ClientStack) -> None:
    monitors = {
        name: subprocess.Popen(
            [
                sys.executable,
                *("-m", "mdevd.cli.mdevdctl", "--address", devices.address, "monitor", *args),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=devices.daemon.env,
        )
        for name, args in MONITORS.items()
    }
    try:
        for process in monitors.values():
            assert process.stderr is not None
            assert process.stderr.readline().startswith("Monitoring")
        _ctl(devices, "create", "mtty", "mtty-1", "-u", WATCHED)
        _ctl(devices, "stop", WATCHED)
        # Added, started, stopped, removed.
        seen = {}
        for name, process in monitors.items():
            assert process.stdout is not None
            seen[name] = "".join(process.stdout.readline() for _ in range(4))
    finally:
        for process in monitors.values():
            process.terminate()
            process.communicate(timeout=30)
    for name, lines in seen.items():
        _matches_golden(name, _normalised(lines, devices))


def test_every_golden_file_is_one_the_tests_write() -> None:
    # toml/ holds the rendered TOML's, tests/store/test_toml_golden.py checks those.
    present = {path.name for path in GOLDEN.iterdir()} - {"README.md", "toml"}
    assert present == set(CASES) | set(MONITORS)


def _keys(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _keys(item)
    elif isinstance(value, list):
        for item in value:
            yield from _keys(item)


def test_docs_json_md_describes_every_key_of_every_schema() -> None:
    documented = (REPO / "docs" / "json.md").read_text()
    for name in sorted(set(CASES) | set(MONITORS)):
        if ".json" not in name:
            continue
        text = (GOLDEN / name).read_text()
        records = (
            [json.loads(line) for line in text.splitlines()]
            if name.endswith("l")
            else [json.loads(text)]
        )
        for key in {key for record in records for key in _keys(record)}:
            # `key`, or the end of a path to it: `types[].available_instances`.
            mentioned = re.search(rf"`(?:[\w\[\]]+\.)?{re.escape(key)}`", documented)
            assert mentioned, f"docs/json.md does not describe {key!r} ({name})"
        schema = [record.get("schema") if isinstance(record, dict) else None for record in records]
        assert set(schema) == ({1} if ".schema1." in name else {None}), name
