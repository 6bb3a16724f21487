# SPDX-License-Identifier: LGPL-2.1-or-later
"""The sdist is the whole source release: built by Debian 12's setuptools, it holds every file
of the tree, so `make install`, debian/ and mdevd.spec work from it (test_deb.py builds the
.debs from it)."""

from __future__ import annotations

import email.parser
import tarfile
from pathlib import Path

import pytest

from tests.packaging.build import build_debs
from tests.packaging.test_version import source_version

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The same directory as test_deb.py's: one build per session, whichever module runs first.
    directory = tmp_path_factory.getbasetemp() / "debs"
    build_debs(directory)
    return directory


@pytest.fixture(scope="module")
def sdist_names(out_dir: Path) -> set[str]:
    (sdist,) = out_dir.glob("mdevd-*.tar.gz")
    with tarfile.open(sdist) as archive:
        prefix = f"mdevd-{source_version()}/"
        names = archive.getnames()
    assert all(n.startswith(prefix) or n == prefix.rstrip("/") for n in names)
    return {n.removeprefix(prefix) for n in names}


def test_the_sdist_holds_every_file_of_the_tree(out_dir: Path, sdist_names: set[str]) -> None:
    # build_debs copies the tree it builds from (git's tracked and new files) to out_dir/tree.
    tree = out_dir / "tree"
    files = {str(p.relative_to(tree)) for p in tree.rglob("*") if not p.is_dir()}
    assert sorted(files - sdist_names) == []
    for needed in ("Makefile", "LICENSE", "NEWS.md", "debian/rules", "systemd/mdevd.service"):
        assert needed in sdist_names


def test_the_sdist_holds_no_bytecode(sdist_names: set[str]) -> None:
    assert [n for n in sdist_names if n.endswith(".pyc") or "__pycache__" in n] == []


def test_the_metadata_names_the_version_and_license(out_dir: Path) -> None:
    (sdist,) = out_dir.glob("mdevd-*.tar.gz")
    with tarfile.open(sdist) as archive:
        member = archive.extractfile(f"mdevd-{source_version()}/PKG-INFO")
        assert member is not None
        metadata = email.parser.Parser().parsestr(member.read().decode())
    assert metadata["Version"] == source_version()
    assert metadata["License"] == "LGPL-2.1-or-later"
