# SPDX-License-Identifier: LGPL-2.1-or-later
"""Atomic file replacement: old or new content, durable, no stray files taken for definitions."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mdevd import atomic
from mdevd.store import DefinitionStore
from tests.store.conftest import UUID_A, device_toml
from tests.support.paths import REPO


def test_write_creates_and_replaces(tmp_path: Path) -> None:
    path = tmp_path / "a.toml"
    atomic.write_atomic(path, b"one")
    assert path.read_bytes() == b"one"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    os.chmod(path, 0o600)
    atomic.write_atomic(path, b"two")
    assert path.read_bytes() == b"two"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    atomic.write_atomic(path, b"three", mode=0o640)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert os.listdir(tmp_path) == ["a.toml"]


def test_temp_names_are_hidden_and_never_toml(tmp_path: Path) -> None:
    temp = atomic.temp_path_for(tmp_path / "x.toml")
    assert temp.parent == tmp_path
    assert temp.name.startswith(".x.toml.") and not temp.name.endswith(".toml")
    assert atomic.is_temp_name(temp.name)
    assert temp != atomic.temp_path_for(tmp_path / "x.toml")


def test_file_and_directory_are_fsynced_before_and_after_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync-dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync-file")
        real_fsync(fd)

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    atomic.write_atomic(tmp_path / "a.toml", b"data")
    assert events == ["fsync-file", "rename", "fsync-dir"]
    events.clear()
    atomic.remove_durably(tmp_path / "a.toml")
    assert events == ["fsync-dir"]
    # The daemon's runtime records (owners, VF placements) are renamed into place unsynced:
    # a crash of the host ends what they describe.
    events.clear()
    atomic.write_atomic(tmp_path / "owners.json", b"{}", durable=False)
    assert events == ["rename"]
    assert (tmp_path / "owners.json").read_bytes() == b"{}"


@pytest.mark.parametrize("failing", ["write", "fsync", "replace"])
def test_a_failed_write_keeps_the_old_file_and_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    path = tmp_path / "a.toml"
    path.write_bytes(b"old")

    def broken(*args: object) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, failing, broken)
    with pytest.raises(OSError):
        atomic.write_atomic(path, b"new")
    monkeypatch.undo()
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["a.toml"]


def test_a_writer_dying_between_write_and_rename_leaves_the_old_file(tmp_path: Path) -> None:
    # The worst moment, made certain: the data is written, the process dies before the rename.
    path = tmp_path / f"{UUID_A}.toml"
    path.write_text(device_toml(UUID_A))
    child = textwrap.dedent(
        f"""
        import os
        from pathlib import Path
        from mdevd import atomic
        os.fsync = lambda fd: os._exit(9)
        atomic.write_atomic(Path({str(path)!r}), b"[[device]]\\nuuid = 'half")
        """
    )
    done = subprocess.run([sys.executable, "-c", child], cwd=REPO, check=False)
    assert done.returncode == 9
    assert path.read_text() == device_toml(UUID_A)
    leftovers = sorted(os.listdir(tmp_path))
    assert len(leftovers) == 2 and atomic.is_temp_name(leftovers[0])
    result = DefinitionStore([tmp_path]).load()
    assert (list(result.definitions), result.problems) == ([UUID_A], [])


def test_ensure_directory_creates_parents(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "c"
    atomic.ensure_directory(target)
    assert target.is_dir()
    atomic.ensure_directory(target)  # idempotent
    assert stat.S_IMODE(target.stat().st_mode) == 0o755 & ~_umask()


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current
