# SPDX-License-Identifier: LGPL-2.1-or-later
"""The documented examples are valid, and the benchmark still runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench import bench_store
from mdevd.config import parse_config
from mdevd.definitions import parse_text
from tests.support.paths import REPO

DOCS = [REPO / "docs" / "config-format.md", REPO / "README.md"]


def _toml_blocks(path: Path) -> list[str]:
    return re.findall(r"```toml\n(.*?)```", path.read_text(), flags=re.DOTALL)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_toml_example_in_the_docs_is_valid(doc: Path) -> None:
    blocks = _toml_blocks(doc)
    assert blocks
    for block in blocks:
        if "[[device]]" in block:
            parsed = parse_text(block, doc.name)
            assert parsed.problems == () and parsed.definitions, block
        else:
            assert parse_config(block, doc.name, REPO).problems == (), block


def test_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_store.main(["--devices", "20"]) == 0
    out = capsys.readouterr().out
    assert "20 files" in out and "1 file" in out and "peak traced memory" in out
