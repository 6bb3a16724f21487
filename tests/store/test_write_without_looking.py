# SPDX-License-Identifier: LGPL-2.1-or-later
"""A define or removal looks at every directory only when something other than the store
changed them (issue 20, define).

Before: each write listed every directory and stat()ed every file first, to find a hand edit:
O(files) per define, 2.2 ms of a 3 ms define with 100 files on a disk. Now inotify
(`mdevd.dirchanges`) says whether anything but the store's own writes happened since the last
look; these tests show that the look is skipped, and that whatever another writer does is seen
exactly as a fresh store sees it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from mdevd import dirchanges
from mdevd import store as store_module
from mdevd.definitions import Problem
from mdevd.errors import ConfigInvalid, Failed, NotFound, ReadOnly
from mdevd.model import Definition
from mdevd.store import DefinitionStore, LoadResult
from tests.store.conftest import UUID_A, UUID_B, Dirs, device_toml


def _uuid(index: int) -> str:
    return f"{index:08x}-0000-4000-8000-000000000000"


def _definition(uuid: str, parent: str = "mtty") -> Definition:
    return Definition(uuid=uuid, parent=parent, type_id="mtty-1")


@contextlib.contextmanager
def _counting_looks(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """How many directory listings the store makes (one per directory per look)."""
    listings = [0]
    real = store_module._directory_names

    def counted(dir_fd: int, links: set[str]) -> list[str] | None:
        listings[0] += 1
        return real(dir_fd, links)

    monkeypatch.setattr(store_module, "_directory_names", counted)
    yield listings


def _seen(result: LoadResult) -> tuple[object, ...]:
    return (
        result.definitions,
        [(p.file, p.line, p.message, p.kind, p.uuid) for p in result.problems],
        result.files,
        result.masked,
    )


def test_defines_and_removals_do_not_look_at_every_file(
    dirs: Dirs, monkeypatch: pytest.MonkeyPatch
) -> None:
    for index in range(200):
        (dirs.run / f"{_uuid(index)}.toml").write_text(device_toml(_uuid(index)))
    store = dirs.store()
    store.load()
    store.load()  # the second look starts the watch
    with _counting_looks(monkeypatch) as listings:
        for index in range(1000, 1030):
            store.save(_definition(_uuid(index)))
        store.save(_definition(_uuid(1003), parent="other"))
        store.remove(_uuid(1007))
        store.remove(_uuid(5))  # in /run: rewritten there, or deleted
        got = store.get(_uuid(1010))
        assert store.is_writable(_uuid(1011))
        seen = _seen(store.load())
        assert listings[0] == 0
    assert got == dirs.store().get(_uuid(1010))
    assert seen == _seen(dirs.store().load())


def test_a_hand_edit_between_defines_is_seen(dirs: Dirs) -> None:
    store = dirs.store()
    store.load()
    store.save(_definition(_uuid(1)))
    # In place, no rename: the store's own file, and a new one defining the next UUID.
    with open(dirs.etc / f"{_uuid(1)}.toml", "r+") as file:
        file.seek(0, os.SEEK_END)
        file.write(device_toml(_uuid(2), parent="edited"))
    store.save(_definition(_uuid(2)))
    # The define changed the hand-written entry where it was, not a second file.
    assert not (dirs.etc / f"{_uuid(2)}.toml").exists()
    (dirs.etc / "hand.toml").write_text(device_toml(UUID_A, parent="hand"))
    store.save(_definition(UUID_A))
    assert 'parent = "mtty"' in (dirs.etc / "hand.toml").read_text()
    assert _seen(store.load()) == _seen(dirs.store().load())


def test_a_directory_made_unsafe_between_defines_is_refused(dirs: Dirs) -> None:
    store = dirs.store()
    store.load()
    store.save(_definition(UUID_A))
    dirs.etc.chmod(0o777)
    result = store.load()
    assert UUID_A not in result.definitions
    assert _seen(result) == _seen(dirs.store().load())


def test_a_missing_directory_created_later_is_seen(dirs: Dirs) -> None:
    shutil.rmtree(dirs.run)
    store = dirs.store()
    store.load()
    store.save(_definition(_uuid(1)))
    dirs.run.mkdir()
    (dirs.run / "late.toml").write_text(device_toml(UUID_B))
    assert UUID_B in store.load().definitions


def test_without_inotify_every_write_looks_and_still_sees_edits(
    dirs: Dirs, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_more_instances() -> None:
        raise OSError(errno.EMFILE, "inotify_init1: Too many open files")

    monkeypatch.setattr(dirchanges, "Inotify", no_more_instances)
    store = dirs.store()
    store.load()
    with _counting_looks(monkeypatch) as listings:
        store.save(_definition(_uuid(1)))
        (dirs.etc / "hand.toml").write_text(device_toml(UUID_A, parent="hand"))
        store.save(_definition(UUID_A))
        assert listings[0] == 2 * 3  # each define looked at the three directories
    assert not (dirs.etc / f"{UUID_A}.toml").exists()


# ---- whatever another writer does, the long-lived store sees what a fresh one sees ----------


def _foreign_step(rng: random.Random, dirs: Dirs, outside: Path) -> None:
    """One change by someone other than the store, of a kind an admin or a tool makes."""
    directory = rng.choice([dirs.etc, dirs.run, dirs.vendor])
    if not directory.is_dir():
        directory.mkdir()
        return
    names = sorted(p.name for p in directory.iterdir() if p.name.endswith(".toml"))
    name = rng.choice(names) if names and rng.random() < 0.6 else f"f{rng.randrange(6)}.toml"
    path = directory / name
    uuid = _uuid(rng.randrange(12))
    action = rng.randrange(9)
    with contextlib.suppress(OSError):
        if action == 0:  # a new or replaced file, written in place
            path.write_text(device_toml(uuid, parent=f"p{rng.randrange(3)}"))
        elif action == 1:  # appended to in place, no close until the end
            with open(path, "a") as file:
                file.write(device_toml(uuid, parent="appended"))
        elif action == 2:  # an editor's atomic replace
            temp = directory / f".{name}.swp"
            temp.write_text(device_toml(uuid, parent="editor"))
            temp.rename(path)
        elif action == 3:
            path.unlink()
        elif action == 4:  # a mask
            path.unlink(missing_ok=True)
            path.symlink_to("/dev/null")
        elif action == 5:  # unsafe, then maybe safe again
            path.chmod(rng.choice([0o666, 0o644]))
        elif action == 6:  # a symlink to a file elsewhere, whose target changes later
            target = outside / name
            target.write_text(device_toml(uuid, parent="linked"))
            path.unlink(missing_ok=True)
            path.symlink_to(target)
        elif action == 7:  # a linked file's target edited where it is
            for target in outside.iterdir():
                target.write_text(device_toml(uuid, parent="target-edited"))
        elif directory is not dirs.etc:  # a whole directory gone
            shutil.rmtree(directory)


def _store_step(rng: random.Random, store: DefinitionStore) -> None:
    uuid = _uuid(rng.randrange(12))
    with contextlib.suppress(ConfigInvalid, Failed, NotFound, ReadOnly):
        if rng.random() < 0.6:
            store.save(_definition(uuid, parent=f"s{rng.randrange(3)}"))
        else:
            store.remove(uuid)


@pytest.mark.parametrize("seed", range(4))
def test_a_long_lived_store_sees_what_a_fresh_one_sees(
    dirs: Dirs, tmp_path: Path, seed: int
) -> None:
    rng = random.Random(seed)  # noqa: S311 (a reproducible sequence, not a secret)
    outside = tmp_path / "outside"
    outside.mkdir()
    store = dirs.store()
    store.load()
    for step in range(120):
        if rng.random() < 0.5:
            _foreign_step(rng, dirs, outside)
        else:
            _store_step(rng, store)
        assert _seen(store.load()) == _seen(dirs.store().load()), f"seed {seed}, step {step}"


def test_what_load_returns_is_the_callers_own(dirs: Dirs) -> None:
    """The store keeps its state between looks; a caller changing what it got changes nothing
    of it (no definition lost, none made up)."""
    (dirs.etc / "a.toml").write_text(device_toml(UUID_A))
    store = dirs.store()
    store.load()
    got = store.load()  # from the kept state
    got.definitions.clear()
    got.problems.append(Problem("x", 0, "made up"))
    got.files.clear()
    again = store.load()
    assert UUID_A in again.definitions
    assert again.problems == []
    assert again.files == [dirs.etc / "a.toml"]
