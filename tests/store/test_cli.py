# SPDX-License-Identifier: LGPL-2.1-or-later
"""The `mdevd` command line: check-config, import-mdevctl, export-mdevctl, exit codes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mdevd.main import EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE, main
from tests.store.conftest import MDEVCTL_TESTDATA, UUID_A, UUID_B, UUID_C, Dirs, device_toml
from tests.support.paths import REPO


def _dir_flags(dirs: Dirs) -> list[str]:
    return [arg for d in (dirs.etc, dirs.run, dirs.vendor) for arg in ("--devices-dir", str(d))]


def _check_flags(dirs: Dirs) -> list[str]:
    """`_dir_flags`, and an mdevctl directory of the test's own (absent unless a test makes it):
    check-config must not read the host's /etc/mdevctl.d."""
    return [*_dir_flags(dirs), "--mdevctl-dir", str(dirs.etc.parent / "mdevctl.d")]


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_check_config_ok(dirs: Dirs, capsys: pytest.CaptureFixture[str]) -> None:
    (dirs.etc / "a.toml").write_text(device_toml(UUID_A))
    code, out, _ = _run(capsys, "check-config", *_check_flags(dirs))
    assert (code, out) == (EXIT_OK, "mdevd: configuration OK: 1 definition in 1 file\n")


def test_check_config_prints_each_problem_with_file_and_line(
    dirs: Dirs, capsys: pytest.CaptureFixture[str]
) -> None:
    (dirs.etc / "a.toml").write_text(device_toml(UUID_A, extra="autostart = 1\n"))
    (dirs.vendor / "b.toml").write_text(device_toml(UUID_B) + "[[device]]\nuuid = \n")
    (dirs.run / "c.toml").write_text(device_toml(UUID_B))
    code, out, _ = _run(capsys, "check-config", "--config", "/dev/null", *_check_flags(dirs))
    assert code == EXIT_PROBLEMS
    assert out.splitlines() == [
        f"{dirs.etc / 'a.toml'}:5: device {UUID_A}: "
        "'autostart' must be true or false, not an integer",
        f"{dirs.vendor / 'b.toml'}:6: not valid TOML: Invalid value",
        "mdevd: 2 problems found; the rest loads: 1 definition in 3 files",
    ]


def test_a_config_file_relocates_every_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "mdevd.toml"
    config.write_text(
        '[store]\ndevices_dir = "etc"\nruntime_devices_dir = "run"\nvendor_devices_dir = "usr"\n'
        '[mdevctl]\nconfig_dir = "mdevctl.d"\n'
    )
    for name, uuid in (("etc", UUID_A), ("usr", UUID_B)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "x.toml").write_text(device_toml(uuid))
    code, out, _ = _run(capsys, "check-config", "--config", str(config))
    # usr/x.toml is masked by etc/x.toml: one definition, from one file.
    assert (code, out) == (EXIT_OK, "mdevd: configuration OK: 1 definition in 1 file\n")
    code, out, _ = _run(capsys, "export-mdevctl", "--config", str(config))
    assert list(json.loads(out)[0]["mtty"][0]) == [UUID_A]


def test_check_config_given_files_and_directories(
    dirs: Dirs, capsys: pytest.CaptureFixture[str]
) -> None:
    good = dirs.etc / "good.toml"
    good.write_text(device_toml(UUID_A))
    code, out, _ = _run(capsys, "check-config", str(good), str(REPO / "config" / "examples"))
    assert (code, out) == (EXIT_OK, "mdevd: configuration OK: 5 definitions in 3 files\n")
    code, out, _ = _run(capsys, "check-config", str(dirs.etc / "absent.toml"))
    assert code == EXIT_PROBLEMS
    assert out.startswith(f"{dirs.etc / 'absent.toml'}: no such file\n")


def test_check_config_reports_a_bad_config_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "mdevd.toml"
    config.write_text(f'[store]\ndevices_dir = "{tmp_path}"\nwrite_dir = "x"\n')
    code, out, _ = _run(capsys, "check-config", "--config", str(config))
    assert code == EXIT_PROBLEMS
    assert out.startswith(f"{config}:3: unknown key 'write_dir' in [store]")


