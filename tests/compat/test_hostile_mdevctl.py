# SPDX-License-Identifier: LGPL-2.1-or-later
"""mdevctl's directory under the same bounds and rules as the TOML drop-ins (issue 15,
findings 1, 4 and 5): a JSON file of 100,000 `[` stopped the daemon from starting
(RecursionError), a parent directory anyone could write to was read, and temporary files a
killed writer left (`PARENT/.UUID.XXXXXXXX.tmp`) stayed forever.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from mdevd import atomic, definitions, mdevctl_format
from mdevd.compat.directory import MIRROR_RECORD_NAME, MdevctlDirectory
from mdevd.definitions import ProblemKind
from tests.compat.conftest import CompatDirs, StackFactory

U1 = "7a3c1d52-0b8e-4c1f-9f62-3d1e5a4b7c90"
U2 = "8b4d2e63-1c9f-4d20-8a73-4e2f6b5c8da1"
U3 = "9c5e3f74-2da0-4e31-9b84-5f307c6d9eb2"
GOOD = json.dumps({"mdev_type": "mtty-2", "start": "manual", "attrs": []})
NOBODY = 65534


def _tree(root: Path) -> mdevctl_format.MdevctlTree:
    return mdevctl_format.read_mdevctl_tree(root, verb="ignored")


def test_deep_json_is_one_problem_and_the_rest_loads(tmp_path: Path) -> None:
    (tmp_path / "mtty").mkdir()
    (tmp_path / "mtty" / U1).write_text("[" * 100_000)
    (tmp_path / "mtty" / U2).write_text(
        '{"mdev_type": "t", "start": "auto", "attrs": ' + "[" * 40 + "]" * 40 + "}"
    )
    (tmp_path / "mtty" / U3).write_text(GOOD)
    tree = _tree(tmp_path)
    assert [d.uuid for d in tree.definitions] == [U3]
    problems = {Path(p.file).name: p.message for p in tree.problems}
    assert set(problems) == {U1, U2}
    assert all(f"nested more than {definitions.MAX_NESTING_DEPTH}" in m for m in problems.values())


def test_a_huge_or_odd_file_is_never_read_whole(tmp_path: Path) -> None:
    parent = tmp_path / "mtty"
    parent.mkdir()
    with (parent / U1).open("wb") as f:
        f.truncate(10 * 1024**3)  # sparse: 10 GB that cost nothing on disk
    os.mkfifo(parent / U2)
    os.mknod(parent / U3, 0o600 | stat.S_IFCHR, os.makedev(1, 5))
    tree = _tree(tmp_path)
    assert tree.definitions == []
    # FIFOs and device nodes are not files to mdevctl either: skipped, never opened.
    (problem,) = tree.problems
    assert Path(problem.file).name == U1
    assert f"larger than {definitions.MAX_MDEVCTL_FILE_SIZE} bytes" in problem.message


def test_a_parent_directory_others_may_write_is_refused_alone(tmp_path: Path) -> None:
    for parent, uuid in (("mtty", U1), ("other", U2)):
        (tmp_path / parent).mkdir()
        (tmp_path / parent / uuid).write_text(GOOD)
    (tmp_path / "other").chmod(0o777)
    tree = _tree(tmp_path)
    assert [d.uuid for d in tree.definitions] == [U1]
    (problem,) = tree.problems
    assert problem.file == str(tmp_path / "other")
    assert "writable by group or others" in problem.message


def test_a_file_owned_by_someone_else_is_refused(tmp_path: Path) -> None:
    (tmp_path / "mtty").mkdir()
    (tmp_path / "mtty" / U1).write_text(GOOD)
    (tmp_path / "mtty" / U2).write_text(GOOD)
    os.chown(tmp_path / "mtty" / U2, NOBODY, -1)
    tree = _tree(tmp_path)
    assert [d.uuid for d in tree.definitions] == [U1]
    assert [f"owned by uid {NOBODY}" in p.message for p in tree.problems] == [True]


def test_an_untrusted_mdevctl_directory_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    (tmp_path / "mtty").mkdir()
    (tmp_path / "mtty" / U1).write_text(GOOD)
    tmp_path.chmod(0o1777)
    tree = _tree(tmp_path)
    assert tree.definitions == []
    assert [p.kind for p in tree.problems] == [ProblemKind.UNREADABLE]


def test_a_deep_mirror_record_is_reported_and_treated_as_empty(tmp_path: Path) -> None:
    (tmp_path / MIRROR_RECORD_NAME).write_text("[" * 100_000)
    entries, problems = MdevctlDirectory(tmp_path).load_record()
    assert entries == {}
    assert len(problems) == 1 and "nested more than" in problems[0].message


def test_the_daemons_temporary_files_are_removed_and_nothing_else(tmp_path: Path) -> None:
    (tmp_path / "mtty").mkdir()
    (tmp_path / "mtty" / U1).write_text(GOOD)
    stale = [
        atomic.temp_path_for(tmp_path / "mtty" / U1),
        atomic.temp_path_for(tmp_path / "mtty" / U2),
        atomic.temp_path_for(tmp_path / MIRROR_RECORD_NAME),
    ]
    kept = [tmp_path / "mtty" / ".notes.tmp", tmp_path / "scripts.d"]
    for path in stale:
        path.write_text("{")
    kept[0].write_text("")
    kept[1].mkdir()
    removed = MdevctlDirectory(tmp_path).remove_stale_temp_files()
    assert sorted(removed) == sorted(str(p.relative_to(tmp_path)) for p in stale)
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in kept)


def test_the_daemon_starts_past_hostile_mdevctl_files_and_cleans_up(
    dirs: CompatDirs, start_stack: StackFactory
) -> None:
    parent = dirs.mdevctl / "mtty"
    parent.mkdir()
    (parent / U1).write_text("[" * 100_000)
    (parent / U2).write_text(GOOD)
    stale = atomic.temp_path_for(parent / U3)
    stale.write_text('{"mdev_type": "mtty-2", "st')  # a write killed half-way
    stack = start_stack()
    assert stack.daemon.process.poll() is None
    assert not stale.exists()
    listed = stack.mdevctl("list", "--defined")
    assert U2 in listed.stdout and U1 not in listed.stdout
    log = stack.daemon.log()
    assert f"{parent / U1}: ignored: not read: line 1: nested more than" in log
    assert f"removed {stale}" in log
