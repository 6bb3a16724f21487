# SPDX-License-Identifier: LGPL-2.1-or-later
"""`mdevd export-mdevctl` exports the definitions in effect, mdevctl's directory's included
(issue 19): it printed `[]` while `check-config` counted the definitions in /etc/mdevctl.d.

Run as the `mdevd` command (`python -m mdevd`), with a configuration root of the test's own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.compat.conftest import StackFactory
from tests.support.paths import REPO
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(180, method="thread")

U1 = "976d8cc2-4bfc-43b9-b9f9-f4af2de91ab9"
U2 = "59e8b599-afdd-4766-a59e-415ef4f5a492"
U3 = "3a7c02f1-62b9-4d0e-9d41-7f1e0c9a5b33"
U4 = "4a0a190f-dcf3-4def-9342-c48768f0c940"
U5 = "9f579710-6ffc-4201-987a-4ffa0fb1f3a5"


def _mdevd(*argv: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "mdevd", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def _mdevctl_file(root: Path, parent: str, uuid: str, type_id: str, start: str = "manual") -> None:
    (root / parent).mkdir(parents=True, exist_ok=True)
    (root / parent / uuid).write_text(
        json.dumps({"mdev_type": type_id, "start": start, "attrs": [{"a": "1"}]})
    )


def _exported(out: str) -> dict[str, dict[str, str]]:
    """`[{parent: [{uuid: config}]}]` as {uuid: {"parent": ..., "type": ...}}."""
    found: dict[str, dict[str, str]] = {}
    for parents in json.loads(out):
        for parent, devices in parents.items():
            for device in devices:
                for uuid, config in device.items():
                    found[uuid] = {"parent": parent, "type": config["mdev_type"]}
    return found


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A configuration root: mdevd.toml naming its directories (relative to itself)."""
    for name in ("etc", "run", "usr"):
        (tmp_path / name).mkdir()
    (tmp_path / "mdevd.toml").write_text(
        '[store]\ndevices_dir = "etc"\nruntime_devices_dir = "run"\nvendor_devices_dir = "usr"\n'
        '[mdevctl]\nconfig_dir = "mdevctl.d"\n'
    )
    (tmp_path / "etc" / "a.toml").write_text(
        f'[[device]]\nuuid = "{U1}"\nparent = "mtty"\ntype = "mtty-2"\n'
    )
    mdevctl = tmp_path / "mdevctl.d"
    _mdevctl_file(mdevctl, "mtty", U2, "mtty-1", "auto")
    _mdevctl_file(mdevctl, "mtty", U3, "mtty-1")
    _mdevctl_file(mdevctl, "matrix", U4, "vfio_ap-passthrough")
    return tmp_path


def test_export_includes_mdevctls_directory_as_check_config_counts_it(root: Path) -> None:
    config = str(root / "mdevd.toml")
    checked = _mdevd("check-config", "--config", config)
    assert checked.returncode == 0, checked.stdout
    assert checked.stdout == (
        f"mdevd: configuration OK: 4 definitions in 1 file and {root / 'mdevctl.d'}\n"
    )
    done = _mdevd("export-mdevctl", "--config", config)
    assert (done.returncode, done.stderr) == (0, "")
    assert _exported(done.stdout) == {
        U1: {"parent": "mtty", "type": "mtty-2"},
        U2: {"parent": "mtty", "type": "mtty-1"},
        U3: {"parent": "mtty", "type": "mtty-1"},
        U4: {"parent": "matrix", "type": "vfio_ap-passthrough"},
    }
    # mdevctl's own shape and order: parents sorted, each one's devices sorted by UUID, and
    # a file's attributes and start as they are.
    document = json.loads(done.stdout)
    assert [list(parents) for parents in document] == [["matrix", "mtty"]]
    assert [next(iter(d)) for d in document[0]["mtty"]] == sorted([U1, U2, U3])
    assert document[0]["mtty"][1][U2] == {
        "mdev_type": "mtty-1",
        "start": "auto",
        "attrs": [{"a": "1"}],
    }
    # Nothing was written: no mirror of a.toml, no mirror record.
    assert sorted(p.name for p in (root / "mdevctl.d").rglob("*")) == sorted(
        ["mtty", "matrix", U2, U3, U4]
    )


