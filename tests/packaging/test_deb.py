# SPDX-License-Identifier: LGPL-2.1-or-later
"""The Debian packages built from this checkout (via the sdist: tests/packaging/build.py): what
they hold, what they depend on, what their maintainer scripts do, and what lintian says.

The maintainer scripts run for real, against a scratch root: dpkg-divert and deb-systemd-helper
work inside `$DPKG_ROOT` as they do under `dpkg --root`. Installing on a running system, the
service starting and `apt-get purge` on a booted Debian are the real-kernel guest's to prove.
"""

from __future__ import annotations

import email.parser
import io
import os
import re
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.packaging.build import BUILD_PATH, build_debs, package_field
from tests.packaging.test_version import source_version
from tests.support.paths import REPO

pytestmark = pytest.mark.slow

SITE = "usr/lib/python3/dist-packages"
#: What a host needs from `mdevd`, outside the Python package.
MDEVD_FILES = {
    "usr/bin/mdevd": 0o755,
    "usr/bin/mdevdctl": 0o755,
    "usr/bin/mdevd-mdevctl": 0o755,
    "lib/systemd/system/mdevd.service": 0o644,
    "usr/share/dbus-1/system.d/org.mdevd.Mdevd1.conf": 0o644,
    "usr/share/dbus-1/system-services/org.mdevd.Mdevd1.service": 0o644,
    "usr/share/polkit-1/actions/org.mdevd.Mdevd1.policy": 0o644,
    "usr/share/man/man1/mdevdctl.1.gz": 0o644,
    "usr/share/man/man5/mdevd.toml.5.gz": 0o644,
    "usr/share/man/man8/mdevd.8.gz": 0o644,
    "usr/share/man/man8/mdevd-mdevctl.8.gz": 0o644,
    "usr/share/bash-completion/completions/mdevd": 0o644,
    "usr/share/bash-completion/completions/mdevdctl": 0o644,
    "etc/mdevd/mdevd.toml": 0o644,
    "usr/share/doc/mdevd/copyright": 0o644,
    "usr/share/doc/mdevd/README.Debian": 0o644,
}
#: Debian 12's packages for the wheel's requirements, as dh_python3 must name them.
PYTHON_DEPENDS = {"python3-dbus-fast", "python3-pyudev", "python3-tomli-w", "python3-tomlkit"}


@dataclass(frozen=True)
class Deb:
    path: Path

    def members(self) -> dict[str, tarfile.TarInfo]:
        """Every file, directory and link, by path without the leading './'."""
        data = subprocess.run(
            ["dpkg-deb", "--fsys-tarfile", str(self.path)], capture_output=True, check=True
        ).stdout
        with tarfile.open(fileobj=io.BytesIO(data)) as archive:
            return {m.name.removeprefix("./").rstrip("/"): m for m in archive}

    def read(self, name: str) -> str:
        data = subprocess.run(
            ["dpkg-deb", "--fsys-tarfile", str(self.path)], capture_output=True, check=True
        ).stdout
        with tarfile.open(fileobj=io.BytesIO(data)) as archive:
            member = archive.extractfile(f"./{name}")
            assert member is not None, name
            return member.read().decode()

    def control_file(self, name: str) -> str:
        """A control member (conffiles, preinst, ...); '' when the package has none."""
        result = subprocess.run(
            ["dpkg-deb", "--info", str(self.path), name], capture_output=True, text=True
        )
        return result.stdout if result.returncode == 0 else ""

    def field(self, name: str) -> str:
        return package_field(self.path, name)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Deb]:
    # One directory for the whole session: test_sdist.py reuses the same build.
    debs = build_debs(tmp_path_factory.getbasetemp() / "debs")
    return {name: Deb(path) for name, path in debs.items()}


@pytest.fixture(scope="module")
def mdevd(built: dict[str, Deb]) -> Deb:
    return built["mdevd"]


@pytest.fixture(scope="module")
def front_end(built: dict[str, Deb]) -> Deb:
    return built["mdevd-mdevctl"]


def test_two_packages_of_this_version(built: dict[str, Deb]) -> None:
    assert sorted(built) == ["mdevd", "mdevd-mdevctl"]
    for deb in built.values():
        assert deb.field("Version") == source_version()
        assert deb.field("Architecture") == "all"
        assert deb.path.name.endswith(f"_{source_version()}_all.deb")


