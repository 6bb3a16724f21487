# SPDX-License-Identifier: LGPL-2.1-or-later
"""Definition directories and files must be root's alone; nothing the daemon did not expect
is followed or opened (issue 15, findings 4, 5 and 7).

Before: a world-writable devices.d was read silently (anyone could plant an autostart
definition), a symlink planted as `<uuid>.toml` made a define append to the file it led to,
a device node in the directory was opened before its type was looked at, and temporary files
left by a killed writer stayed forever.
"""

from __future__ import annotations

import ctypes
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from mdevd import atomic, main
from mdevd.definitions import render
from mdevd.errors import ConfigInvalid
from mdevd.model import Definition
from tests.store.conftest import UUID_A, UUID_B, Dirs, device_toml
from tests.support.paths import REPO

NOBODY = 65534
IN_OPEN = 0x00000020


def test_a_directory_writable_by_others_is_refused_alone(dirs: Dirs) -> None:
    (dirs.etc / "planted.toml").write_text(device_toml(UUID_A, extra="autostart = true\n"))
    (dirs.run / "ok.toml").write_text(device_toml(UUID_B))
    dirs.etc.chmod(0o1777)
    result = dirs.store().load()
    assert list(result.definitions) == [UUID_B]
    (problem,) = result.problems
    assert problem.file == str(dirs.etc)
    assert "writable by group or others (mode 1777)" in problem.message
    assert "owned by root" in problem.message


def test_a_directory_owned_by_another_user_is_refused(dirs: Dirs) -> None:
    (dirs.etc / "a.toml").write_text(device_toml(UUID_A))
    os.chown(dirs.etc, NOBODY, -1)
    result = dirs.store().load()
    assert result.definitions == {}
    assert [f"owned by uid {NOBODY}" in p.message for p in result.problems] == [True]


@pytest.mark.parametrize("how", ["mode", "owner"])
def test_a_file_someone_else_may_change_is_refused(dirs: Dirs, how: str) -> None:
    bad = dirs.etc / "a.toml"
    bad.write_text(device_toml(UUID_A))
    (dirs.etc / "b.toml").write_text(device_toml(UUID_B))
    if how == "mode":
        bad.chmod(0o666)
    else:
        os.chown(bad, NOBODY, -1)
    store = dirs.store()
    result = store.load()
    assert list(result.definitions) == [UUID_B]
    (problem,) = result.problems
    assert problem.file == str(bad) and "root's alone" in problem.message
    # A file that was fine and is then made writable is refused at the next load too.
    bad.chmod(0o644)
    os.chown(bad, 0, -1)
    assert sorted(store.load().definitions) == [UUID_A, UUID_B]
    bad.chmod(0o646)
    assert list(store.load().definitions) == [UUID_B]


def test_a_write_into_a_directory_others_may_write_is_refused(dirs: Dirs) -> None:
    store = dirs.store()
    dirs.etc.chmod(0o777)
    with pytest.raises(Exception, match="not trusted"):
        store.save(Definition(UUID_A, "mtty", "mtty-1"))
    assert os.listdir(dirs.etc) == []


def test_a_planted_symlink_is_never_written_through(dirs: Dirs, tmp_path: Path) -> None:
    elsewhere = tmp_path / "root-only.toml"
    elsewhere.write_text("# root's own file, not a definitions file\n")
    elsewhere.chmod(0o600)
    (dirs.etc / f"{UUID_A}.toml").symlink_to(elsewhere)
    with pytest.raises(ConfigInvalid, match="symlink that does not mask"):
        dirs.store().save(Definition(UUID_A, "mtty", "mtty-1"))
    assert elsewhere.read_text() == "# root's own file, not a definitions file\n"


def test_a_symlink_to_dev_null_still_masks_and_a_save_replaces_it(dirs: Dirs) -> None:
    (dirs.vendor / f"{UUID_A}.toml").write_text(device_toml(UUID_A, type_id="vendor"))
    (dirs.etc / f"{UUID_A}.toml").symlink_to("/dev/null")
    store = dirs.store()
    result = store.load()
    assert result.definitions == {} and result.problems == []
    assert store.save(Definition(UUID_A, "mtty", "mine")).type_id == "mine"
    assert not (dirs.etc / f"{UUID_A}.toml").is_symlink()


def _inotify_opens(directory: Path) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = int(libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC))
    assert fd >= 0
    assert libc.inotify_add_watch(fd, os.fsencode(directory), IN_OPEN) >= 0
    return fd


def _opened_names(fd: int) -> set[str]:
    names: set[str] = set()
    try:
        data = os.read(fd, 65536)
    except BlockingIOError:
        return names
    offset = 0
    while offset < len(data):
        _wd, _mask, _cookie, length = (
            int.from_bytes(data[offset + i : offset + i + 4], sys.byteorder) for i in (0, 4, 8, 12)
        )
        raw = data[offset + 16 : offset + 16 + length].split(b"\0", 1)[0]
        names.add(os.fsdecode(raw))
        offset += 16 + length
    return names


