# SPDX-License-Identifier: LGPL-2.1-or-later
"""One version number, in mdevd/__init__.py; everything that repeats it agrees with it."""

from __future__ import annotations

import ast
import re
import subprocess
import tomllib

import pytest

from tests.support.paths import REPO


def source_version() -> str:
    """`__version__` as written in mdevd/__init__.py (read, not imported: the file is the
    source of truth, whatever package the interpreter would import)."""
    module = ast.parse((REPO / "mdevd/__init__.py").read_text())
    for node in module.body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", "") for t in node.targets] == [
            "__version__"
        ]:
            assert isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
            return node.value.value
    raise AssertionError("mdevd/__init__.py has no __version__ = '...'")


def test_the_version_is_a_plain_release_number() -> None:
    # Valid for PEP 440, Debian and RPM alike (no '-', which RPM's Version forbids).
    assert re.fullmatch(r"\d+\.\d+\.\d+", source_version())


def test_pyproject_takes_the_version_from_the_package() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in project["project"]
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "mdevd.__version__"}


def test_debian_changelog_agrees() -> None:
    # A native package: the Debian version is the project's, no revision.
    result = subprocess.run(
        ["dpkg-parsechangelog", "--show-field", "Version"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == source_version()


def test_the_rpm_spec_agrees() -> None:
    spec = REPO / "mdevd.spec"
    if not spec.exists():
        pytest.skip("no mdevd.spec in this tree")
    versions = re.findall(r"^Version:\s*(\S+)\s*$", spec.read_text(), flags=re.MULTILINE)
    assert versions == [source_version()]


def test_news_describes_this_version() -> None:
    headings = re.findall(r"^## (\S+)", (REPO / "NEWS.md").read_text(), flags=re.MULTILINE)
    assert headings and headings[0] == source_version()
