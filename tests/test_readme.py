# SPDX-License-Identifier: LGPL-2.1-or-later
"""The README's command lines are ones the programs accept (a renamed option breaks this)."""

from __future__ import annotations

import argparse
import re
import shlex
from collections.abc import Callable

import pytest

from mdevd import main
from mdevd.cli import mdevdctl
from tests.support.paths import REPO

README = REPO / "README.md"
UUID = "0c1d2e3f-4a5b-4c6d-8e7f-901a2b3c4d5e"


def _command_lines(program: str) -> list[list[str]]:
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(), flags=re.DOTALL)
    lines = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line.split("#", 1)[0].strip() or "''")
            if words and words[0] == program:
                lines.append([UUID if w == "UUID" else w for w in words[1:]])
    return lines


@pytest.mark.parametrize(
    ("program", "parser"), [("mdevdctl", mdevdctl.build_parser), ("mdevd", main.build_parser)]
)
def test_every_command_line_in_the_readme_parses(
    program: str, parser: Callable[[], argparse.ArgumentParser]
) -> None:
    lines = _command_lines(program)
    assert lines, f"no {program} command lines found"
    for words in lines:
        parser().parse_args(words)