def test_device_nodes_and_fifos_are_never_opened(dirs: Dirs) -> None:
    # inotify's IN_OPEN reports every open(2) of a file in the directory, by anyone.
    os.mknod(dirs.etc / "node.toml", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    os.mkfifo(dirs.etc / "fifo.toml", 0o600)
    (dirs.etc / "linked-node.toml").symlink_to(dirs.etc / "node.toml")
    (dirs.etc / "good.toml").write_text(device_toml(UUID_A))
    fd = _inotify_opens(dirs.etc)
    try:
        result = dirs.store().load()
        opened = _opened_names(fd)
    finally:
        os.close(fd)
    assert list(result.definitions) == [UUID_A]
    assert sorted(Path(p.file).name for p in result.problems) == [
        "fifo.toml",
        "linked-node.toml",
        "node.toml",
    ]
    assert all("not a regular file" in p.message for p in result.problems)
    assert "good.toml" in opened  # the watch works
    assert opened.isdisjoint({"node.toml", "fifo.toml", "linked-node.toml"}), opened


def test_check_config_names_a_refused_directory(dirs: Dirs) -> None:
    (dirs.etc / "a.toml").write_text(device_toml(UUID_A))
    dirs.etc.chmod(0o777)
    done = subprocess.run(
        [sys.executable, "-m", "mdevd", "check-config", "--devices-dir", str(dirs.etc)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert f"{dirs.etc}: directory not read: writable by group or others" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr


# --- stale temporary files ------------------------------------------------------------------


def test_stale_temporary_files_are_removed_at_start_up(
    dirs: Dirs, caplog: pytest.LogCaptureFixture
) -> None:
    (dirs.etc / f"{UUID_A}.toml").write_text(device_toml(UUID_A))
    stale = [atomic.temp_path_for(dirs.etc / f"{UUID_A}.toml") for _ in range(3)]
    stale.append(atomic.temp_path_for(dirs.run / f"{UUID_B}.toml"))
    for path in stale:
        path.write_text("[[device]]\nuuid = 'half")
    # Not of the daemon's own pattern: left alone.
    others = [
        dirs.etc / ".swap.tmp",
        dirs.etc / ".x.toml.nothex12.tmp",
        dirs.vendor / ".v.toml.0123abcd.tmp",
    ]
    for path in others:
        path.write_text("")
    os.mkdir(dirs.etc / ".d.toml.0123abcd.tmp")  # ours by name, but not a file

    config = dirs.etc.parent / "mdevd.toml"
    config.write_text("")
    args = main.build_parser().parse_args(
        [
            "--config",
            str(config),
            "--mdevctl-dir",
            str(config.parent / "mdevctl.d"),  # absent: never the host's
            *(f"--devices-dir={d}" for d in (dirs.etc, dirs.run)),
        ]
    )
    main._remove_stale_temp_files(args)
    assert [p for p in stale if p.exists()] == []
    assert all(p.exists() for p in others)
    assert (dirs.etc / ".d.toml.0123abcd.tmp").is_dir()
    assert sorted(os.listdir(dirs.run)) == []
    assert (dirs.etc / f"{UUID_A}.toml").read_text() == device_toml(UUID_A)


def test_the_own_temp_pattern_is_what_temp_path_for_makes() -> None:
    for name in (f"{UUID_A}.toml", "several-devices.toml", "x"):
        made = atomic.temp_path_for(Path("/d") / name).name
        assert atomic.is_own_temp_name(made, Path(name).suffix)
    assert not atomic.is_own_temp_name(".a.toml.tmp")
    assert not atomic.is_own_temp_name(f".{UUID_A}.toml.0123abcd.tmp", ".json")


def test_check_config_never_removes_temporary_files(dirs: Dirs) -> None:
    # Only a starting daemon knows no write of its own is in flight.
    temp = atomic.temp_path_for(dirs.etc / f"{UUID_A}.toml")
    temp.write_text("")
    subprocess.run(
        [sys.executable, "-m", "mdevd", "check-config", "--devices-dir", str(dirs.etc)],
        capture_output=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert temp.exists()


def test_a_render_of_a_definition_round_trips(dirs: Dirs) -> None:
    # The write path through the directory fd keeps an admin's mode.
    path = dirs.etc / "a.toml"
    path.write_text(render([Definition(UUID_A, "mtty", "mtty-1")]))
    path.chmod(0o600)
    dirs.store().save(Definition(UUID_A, "mtty", "mtty-2"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert 'type = "mtty-2"' in path.read_text()
