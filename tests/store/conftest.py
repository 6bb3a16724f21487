# SPDX-License-Identifier: LGPL-2.1-or-later
"""Fixtures for the store tests: a directory stack under tmp_path, never /etc."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from mdevd.store import DefinitionStore
from tests.support.paths import TEST_DATA

MDEVCTL_TESTDATA = TEST_DATA / "mdevctl-testdata"

UUID_A = "11111111-2222-4333-8444-555555555555"
UUID_B = "22222222-3333-4444-8555-666666666666"
UUID_C = "33333333-4444-4555-8666-777777777777"


@dataclass(frozen=True)
class Dirs:
    etc: Path
    run: Path
    vendor: Path

    def store(self) -> DefinitionStore:
        return DefinitionStore(
            [self.etc, self.run, self.vendor], write_dir=self.etc, read_only=[self.vendor]
        )


@pytest.fixture
def dirs(tmp_path: Path) -> Dirs:
    made = Dirs(tmp_path / "etc", tmp_path / "run", tmp_path / "vendor")
    for directory in (made.etc, made.run, made.vendor):
        directory.mkdir()
    return made


@pytest.fixture
def store(dirs: Dirs) -> DefinitionStore:
    return dirs.store()


def device_toml(uuid: str, parent: str = "mtty", type_id: str = "mtty-1", extra: str = "") -> str:
    """One `[[device]]` table as an admin would write it."""
    return f'[[device]]\nuuid = "{uuid}"\nparent = "{parent}"\ntype = "{type_id}"\n{extra}'
