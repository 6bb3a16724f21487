# SPDX-License-Identifier: LGPL-2.1-or-later
"""docs/security.md states the same table, timeouts and policy facts as the code."""

from __future__ import annotations

import re

from mdevd.bus import auth, names, polkit
from tests.support.bus import PROJECT_POLICY
from tests.support.paths import REPO

DOC = REPO / "docs" / "security.md"


def _table_rows() -> dict[str, set[str]]:
    rows: dict[str, set[str]] = {}
    for line in DOC.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 3:
            continue
        if cells[1] == "none":
            action = auth.NO_CHECK
        elif cells[1].startswith("`org.mdevd"):
            action = cells[1].split("`")[1]
        else:
            continue
        rows[action] = set(re.findall(r"`([A-Z]\w+)`", cells[0]))
    return rows


def test_the_method_table_is_the_code_s() -> None:
    rows = _table_rows()
    for action in (names.ACTION_MANAGE_DEVICES, names.ACTION_CONFIGURE_DEVICES):
        assert rows[action] == {m for m, a in auth.METHOD_ACTIONS.items() if a == action}
    # Reads: the table's own reads plus those dbus-fast serves without the table.
    assert {m for m, a in auth.METHOD_ACTIONS.items() if a == auth.NO_CHECK} <= rows[auth.NO_CHECK]


def test_timeouts_and_interfaces_are_the_code_s() -> None:
    text = DOC.read_text()
    assert f"within {polkit.CHECK_TIMEOUT:g} s" in text
    assert f"{polkit.INTERACTIVE_CHECK_TIMEOUT:g} s for an interactive check" in text
    listed = set(re.findall(r'send_interface="([\w.]+)"', PROJECT_POLICY.read_text()))
    assert {i for i in listed if i.startswith("org.mdevd.")} == {
        names.MANAGER_INTERFACE,
        names.PARENT_INTERFACE,
        names.DEVICE_INTERFACE,
    }
    assert "mdevd's three" in text
    for interface in listed - {i for i in listed if i.startswith("org.mdevd.")}:
        assert f"`{interface.rsplit('.', 1)[1]}`" in text, interface