def test_mdevd_holds_what_a_host_needs(mdevd: Deb) -> None:
    members = mdevd.members()
    found = {name: members[name].mode & 0o7777 for name in MDEVD_FILES if name in members}
    assert found == MDEVD_FILES
    assert members["etc/mdevd/devices.d"].isdir()
    link = members["usr/libexec/mdevd/mdevctl"]
    assert link.issym() and link.linkname == "../../bin/mdevd-mdevctl"
    # The Python package: every module of the tree but the emulated kernel, and its metadata.
    tree = REPO / "mdevd"
    modules = {
        f"{SITE}/{p.relative_to(REPO)}"
        for p in tree.rglob("*")
        if p.suffix in (".py", ".typed")
        and "__pycache__" not in p.parts
        and p.relative_to(tree).parts[0] != "sim"
    }
    packaged = {n for n in members if n.startswith(f"{SITE}/mdevd/") and members[n].isfile()}
    assert packaged == modules
    metadata = email.parser.Parser().parsestr(
        mdevd.read(f"{SITE}/mdevd-{source_version()}.dist-info/METADATA")
    )
    assert metadata["Version"] == source_version()
    # What dh_python3 turned into Depends: Debian 12's versions as lower bounds, no upper one.
    requires = sorted(
        re.sub(r"[\s()]", "", r)  # setuptools 66 writes "dbus-fast (>=1.84.2)"
        for r in metadata.get_all("Requires-Dist") or []
        if "extra ==" not in r
    )
    assert requires == ["dbus-fast>=1.84.2", "pyudev>=0.24", "tomli-w>=1.0", "tomlkit>=0.11.7"]


def test_no_bytecode_no_emulated_kernel_no_mdevctl(built: dict[str, Deb]) -> None:
    # dh_python3 compiles on the target; mdevd-sim needs mfusepy, which Debian 12 lacks
    # (debian/README.source); /usr/bin/mdevctl is mdevd-mdevctl's alone, on purpose.
    members = built["mdevd"].members()
    assert [n for n in members if n.endswith((".pyc", ".pyo")) or "__pycache__" in n] == []
    assert [n for n in members if "/mdevd/sim" in n or n.endswith("mdevd-sim")] == []
    assert "usr/bin/mdevctl" not in members
    front_end = built["mdevd-mdevctl"].members()
    assert front_end["usr/bin/mdevctl"].linkname == "mdevd-mdevctl"
    assert front_end["usr/share/man/man8/mdevctl.8.gz"].linkname == "mdevd-mdevctl.8.gz"
    assert sorted(n for n, m in front_end.items() if not m.isdir()) == [
        "usr/bin/mdevctl",
        "usr/share/doc/mdevd-mdevctl/changelog.gz",
        "usr/share/doc/mdevd-mdevctl/copyright",
        "usr/share/man/man8/mdevctl.8.gz",
    ]


def test_the_default_configuration_is_the_only_conffile(mdevd: Deb) -> None:
    assert mdevd.control_file("conffiles").split() == ["/etc/mdevd/mdevd.toml"]
    assert mdevd.read("etc/mdevd/mdevd.toml") == (REPO / "config/mdevd.toml").read_text()


def test_the_unit_is_the_shipped_one_and_runs_the_packaged_daemon(mdevd: Deb) -> None:
    unit = mdevd.read("lib/systemd/system/mdevd.service")
    assert unit == (REPO / "systemd/mdevd.service").read_text()
    assert "\nExecStart=/usr/bin/mdevd\n" in unit
    assert mdevd.read("usr/bin/mdevd").startswith("#!/usr/bin/python3\n")
    # dh_installsystemd's defaults and nothing else: enabled, started on install, restarted on
    # upgrade (safe: a stop leaves devices running, the start adopts them).
    postinst = mdevd.control_file("postinst")
    assert "deb-systemd-helper enable 'mdevd.service'" in postinst
    assert "_dh_action=restart" in postinst
    assert "Alias=" not in unit


def _relations(deb: Deb, field: str) -> list[list[str]]:
    """A relationship field as groups of alternative package names (versions dropped)."""
    text = deb.field(field)
    return [
        [re.sub(r"[\s(:].*", "", alt.strip()) for alt in group.split("|")]
        for group in text.split(",")
        if group.strip()
    ]