def test_check_config_checks_mdevctls_directory_in_compatibility_mode(
    dirs: Dirs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mdevctl = tmp_path / "mdevctl.d"
    (mdevctl / "mtty").mkdir(parents=True)
    (dirs.etc / "a.toml").write_text(device_toml(UUID_A))
    good = '{"mdev_type": "mtty-1", "start": "manual", "attrs": []}'
    (mdevctl / "mtty" / UUID_B).write_text(good)
    corrupt = mdevctl / "mtty" / UUID_C
    corrupt.write_text('{"mdev_type": "mtty-1", "start": ')
    badly_named = mdevctl / "mtty" / "not-a-uuid"
    badly_named.write_text(good)
    conflicting = mdevctl / "mtty" / UUID_A  # differs from a.toml's definition
    conflicting.write_text('{"mdev_type": "mtty-2", "start": "auto", "attrs": []}')
    before = sorted((p, p.read_bytes()) for p in mdevctl.rglob("*") if p.is_file())

    config = tmp_path / "mdevd.toml"
    config.write_text(f'[mdevctl]\nconfig_dir = "{mdevctl}"\n')  # compatibility "auto": on
    code, out, _ = _run(capsys, "check-config", "--config", str(config), *_dir_flags(dirs))
    assert code == EXIT_PROBLEMS
    lines = out.splitlines()
    assert lines[-1] == (
        f"mdevd: 3 problems found; the rest loads: 2 definitions in 1 file and {mdevctl}"
    )
    problems = lines[:-1]
    assert len(problems) == 3
    assert any(p.startswith(f"{corrupt}: ") and "JSON" in p for p in problems), problems
    assert f"{badly_named}: ignored: mdevctl ignores it (the name is not a UUID)" in problems
    assert any(
        p.startswith(f"{conflicting}: device {UUID_A} is also defined at {dirs.etc / 'a.toml'}")
        for p in problems
    ), problems
    # Checking writes nothing: no mirror of a.toml, no mirror record.
    assert sorted((p, p.read_bytes()) for p in mdevctl.rglob("*") if p.is_file()) == before

    # Compatibility off: mdevctl's directory is not the daemon's business, nor the check's.
    code, out, _ = _run(
        capsys,
        "check-config",
        "--config",
        str(config),
        "--mdevctl-compat",
        "off",
        *_dir_flags(dirs),
    )
    assert (code, out) == (EXIT_OK, "mdevd: configuration OK: 1 definition in 1 file\n")


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["check-config", "--no-such-flag"])
    assert raised.value.code == EXIT_USAGE
    # Without a command, `mdevd` is the daemon: its own options are checked the same way.
    with pytest.raises(SystemExit) as raised:
        main(["--uevent-source", "carrier-pigeon"])
    assert raised.value.code == EXIT_USAGE
    assert "invalid choice: 'carrier-pigeon'" in capsys.readouterr().err


def _mdevctl_tree(root: Path) -> Path:
    parent = root / "0000:00:02.0"
    parent.mkdir(parents=True)
    shutil.copy(
        MDEVCTL_TESTDATA / "list" / "device1.json", parent / "9f579710-6ffc-4201-987a-4ffa0fb1f3a5"
    )
    shutil.copy(
        MDEVCTL_TESTDATA / "list" / "device2.json", parent / "4a0a190f-dcf3-4def-9342-c48768f0c940"
    )
    return root


def test_import_then_export_round_trips_through_mdevctls_format(
    dirs: Dirs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _mdevctl_tree(tmp_path / "mdevctl.d")
    code, out, _ = _run(
        capsys, "import-mdevctl", "--from", str(source), "--dry-run", *_dir_flags(dirs)
    )
    assert code == EXIT_OK
    assert out.count("# would write") == 2 and "[[device]]" in out
    assert list(dirs.etc.iterdir()) == []

    code, out, _ = _run(capsys, "import-mdevctl", "--from", str(source), *_dir_flags(dirs))
    assert code == EXIT_OK
    assert out.splitlines()[-1] == "mdevd: imported 2, already present 0, not imported 0"
    assert len(list(dirs.etc.glob("*.toml"))) == 2

    code, out, err = _run(capsys, "export-mdevctl", *_dir_flags(dirs))
    assert (code, err) == (EXIT_OK, "")
    expected = json.loads((MDEVCTL_TESTDATA / "list" / "defined-parent.json").read_text())
    assert json.loads(out) == expected


def test_import_to_another_directory_and_report_rejections(
    dirs: Dirs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _mdevctl_tree(tmp_path / "mdevctl.d")
    bad = source / "0000:00:02.0" / UUID_A
    bad.write_text('{"mdev_type": "t", "start": "auto", "attrs": [{"../remove": "1"}]}')
    target = tmp_path / "elsewhere"
    code, out, _ = _run(
        capsys, "import-mdevctl", "--from", str(source), "--to", str(target), *_dir_flags(dirs)
    )
    assert code == EXIT_PROBLEMS
    assert f"{bad}: not imported: mdevctl accepts it, but mdevd refuses it: " in out
    assert len(list(target.glob("*.toml"))) == 2


def test_import_from_a_missing_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run(capsys, "import-mdevctl", "--from", str(tmp_path / "absent"))
    assert code == EXIT_PROBLEMS
    assert "cannot read mdevctl's directory" in err


def test_export_reports_problems_on_stderr(dirs: Dirs, capsys: pytest.CaptureFixture[str]) -> None:
    (dirs.etc / "a.toml").write_text(device_toml(UUID_A) + "bogus = 1\n")
    (dirs.etc / "b.toml").write_text(device_toml(UUID_B))
    code, out, err = _run(capsys, "export-mdevctl", *_dir_flags(dirs))
    assert code == EXIT_PROBLEMS
    assert list(json.loads(out)[0]["mtty"][0]) == [UUID_B]
    assert "unknown key 'bogus'" in err


def test_console_script_runs(dirs: Dirs) -> None:
    (dirs.etc / "a.toml").write_text("[[device]\n")
    done = subprocess.run(
        [sys.executable, "-m", "mdevd.main", "check-config", *_check_flags(dirs)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == EXIT_PROBLEMS
    assert done.stdout.startswith(f"{dirs.etc / 'a.toml'}:1: not valid TOML")
