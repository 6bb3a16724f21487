# SPDX-License-Identifier: LGPL-2.1-or-later
"""`make install`: every file where distributions expect it, with its mode; a unit that verifies."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mdevd import main
from mdevd.cli import mdevdctl
from tests.support.paths import REPO

MAN_PAGES = {
    "mdevd.8": "usr/share/man/man8/mdevd.8",
    "mdevdctl.1": "usr/share/man/man1/mdevdctl.1",
    "mdevd.toml.5": "usr/share/man/man5/mdevd.toml.5",
}


def make_install(*variables: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["make", "-C", str(REPO), "install", f"PYTHON={sys.executable}", *variables],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def pkg_config(package: str, variable: str, default: str) -> str:
    result = subprocess.run(
        ["pkg-config", f"--variable={variable}", package], capture_output=True, text=True
    )
    return result.stdout.strip() or default


def python_dir(prefix: str) -> Path:
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "python-dir.py"), prefix],
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(result.stdout.strip())


def package_files() -> list[Path]:
    return sorted(
        p.relative_to(REPO)
        for p in (REPO / "mdevd").rglob("*")
        if p.is_file()
        and "__pycache__" not in p.parts
        and not p.relative_to(REPO).is_relative_to("mdevd/sim")
        and p.suffix in (".py", ".typed")
    )


def installed(root: Path) -> dict[str, int]:
    """Every file and directory under `root` (no bytecode) -> its permission bits."""
    return {
        str(p.relative_to(root)): stat.S_IMODE(p.lstat().st_mode)
        for p in root.rglob("*")
        if "__pycache__" not in p.parts
    }


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    destdir = tmp_path_factory.mktemp("destdir")
    make_install(f"DESTDIR={destdir}", "PREFIX=/usr")
    yield destdir


def test_every_file_is_installed_with_its_mode(tree: Path) -> None:
    unit_dir = pkg_config("systemd", "systemdsystemunitdir", "/usr/lib/systemd/system")
    services = pkg_config("dbus-1", "system_bus_services_dir", "/usr/share/dbus-1/system-services")
    completions = pkg_config(
        "bash-completion", "completionsdir", "/usr/share/bash-completion/completions"
    )
    site = python_dir("/usr")
    files = {
        "usr/bin/mdevd": 0o755,
        "usr/bin/mdevdctl": 0o755,
        "usr/bin/mdevd-mdevctl": 0o755,
        f"{unit_dir.lstrip('/')}/mdevd.service": 0o644,
        "usr/share/dbus-1/system.d/org.mdevd.Mdevd1.conf": 0o644,
        f"{services.lstrip('/')}/org.mdevd.Mdevd1.service": 0o644,
        f"{completions.lstrip('/')}/mdevd": 0o644,
        f"{completions.lstrip('/')}/mdevdctl": 0o644,
        "etc/mdevd/mdevd.toml": 0o644,
        **{path: 0o644 for path in MAN_PAGES.values()},
        **{f"{str(site).lstrip('/')}/{p}": 0o644 for p in package_files()},
    }
    files["usr/share/polkit-1/actions/org.mdevd.Mdevd1.policy"] = 0o644
    # libvirtd's PATH can start here: `mdevctl` is mdevd's front end, the real one untouched.
    files["usr/libexec/mdevd/mdevctl"] = 0o777
    directories = {"etc/mdevd/devices.d": 0o755, "usr/libexec/mdevd": 0o755}
    found = installed(tree)
    installed_files = {p: m for p, m in found.items() if not (tree / p).is_dir()}
    assert installed_files == files
    for directory, mode in directories.items():
        assert found[directory] == mode
    # Nothing but parents of the above: no stray directories.
    wanted = set(files) | set(directories)
    for path in found:
        assert any(w == path or w.startswith(path + "/") for w in wanted), path


def test_installed_files_are_the_sources(tree: Path) -> None:
    site = python_dir("/usr")
    for source in package_files():
        assert (tree / site.relative_to("/") / source).read_bytes() == (REPO / source).read_bytes()
    assert (tree / "etc/mdevd/mdevd.toml").read_bytes() == (REPO / "config/mdevd.toml").read_bytes()
    unit_dir = pkg_config("systemd", "systemdsystemunitdir", "/usr/lib/systemd/system")
    unit = tree / unit_dir.lstrip("/") / "mdevd.service"
    assert unit.read_text() == (REPO / "systemd/mdevd.service").read_text()  # PREFIX=/usr


def test_the_installed_package_runs(tree: Path) -> None:
    site = tree / python_dir("/usr").relative_to("/")
    code = (
        f"import sys; sys.path.insert(0, {str(site)!r}); import mdevd.main, mdevd.cli.mdevdctl;"
        f"assert mdevd.main.__file__.startswith({str(tree)!r}), mdevd.main.__file__;"
        "sys.exit(mdevd.main.main(sys.argv[1:]))"
    )
    config = tree / "etc/mdevd/mdevd.toml"
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "check-config",
            "--config",
            str(config),
            "--devices-dir",
            str(tree / "etc/mdevd/devices.d"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "configuration OK" in result.stdout


def test_launchers_run_the_package_with_the_chosen_python(tree: Path) -> None:
    launcher = (tree / "usr/bin/mdevd").read_text()
    assert launcher.startswith(f"#!{sys.executable}\n")
    assert "from mdevd.main import main" in launcher
    assert "from mdevd.cli.mdevdctl import main" in (tree / "usr/bin/mdevdctl").read_text()


def test_an_admins_configuration_is_never_replaced(tmp_path: Path) -> None:
    config = tmp_path / "etc/mdevd/mdevd.toml"
    config.parent.mkdir(parents=True)
    config.write_text("# the admin's\n[daemon]\nlog_level = 'debug'\n")
    result = make_install(f"DESTDIR={tmp_path}", "PREFIX=/usr")
    assert config.read_text() == "# the admin's\n[daemon]\nlog_level = 'debug'\n"
    assert "keeping" in result.stdout
    make_install(f"DESTDIR={tmp_path}", "PREFIX=/usr")  # and a reinstall works


def test_the_installed_unit_verifies_and_follows_prefix(tmp_path: Path) -> None:
    """`systemd-analyze verify`, man pages included, on a real install under a prefix."""
    prefix = tmp_path / "usr"
    make_install(
        f"PREFIX={prefix}",
        f"SYSCONFDIR={tmp_path}/etc",
        f"UNITDIR={tmp_path}/units",
        f"DBUS_POLICYDIR={tmp_path}/dbus/system.d",
        f"DBUS_SERVICEDIR={tmp_path}/dbus/system-services",
        f"POLKIT_ACTIONDIR={tmp_path}/polkit",
        f"BASH_COMPLETIONDIR={tmp_path}/completions",
    )
    unit = tmp_path / "units/mdevd.service"
    assert f"ExecStart={prefix}/bin/mdevd\n" in unit.read_text()
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
        env={**os.environ, "MANPATH": str(prefix / "share/man")},
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@pytest.mark.parametrize("page", sorted(MAN_PAGES))
def test_man_pages_render_without_warnings(page: str) -> None:
    result = subprocess.run(
        ["man", "--warnings", "-E", "UTF-8", "-l", str(REPO / "docs/man" / page)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "MANWIDTH": "80"},
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert "SEE ALSO" in re.sub(".\b", "", result.stdout)  # without the overstrike


def _options_and_commands(parser: object) -> set[str]:
    import argparse

    assert isinstance(parser, argparse.ArgumentParser)
    words: set[str] = set()
    for action in parser._actions:
        words.update(o for o in action.option_strings if o.startswith("--"))
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                words.add(name)
                words |= _options_and_commands(sub)
    return words


@pytest.mark.parametrize(("program", "page"), [("mdevd", "mdevd.8"), ("mdevdctl", "mdevdctl.1")])
def test_man_page_and_completion_know_every_option_and_command(program: str, page: str) -> None:
    parser = main.build_parser() if program == "mdevd" else mdevdctl.build_parser()
    words = _options_and_commands(parser) - {"--help"}
    man_source = (REPO / "docs/man" / page).read_text()
    man_text = re.sub(r"\\f[BIRP]", " ", man_source).replace("\\-", "-")
    completion = (REPO / "completions" / program).read_text()
    for text in (man_text, completion):
        assert sorted(w for w in words if not _mentions(text, w)) == []


def _mentions(text: str, word: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text) is not None


def test_the_mdevctl_front_end_link_points_at_the_installed_program(tree: Path) -> None:
    link = tree / "usr/libexec/mdevd/mdevctl"
    assert os.readlink(link) == "/usr/bin/mdevd-mdevctl"
    assert "mdevd.cli.mdevctl" in (tree / "usr/bin/mdevd-mdevctl").read_text()
