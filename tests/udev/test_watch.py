# SPDX-License-Identifier: LGPL-2.1-or-later
"""`mdevd.watch.DirectoryWatcher` on its own, in-process on real directories and inotify:
what counts as a change (as the stores describe what they read: `DefinitionStore.watched`,
`MdevctlDirectory.watched`, or a description of a test's own), debouncing, directories that
come and go."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from mdevd.compat.directory import MdevctlDirectory
from mdevd.store import DefinitionStore
from mdevd.watch import DirectoryWatcher, Watched

pytestmark = pytest.mark.timeout(60, method="thread")

DEBOUNCE = 0.05


def _definitions(*directories: Path) -> list[Watched]:
    """The TOML definition directories, as the store describes them."""
    return DefinitionStore(directories).watched()


def _mdevctl(
    directory: Path, changed_by_others: Callable[[Path], bool] = lambda path: True
) -> list[Watched]:
    """mdevctl's directory, as its store describes it; by default every change is others'."""
    return [MdevctlDirectory(directory).watched(changed_by_others)]


async def _watching(
    watched: list[Watched], body: Callable[[Callable[[], Awaitable[int]]], Awaitable[None]]
) -> None:
    """Run `body(quiet)` with a watcher attached; `quiet()` waits until no callback is due
    and returns how many callbacks came since the last call."""
    calls = 0
    seen = 0

    def on_change() -> None:
        nonlocal calls
        calls += 1

    watcher = DirectoryWatcher(watched, on_change, debounce=DEBOUNCE, max_delay=0.5)
    watcher.open()
    watcher.attach(asyncio.get_running_loop())

    async def quiet() -> int:
        nonlocal seen
        # Long enough for the kernel to queue the events and the debounce to run out.
        await asyncio.sleep(DEBOUNCE * 4)
        while watcher.pending:  # a burst still open
            await asyncio.sleep(DEBOUNCE)
        new, seen = calls - seen, calls
        return new

    try:
        await body(quiet)
    finally:
        watcher.close()


def test_a_burst_of_writes_is_one_change(tmp_path: Path) -> None:
    async def body(quiet: Callable[[], Awaitable[int]]) -> None:
        for index in range(20):
            (tmp_path / f"{index}.toml").write_text("# nothing yet\n")
        assert await quiet() == 1
        (tmp_path / "0.toml").write_text("# edited\n")
        assert await quiet() == 1
        (tmp_path / "0.toml").unlink()
        assert await quiet() == 1
        os.rename(tmp_path / "1.toml", tmp_path / "one.toml")
        assert await quiet() == 1
        os.symlink("/dev/null", tmp_path / "2.toml.mask")
        os.replace(tmp_path / "2.toml.mask", tmp_path / "2.toml")  # masked, systemd style
        assert await quiet() == 1

    asyncio.run(_watching(_definitions(tmp_path), body))


def test_what_the_store_does_not_read_is_no_change(tmp_path: Path) -> None:
    async def body(quiet: Callable[[], Awaitable[int]]) -> None:
        (tmp_path / ".a.toml.1234abcd.tmp").write_text("x")  # the store's temporary files
        (tmp_path / ".hidden.toml").write_text("x")
        (tmp_path / "notes.txt").write_text("x")
        (tmp_path / "a.toml~").write_text("x")
        (tmp_path / "subdir").mkdir()
        (tmp_path / "subdir" / "b.toml").write_text("x")
        assert await quiet() == 0
        # ...but the store's atomic write ends in a rename to a real name.
        os.rename(tmp_path / ".a.toml.1234abcd.tmp", tmp_path / "a.toml")
        assert await quiet() == 1

    asyncio.run(_watching(_definitions(tmp_path), body))


def test_a_long_burst_still_reports_within_max_delay(tmp_path: Path) -> None:
    async def body(quiet: Callable[[], Awaitable[int]]) -> None:
        # Writes closer together than the debounce, for longer than max_delay (0.5 s).
        for index in range(30):
            (tmp_path / f"{index}.toml").write_text("x")
            await asyncio.sleep(DEBOUNCE / 2)
        assert await quiet() >= 2

    asyncio.run(_watching(_definitions(tmp_path), body))


def test_missing_directories_are_waited_for(tmp_path: Path) -> None:
    runtime = tmp_path / "run" / "mdevd" / "devices.d"
    admin = tmp_path / "etc"
    admin.mkdir()

    async def body(quiet: Callable[[], Awaitable[int]]) -> None:
        (tmp_path / "unrelated").mkdir()
        (tmp_path / "unrelated.toml").write_text("x")  # next to, not in, a definition dir
        assert await quiet() == 0
        runtime.mkdir(parents=True)  # three levels appear, one after the other
        assert await quiet() >= 1
        (runtime / "a.toml").write_text("x")
        assert await quiet() == 1
        shutil.rmtree(tmp_path / "run")
        assert await quiet() >= 1
        runtime.mkdir(parents=True)
        (runtime / "b.toml").write_text("x")
        assert await quiet() >= 1
        (runtime / "c.toml").write_text("x")
        assert await quiet() == 1
        (admin / "d.toml").write_text("x")  # the other directory is still watched
        assert await quiet() == 1

    asyncio.run(_watching(_definitions(admin, runtime), body))


UUID_A = "0b0e6c2a-1f3d-4c55-8e4a-6a5f3f0b1c01"
UUID_B = "0b0e6c2a-1f3d-4c55-8e4a-6a5f3f0b1c02"


def test_mdevctls_directory_counts_what_mdevctl_reads(tmp_path: Path) -> None:
    toml, mdevctl = tmp_path / "devices.d", tmp_path / "mdevctl.d"
    toml.mkdir()
    (mdevctl / "mtty").mkdir(parents=True)
    (mdevctl / "scripts.d" / "callouts").mkdir(parents=True)

    async def body(quiet: Callable[[], Awaitable[int]]) -> None:
        (mdevctl / "mtty" / UUID_A).write_text("{}")
        assert await quiet() == 1
        (mdevctl / "mtty" / UUID_A).write_text('{"edited": 1}')
        assert await quiet() == 1
        (mdevctl / "mtty" / UUID_A).unlink()
        assert await quiet() == 1
        # What mdevctl does not read: other names, hidden files, its scripts, the top level.
        (mdevctl / "mtty" / "notes").write_text("x")
        (mdevctl / "mtty" / f".{UUID_A}.1234abcd.tmp").write_text("x")
        (mdevctl / "scripts.d" / "callouts" / UUID_B).write_text("x")
        (mdevctl / ".mdevd-mirrors.json").write_text("{}")
        (mdevctl / UUID_B).write_text("x")
        assert await quiet() == 0
        # A parent directory counts by what it holds: empty, nothing; with a file, a change.
        (mdevctl / "matrix").mkdir()
        assert await quiet() == 0
        (mdevctl / "matrix" / UUID_B).write_text("{}")  # watched since it appeared
        assert await quiet() == 1
        arriving = tmp_path / "elsewhere"
        arriving.mkdir()
        (arriving / UUID_A).write_text("{}")
        os.rename(arriving, mdevctl / "0000:65:00.0")  # arrives whole, file and all
        assert await quiet() == 1
        shutil.rmtree(mdevctl / "0000:65:00.0")  # ...and goes
        assert await quiet() >= 1
        (mdevctl / "mdpy").mkdir()
        assert await quiet() == 0
        (mdevctl / "mdpy").rmdir()  # mdevd never removes one: always someone else's change
        assert await quiet() == 1
        (toml / "a.toml").write_text("x")  # the TOML directories are still watched
        assert await quiet() == 1

    asyncio.run(_watching([*_definitions(toml), *_mdevctl(mdevctl)], body))


def test_mdevctl_files_mdevd_left_as_they_are_are_no_change(tmp_path: Path) -> None:
    mdevctl = tmp_path / "mdevctl.d"
    mdevctl.mkdir()
    own: set[Path] = set()  # stands for CompatStore's record of its own writes

    def changed_by_others(path: Path) -> bool:
        return path not in own

    async def body(quiet: Callable[[], Awaitable[int]]) -> None:
        for parent, uuid in (("mtty", UUID_A), ("matrix", UUID_B)):
            own.add(mdevctl / parent / uuid)
            (mdevctl / parent).mkdir()  # as mdevd's first write under a parent does
            (mdevctl / parent / uuid).write_text("{}")
        assert await quiet() == 0
        (mdevctl / "mtty" / UUID_A).unlink()
        assert await quiet() == 0
        own.clear()
        (mdevctl / "mtty" / UUID_A).write_text("{}")  # someone else's now
        assert await quiet() == 1

    asyncio.run(_watching(_mdevctl(mdevctl, changed_by_others), body))


def test_a_missing_mdevctl_directory_is_waited_for(tmp_path: Path) -> None:
    mdevctl = tmp_path / "etc" / "mdevctl.d"

    async def body(quiet: Callable[[], Awaitable[int]]) -> None:
        (mdevctl / "mtty").mkdir(parents=True)
        assert await quiet() >= 1
        (mdevctl / "mtty" / UUID_A).write_text("{}")
        assert await quiet() == 1

    asyncio.run(_watching(_mdevctl(mdevctl), body))


def test_the_watcher_counts_what_its_user_describes(tmp_path: Path) -> None:
    """No layout is the watcher's own: which names count, which subdirectories hold them and
    whether a change is someone else's all come from the description."""
    root = tmp_path / "conf"
    (root / "kept").mkdir(parents=True)
    (root / "skipped").mkdir()
    asked: list[Path] = []

    def changed_by_others(path: Path) -> bool:
        asked.append(path)
        return path.name != "own.conf"

    watched = Watched(
        root,
        files=lambda name: name.endswith(".conf"),
        subdirectories=lambda name: name != "skipped",
        changed_by_others=changed_by_others,
        description="the test's directory",
    )

    async def body(quiet: Callable[[], Awaitable[int]]) -> None:
        (root / "kept" / "a.toml").write_text("x")  # a name it does not count
        (root / "skipped" / "a.conf").write_text("x")  # a subdirectory it does not accept
        (root / "a.conf").write_text("x")  # its files are one level down, not here
        assert await quiet() == 0
        assert asked == []
        (root / "kept" / "own.conf").write_text("x")  # the user's own write
        assert await quiet() == 0
        assert asked == [root / "kept" / "own.conf"]
        (root / "kept" / "theirs.conf").write_text("x")
        assert await quiet() == 1

    asyncio.run(_watching([watched], body))
