"""`mdevd.watch.DefinitionsWatcher` on its own, in-process on real directories and inotify:
what counts as a change, debouncing, directories that come and go."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from mdevd.watch import DefinitionsWatcher

pytestmark = pytest.mark.timeout(60, method="thread")

DEBOUNCE = 0.05


async def _watching(
    directories: list[Path], body: Callable[[Callable[[], Awaitable[int]]], Awaitable[None]]
) -> None:
    """Run `body(quiet)` with a watcher attached; `quiet()` waits until no callback is due
    and returns how many callbacks came since the last call."""
    calls = 0
    seen = 0

    def on_change() -> None:
        nonlocal calls
        calls += 1

    watcher = DefinitionsWatcher(directories, on_change, debounce=DEBOUNCE, max_delay=0.5)
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

    asyncio.run(_watching([tmp_path], body))


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

    asyncio.run(_watching([tmp_path], body))


def test_a_long_burst_still_reports_within_max_delay(tmp_path: Path) -> None:
    async def body(quiet: Callable[[], Awaitable[int]]) -> None:
        # Writes closer together than the debounce, for longer than max_delay (0.5 s).
        for index in range(30):
            (tmp_path / f"{index}.toml").write_text("x")
            await asyncio.sleep(DEBOUNCE / 2)
        assert await quiet() >= 2

    asyncio.run(_watching([tmp_path], body))


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

    asyncio.run(_watching([admin, runtime], body))
