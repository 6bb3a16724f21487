# SPDX-License-Identifier: LGPL-2.1-or-later
"""What a packager asks of `make install`: its two halves, and no bytecode with COMPILE=0.
(tests/systemd/test_install.py checks where `make install` puts every file.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.paths import REPO


def make(target: str, destdir: Path, *variables: str) -> set[str]:
    """`make TARGET` into `destdir`; every path it installed there."""
    result = subprocess.run(
        ["make", "-C", str(REPO), target, f"DESTDIR={destdir}", "PREFIX=/usr",
         f"PYTHON={sys.executable}", *variables],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return {str(p.relative_to(destdir)) for p in destdir.rglob("*")}


def test_install_is_install_python_then_install_data(tmp_path: Path) -> None:
    whole = make("install", tmp_path / "whole")
    python = make("install-python", tmp_path / "halves")
    data = make("install-data", tmp_path / "halves") - python
    assert python | data == whole
    assert not any(p.endswith(".py") for p in data)
    assert any(p.endswith("/mdevd/main.py") for p in python)
    assert {"usr/bin/mdevd", "usr/libexec/mdevd/mdevctl"} <= python


def test_compile_0_leaves_bytecode_to_the_package_tools(tmp_path: Path) -> None:
    installed = make("install", tmp_path, "COMPILE=0")
    assert [p for p in installed if "__pycache__" in p or p.endswith(".pyc")] == []
    assert any(p.endswith("/mdevd/main.py") for p in installed)


def test_by_default_the_installed_package_is_compiled(tmp_path: Path) -> None:
    # The unit's ProtectSystem=strict would keep the daemon from ever writing its bytecode.
    installed = make("install-python", tmp_path)
    assert any(p.endswith(".pyc") and "/mdevd/__pycache__/main." in p for p in installed)
