# SPDX-License-Identifier: LGPL-2.1-or-later
"""Where things are in the checkout, said once for every test, benchmark and script.

    from tests.support.paths import REPO, TEST_DATA

The real-kernel guest imports it too (the checkout is at the same path in the VM), so it
imports nothing but the standard library.
"""

from __future__ import annotations

from pathlib import Path

#: The top of the checkout (the directory holding pyproject.toml).
REPO = Path(__file__).resolve().parents[2]
#: Data files the tests read: golden files, mdevctl's test data, recorded sysfs trees.
TEST_DATA = REPO / "tests" / "data"
