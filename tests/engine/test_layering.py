# SPDX-License-Identifier: LGPL-2.1-or-later
"""The engine knows nothing of D-Bus: it imports nothing of the bus layer or dbus-fast, and
spells no bus name (`mdevd.bus.names` holds them all; the bus layer turns the engine's short
error names into full ones when it sends `DeviceEvent`)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support.paths import REPO

ENGINE_MODULES = sorted((REPO / "mdevd" / "engine").glob("*.py"))


def _imports(tree: ast.Module) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            found.add(node.module)
    return found


@pytest.mark.parametrize("path", ENGINE_MODULES, ids=lambda path: path.name)
def test_an_engine_module_knows_no_bus(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    bus_imports = {
        name
        for name in _imports(ast.parse(text))
        if name.split(".")[0] == "dbus_fast" or name.startswith("mdevd.bus")
    }
    assert bus_imports == set()
    assert "org.mdevd" not in text and "org.freedesktop" not in text
