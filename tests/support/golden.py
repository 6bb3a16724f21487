# SPDX-License-Identifier: LGPL-2.1-or-later
"""Golden files: mdevd's own outputs as they must stay, in tests/data/golden/.

    assert_matches_golden(GOLDEN / "list.txt", actual, "mdevdctl's output")

A test makes the output and compares it with the file, byte for byte. After a deliberate
change of output, `MDEVD_REGENERATE_GOLDEN=1` makes every such test write its files from the
run instead of comparing (as mdevctl's own tests do); the diff is then reviewed like code.
tests/data/golden/README.md lists what is there.
"""

from __future__ import annotations

import os
from pathlib import Path

from tests.support.paths import TEST_DATA

GOLDEN = TEST_DATA / "golden"
#: Write the golden files from this run instead of comparing with them.
REGENERATE = os.environ.get("MDEVD_REGENERATE_GOLDEN") == "1"


def assert_matches_golden(path: Path, actual: str, what: str) -> None:
    """`actual` is the text of the golden file `path`; `what` names the output in the
    failure message. Under MDEVD_REGENERATE_GOLDEN=1, (re)writes the file instead."""
    if REGENERATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual)
        return
    assert path.exists(), f"{path} is missing: MDEVD_REGENERATE_GOLDEN=1 writes it"
    assert actual == path.read_text(), (
        f"{what} differs from {path}; if the change is meant, MDEVD_REGENERATE_GOLDEN=1 rewrites it"
    )