def test_mdevctl_dir_and_compat_options_on_both_commands(root: Path, tmp_path: Path) -> None:
    config = str(root / "mdevd.toml")
    other = tmp_path / "other-mdevctl.d"
    _mdevctl_file(other, "mdpy", U5, "mdpy-vga")
    done = _mdevd("export-mdevctl", "--config", config, "--mdevctl-dir", str(other))
    assert done.returncode == 0, done.stderr
    assert set(_exported(done.stdout)) == {U1, U5}
    checked = _mdevd("check-config", "--config", config, "--mdevctl-dir", str(other))
    assert checked.stdout.endswith(f": 2 definitions in 1 file and {other}\n")

    # Compatibility off: the daemon would not read mdevctl's directory, nor does the export.
    done = _mdevd("export-mdevctl", "--config", config, "--mdevctl-compat", "off")
    assert (done.returncode, set(_exported(done.stdout))) == (0, {U1})
    # A directory that does not exist (auto: compatibility off) exports the TOML alone.
    done = _mdevd("export-mdevctl", "--config", config, "--mdevctl-dir", str(tmp_path / "none"))
    assert (done.returncode, set(_exported(done.stdout))) == (0, {U1})
    # `on` with a missing directory: nothing to read there, and nothing is created.
    done = _mdevd(
        "export-mdevctl",
        "--config",
        config,
        "--mdevctl-compat",
        "on",
        "--mdevctl-dir",
        str(tmp_path / "none"),
    )
    assert set(_exported(done.stdout)) == {U1}
    assert not (tmp_path / "none").exists()


def test_export_reports_a_bad_mdevctl_file_and_exports_the_rest(root: Path) -> None:
    broken = root / "mdevctl.d" / "mtty" / U5
    broken.write_text('{"mdev_type": "mtty-1", "start": ')
    done = _mdevd("export-mdevctl", "--config", str(root / "mdevd.toml"))
    assert done.returncode == 1
    assert set(_exported(done.stdout)) == {U1, U2, U3, U4}
    assert done.stderr.startswith(f"{broken}: "), done.stderr


def test_export_is_what_the_daemon_lists_through_the_front_end(
    start_stack: StackFactory,
) -> None:
    """The export and `mdevctl list --defined --dumpjson` (the front end, asking the daemon)
    agree, whatever made each definition: a TOML file (and its mirror in mdevctl's
    directory), a file written into mdevctl's directory, the front end."""
    stack = start_stack()
    dirs = stack.dirs
    (dirs.devices / "a.toml").write_text(
        f'[[device]]\nuuid = "{U1}"\nparent = "mtty"\ntype = "mtty-2"\nautostart = true\n'
    )
    _mdevctl_file(dirs.mdevctl, "mtty", U2, "mtty-1")
    assert stack.mdevctl("define", "-u", U3, "-p", "mdpy", "-t", "mdpy-vga").returncode == 0

    def listed() -> str:
        done = stack.mdevctl("list", "--defined", "--dumpjson")
        return done.stdout if all(u in done.stdout for u in (U1, U2, U3)) else ""

    expected = wait_until(listed, timeout=20, what="the daemon holding all three definitions")
    # The mirror of a.toml is there too, and is not a second definition.
    wait_until(lambda: (dirs.mdevctl / "mtty" / U1).exists(), timeout=20, what="a.toml's mirror")
    done = _mdevd(
        "export-mdevctl",
        "--config",
        "/dev/null",
        "--devices-dir",
        str(dirs.devices),
        "--mdevctl-dir",
        str(dirs.mdevctl),
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == expected
