# SPDX-License-Identifier: LGPL-2.1-or-later
"""The callout script directories are listed once, and again only after a change.

Listing them at every operation was the largest single cost of a create on the real kernel
(docs/performance.md). The cache must never be the reason a script that an admin has just
installed, removed or rewritten is missed, so every test changes the directories and asks at
once, without waiting for anything.
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from mdevd.compat import callouts
from mdevd.compat.callouts import ScriptDirectories


class Counted:
    """`list_scripts`, counting its calls."""

    def __init__(self) -> None:
        self.calls = 0
        self._list = callouts.list_scripts

    def __call__(self, directories: Sequence[Path]) -> list[Path]:
        self.calls += 1
        return self._list(directories)


@pytest.fixture
def listings(monkeypatch: pytest.MonkeyPatch) -> Counted:
    counted = Counted()
    monkeypatch.setattr(callouts, "list_scripts", counted)
    return counted


def _script(path: Path, body: str = "exit 2") -> Path:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


def _names(found: tuple[int, list[Path]]) -> list[str]:
    return [p.name for p in found[1]]


def test_unchanged_directories_are_listed_once(tmp_path: Path, listings: Counted) -> None:
    packaged, admin = tmp_path / "lib", tmp_path / "etc"
    packaged.mkdir()
    _script(packaged / "a")

    async def main() -> None:
        dirs = ScriptDirectories([packaged, admin])
        for _ in range(50):
            assert _names(await dirs.scripts()) == ["a"]
        dirs.close()

    asyncio.run(main())
    assert listings.calls == 1


def test_every_change_is_seen_by_the_next_call(tmp_path: Path, listings: Counted) -> None:
    packaged = tmp_path / "usr" / "lib" / "callouts"
    admin = tmp_path / "etc" / "mdevctl.d" / "scripts.d" / "callouts"
    (tmp_path / "etc").mkdir()

    async def main() -> None:
        dirs = ScriptDirectories([packaged, admin])
        assert _names(await dirs.scripts()) == []
        # The admin's directory appears, two levels below the nearest existing ancestor.
        admin.mkdir(parents=True)
        assert _names(await dirs.scripts()) == []
        _script(admin / "b")
        assert _names(await dirs.scripts()) == ["b"]
        packaged.mkdir(parents=True)
        _script(packaged / "z")
        assert _names(await dirs.scripts()) == ["z", "b"]
        # Rewritten in place: same name, so the listing is the same, but the generation moves
        # (a version 2 script's capabilities are cached per generation).
        calls = listings.calls
        before = (await dirs.scripts())[0]
        assert listings.calls == calls  # nothing changed since the last call: no listing
        with open(admin / "b", "a") as f:
            f.write("# v2\n")
        assert (await dirs.scripts())[0] != before
        # Replaced by rename, removed, and the directory itself removed and made again.
        _script(admin / ".b.new", "exit 0")
        os.rename(admin / ".b.new", admin / "b")
        assert _names(await dirs.scripts()) == ["z", "b"]
        (admin / "b").unlink()
        assert _names(await dirs.scripts()) == ["z"]
        (packaged / "z").unlink()
        packaged.rmdir()
        assert _names(await dirs.scripts()) == []
        packaged.mkdir()
        _script(packaged / "y")
        assert _names(await dirs.scripts()) == ["y"]
        # Not a regular file: not a script.
        (admin / "sub").mkdir()
        assert _names(await dirs.scripts()) == ["y"]
        dirs.close()

    asyncio.run(main())
    # At most one listing per change (eleven calls after changes, one without).
    assert listings.calls <= 11


def test_without_inotify_every_call_lists(
    tmp_path: Path,
    listings: Counted,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def no_instances() -> None:
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    monkeypatch.setattr(callouts, "Inotify", no_instances)

    async def main() -> None:
        dirs = ScriptDirectories([tmp_path])
        assert _names(await dirs.scripts()) == []
        _script(tmp_path / "a")
        assert _names(await dirs.scripts()) == ["a"]
        assert _names(await dirs.scripts()) == ["a"]

    asyncio.run(main())
    assert listings.calls == 3
    assert "listing them at every operation" in caplog.text