def _known_to_apt(names: set[str]) -> set[str]:
    """Those of `names` that are real packages apt has a version of, or virtual ones some real
    package provides (one `apt-cache` run: each loads the whole cache)."""
    shown = subprocess.run(
        ["apt-cache", "showpkg", *sorted(names)], capture_output=True, text=True, timeout=120
    ).stdout
    known = set()
    for section in re.split(r"^Package: ", shown, flags=re.MULTILINE)[1:]:
        name, _, body = section.partition("\n")
        versions = body.partition("Versions: \n")[2].partition("\n\n")[0]
        providers = body.partition("Reverse Provides: \n")[2]
        if versions.strip() or providers.strip():
            known.add(name.strip())
    return known


@pytest.fixture(scope="module")
def apt_lists() -> None:
    # A fresh machine may have no package lists (scripts/bootstrap updates them only when it
    # installs something).
    lists = Path("/var/lib/apt/lists")
    if not any(lists.glob("*_Packages*")):
        subprocess.run(["apt-get", "update", "-qq"], check=True, timeout=300)


@pytest.mark.usefixtures("apt_lists")
def test_every_dependency_is_a_debian_package(built: dict[str, Deb]) -> None:
    depends = _relations(built["mdevd"], "Depends")
    names = {name for group in depends for name in group}
    assert names >= PYTHON_DEPENDS
    assert not any(n.startswith("python3-") and "mfusepy" in n for n in names)
    groups = [
        (deb.path.name, field, group)
        for deb in built.values()
        for field in ("Depends", "Recommends", "Suggests")
        for group in _relations(deb, field)
        if not any(name in built for name in group)  # built here, with the one naming it
    ]
    known = _known_to_apt({name for _, _, group in groups for name in group})
    assert [g for g in groups if not known.intersection(g[2])] == []


@pytest.mark.usefixtures("apt_lists")
def test_apt_resolves_every_dependency_from_the_archive(built: dict[str, Deb]) -> None:
    result = subprocess.run(
        ["apt-get", "install", "--simulate", "-q", *(str(d.path) for d in built.values())],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^Inst mdevd ", result.stdout, flags=re.MULTILINE), result.stdout


@pytest.fixture
def scratch_root(tmp_path: Path) -> Iterator[Path]:
    """A root for `DPKG_ROOT`: dpkg's admin directory, and mdevctl's files as its package has
    them."""
    root = tmp_path / "root"
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "var/lib/dpkg/diversions").touch()
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/mdevctl").write_text("the real mdevctl\n")
    (root / "usr/share/man/man8").mkdir(parents=True)
    (root / "usr/share/man/man8/mdevctl.8.gz").write_text("the real page\n")
    yield root
    shutil.rmtree(root)


def _maintainer_script(deb: Deb, name: str, root: Path, *args: str) -> None:
    script = root.parent / f"{deb.field('Package')}.{name}"
    script.write_text(deb.control_file(name))
    result = subprocess.run(
        ["sh", "-e", str(script), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            "PATH": BUILD_PATH,
            "DPKG_ROOT": str(root),
            "DPKG_ADMINDIR": str(root / "var/lib/dpkg"),
        },
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _diversions(root: Path) -> list[str]:
    listed = subprocess.run(
        ["dpkg-divert", "--admindir", str(root / "var/lib/dpkg"), "--list"],
        capture_output=True,
        text=True,
        check=True,
    )
    return sorted(listed.stdout.splitlines())


MDEVCTL_DIVERSIONS = [
    "diversion of /usr/bin/mdevctl to /usr/bin/mdevctl.distrib by mdevd-mdevctl",
    "diversion of /usr/share/man/man8/mdevctl.8.gz to "
    "/usr/share/man/man8/mdevctl.distrib.8.gz by mdevd-mdevctl",
]


def test_the_front_end_package_diverts_mdevctl_and_gives_it_back(
    front_end: Deb, scratch_root: Path
) -> None:
    root = scratch_root
    _maintainer_script(front_end, "preinst", root, "install")
    assert _diversions(root) == MDEVCTL_DIVERSIONS
    assert (root / "usr/bin/mdevctl.distrib").read_text() == "the real mdevctl\n"
    assert (root / "usr/share/man/man8/mdevctl.distrib.8.gz").read_text() == "the real page\n"
    assert not (root / "usr/bin/mdevctl").exists()
    # An upgrade keeps them (dpkg-divert --add of the same diversion is a no-op).
    _maintainer_script(front_end, "preinst", root, "upgrade", source_version())
    assert _diversions(root) == MDEVCTL_DIVERSIONS
    # dpkg unpacks the package's links, and removes them before postrm remove.
    _maintainer_script(front_end, "postrm", root, "remove")
    assert _diversions(root) == []
    assert (root / "usr/bin/mdevctl").read_text() == "the real mdevctl\n"
    assert (root / "usr/share/man/man8/mdevctl.8.gz").read_text() == "the real page\n"
    assert not (root / "usr/bin/mdevctl.distrib").exists()


def test_a_failed_install_of_the_front_end_leaves_no_diversion(
    front_end: Deb, scratch_root: Path
) -> None:
    _maintainer_script(front_end, "preinst", scratch_root, "install")
    _maintainer_script(front_end, "postrm", scratch_root, "abort-install")
    assert _diversions(scratch_root) == []
    assert (scratch_root / "usr/bin/mdevctl").read_text() == "the real mdevctl\n"


def test_the_front_end_diverts_a_mdevctl_installed_later(
    front_end: Deb, scratch_root: Path
) -> None:
    # Recorded without a file to rename: dpkg unpacks mdevctl's files to the .distrib names.
    (scratch_root / "usr/bin/mdevctl").unlink()
    _maintainer_script(front_end, "preinst", scratch_root, "install")
    assert _diversions(scratch_root) == MDEVCTL_DIVERSIONS
    assert not (scratch_root / "usr/bin/mdevctl.distrib").exists()


def test_purge_removes_what_mdevd_wrote_and_keeps_mdevctls_definitions(
    mdevd: Deb, scratch_root: Path
) -> None:
    root = scratch_root
    definitions = root / "etc/mdevd/devices.d"
    definitions.mkdir(parents=True)
    (definitions / "0c1d2e3f-4a5b-4c6d-8e7f-901a2b3c4d5e.toml").write_text("[[device]]\n")
    (root / "run/mdevd/devices.d").mkdir(parents=True)
    mdevctl_definition = root / "etc/mdevctl.d/mtty/0c1d2e3f-4a5b-4c6d-8e7f-901a2b3c4d5e"
    mdevctl_definition.parent.mkdir(parents=True)
    mdevctl_definition.write_text('{"mdev_type": "mtty-2", "start": "auto"}\n')
    (root / "etc/mdevctl.d/.mdevd-mirrors.json").write_text("{}\n")
    _maintainer_script(mdevd, "postrm", root, "remove")
    assert definitions.is_dir()  # remove keeps the configuration
    _maintainer_script(mdevd, "postrm", root, "purge")
    assert not (root / "etc/mdevd").exists()
    assert not (root / "run/mdevd").exists()
    assert sorted(p.name for p in (root / "etc/mdevctl.d").rglob("*")) == [
        mdevctl_definition.name,
        "mtty",
    ]


def _lintian(built: dict[str, Deb]) -> list[tuple[str, str, str]]:
    """lintian's (severity, package, tag) for both packages, at every level it has."""
    (changes,) = next(iter(built.values())).path.parent.glob("*.changes")
    result = subprocess.run(
        ["lintian", "--pedantic", "--display-info", "--display-experimental", str(changes)],
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": BUILD_PATH, "LANG": "C.UTF-8"},
    )
    assert result.returncode in (0, 1) and "No packages selected" not in result.stdout, (
        result.stdout + result.stderr
    )
    return re.findall(r"^([EWIPX]): ([\w.+-]+)(?: \w+)?: ([\w.+-]+)", result.stdout, flags=re.M)


def test_lintian_finds_no_error_nor_warning_and_the_rest_is_explained(
    built: dict[str, Deb],
) -> None:
    tags = _lintian(built)
    assert [t for t in tags if t[0] in "EW"] == []
    explained = (REPO / "debian/README.source").read_text()
    assert [tag for _, _, tag in tags if tag not in explained] == []
