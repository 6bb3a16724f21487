# SPDX-License-Identifier: LGPL-2.1-or-later
"""The directory stack: precedence, masking, conflicts, and the API's writes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from mdevd import definitions
from mdevd.config import StoreConfig
from mdevd.definitions import ProblemKind
from mdevd.errors import ConfigInvalid, Failed, InvalidArgument, NotFound, ReadOnly
from mdevd.model import Definition
from mdevd.store import DefinitionStore, check_files
from tests.store.conftest import UUID_A, UUID_B, UUID_C, Dirs, device_toml


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --- loading ---------------------------------------------------------------------------------


def test_absent_directories_are_empty_not_errors(tmp_path: Path) -> None:
    result = DefinitionStore([tmp_path / "nope", tmp_path / "nada"]).load()
    assert (result.definitions, result.problems, result.files) == ({}, [], [])


def test_definitions_from_all_directories_load(dirs: Dirs, store: DefinitionStore) -> None:
    write(dirs.etc / "a.toml", device_toml(UUID_A))
    write(dirs.run / "b.toml", device_toml(UUID_B))
    write(dirs.vendor / "c.toml", device_toml(UUID_C))
    result = store.load()
    assert result.problems == []
    assert list(result.definitions) == [UUID_A, UUID_B, UUID_C]
    assert result.definitions[UUID_B].source_file == str(dirs.run / "b.toml")
    assert result.definitions[UUID_B].source_line == 1


def test_a_file_masks_the_same_name_in_lower_directories(
    dirs: Dirs, store: DefinitionStore
) -> None:
    write(dirs.vendor / "gpu.toml", device_toml(UUID_A) + "\n" + device_toml(UUID_B))
    write(dirs.run / "gpu.toml", device_toml(UUID_B, type_id="mtty-2"))
    result = store.load()
    assert list(result.definitions) == [UUID_B]  # UUID_A went with the masked vendor file
    assert result.definitions[UUID_B].type_id == "mtty-2"
    assert result.masked == [dirs.vendor / "gpu.toml"]
    assert result.problems == []  # masking is not a conflict


def test_a_symlink_to_dev_null_masks_away(dirs: Dirs, store: DefinitionStore) -> None:
    write(dirs.vendor / "gpu.toml", device_toml(UUID_A))
    (dirs.etc / "gpu.toml").symlink_to("/dev/null")
    result = store.load()
    assert (result.definitions, result.problems, result.files) == ({}, [], [])
    assert set(result.masked) == {dirs.vendor / "gpu.toml", dirs.etc / "gpu.toml"}


def test_only_visible_toml_files_are_read(dirs: Dirs, store: DefinitionStore) -> None:
    write(dirs.etc / "a.toml", device_toml(UUID_A))
    write(dirs.etc / "b.toml~", device_toml(UUID_B))  # editor backup
    write(dirs.etc / ".c.toml", device_toml(UUID_C))  # hidden
    write(dirs.etc / ".a.toml.1234abcd.tmp", "torn")  # an interrupted write
    write(dirs.etc / "README", "not a definition")
    (dirs.etc / "sub").mkdir()
    write(dirs.etc / "sub" / "d.toml", device_toml(UUID_B))
    result = store.load()
    assert list(result.definitions) == [UUID_A]
    assert result.problems == []


def test_a_bad_file_never_costs_the_others(dirs: Dirs, store: DefinitionStore) -> None:
    write(dirs.etc / "a.toml", device_toml(UUID_A))
    write(dirs.etc / "b.toml", "[[device]\n")
    write(dirs.etc / "c.toml", device_toml(UUID_C, extra="typo = 1\n") + device_toml(UUID_B))
    (dirs.run / "d.toml").mkdir()
    os.mkfifo(dirs.run / "e.toml")  # must not hang the loader
    write(dirs.vendor / "f.toml", device_toml(UUID_C))
    result = store.load()
    assert sorted(result.definitions) == [UUID_A, UUID_B, UUID_C]
    located = [(Path(p.file).name, p.line, p.kind) for p in result.problems]
    assert located == [
        ("b.toml", 1, ProblemKind.SYNTAX),
        ("c.toml", 5, ProblemKind.INVALID),
        ("d.toml", 0, ProblemKind.UNREADABLE),
        ("e.toml", 0, ProblemKind.UNREADABLE),
    ]
    assert "not a regular file" in result.problems[2].message


def test_unreadable_directory_is_a_problem(tmp_path: Path) -> None:
    not_a_dir = write(tmp_path / "file", "")
    result = DefinitionStore([not_a_dir]).load()
    assert [(p.file, p.kind) for p in result.problems] == [(str(not_a_dir), ProblemKind.UNREADABLE)]


def test_conflicts_have_a_deterministic_winner_and_are_reported(
    dirs: Dirs, store: DefinitionStore
) -> None:
    write(dirs.vendor / "a.toml", device_toml(UUID_A, type_id="vendor"))
    write(dirs.run / "z.toml", device_toml(UUID_A, type_id="run"))
    write(dirs.run / "b.toml", device_toml(UUID_A, type_id="run-b"))  # same dir: b < z
    write(dirs.run / "c.toml", device_toml(UUID_B) + "\n" + device_toml(UUID_B, type_id="second"))
    for _ in range(2):  # the same answer every time
        result = store.load()
        assert result.definitions[UUID_A].type_id == "run-b"
        assert result.definitions[UUID_B].type_id == "mtty-1"
        conflicts = [(Path(p.file).name, p.line, p.uuid) for p in result.problems]
        assert conflicts == [
            ("c.toml", 6, UUID_B),
            ("z.toml", 1, UUID_A),
            ("a.toml", 1, UUID_A),
        ]
        assert all(p.kind is ProblemKind.CONFLICT for p in result.problems)
        assert f"also defined at {dirs.run / 'b.toml'}:1, which takes precedence" in str(
            result.problems[1]
        )


def test_an_invalid_entry_does_not_win_a_conflict(dirs: Dirs, store: DefinitionStore) -> None:
    write(dirs.etc / "a.toml", device_toml(UUID_A, extra="autostart = 1\n"))
    write(dirs.vendor / "b.toml", device_toml(UUID_A, type_id="vendor"))
    result = store.load()
    assert result.definitions[UUID_A].type_id == "vendor"
    assert [p.kind for p in result.problems] == [ProblemKind.INVALID]


def test_changed_files_are_read_again(dirs: Dirs, store: DefinitionStore) -> None:
    path = write(dirs.etc / "a.toml", device_toml(UUID_A))
    assert store.load().definitions[UUID_A].type_id == "mtty-1"
    write(path, device_toml(UUID_A, type_id="mtty-2-longer"))
    assert store.load().definitions[UUID_A].type_id == "mtty-2-longer"
    path.unlink()
    assert store.load().definitions == {}


def test_check_files_checks_given_files_alone(dirs: Dirs) -> None:
    a = write(dirs.etc / "a.toml", device_toml(UUID_A))
    b = write(dirs.vendor / "a.toml", device_toml(UUID_A))  # same name: checked anyway
    result = check_files([a, b])
    assert list(result.definitions) == [UUID_A]
    assert [p.kind for p in result.problems] == [ProblemKind.CONFLICT]


def test_from_config_uses_the_three_directories(tmp_path: Path) -> None:
    config = StoreConfig(tmp_path / "e", tmp_path / "r", tmp_path / "v")
    store = DefinitionStore.from_config(config)
    assert store.dirs == (tmp_path / "e", tmp_path / "r", tmp_path / "v")
    assert store.write_dir == tmp_path / "e"
    assert store.read_only == {tmp_path / "v"}


def test_constructor_refuses_nonsense(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        DefinitionStore([])
    with pytest.raises(ValueError):
        DefinitionStore([tmp_path], write_dir=tmp_path / "elsewhere")
    with pytest.raises(ValueError):
        DefinitionStore([tmp_path], read_only=[tmp_path])


# --- writes for the API ---------------------------------------------------------------------


def test_save_new_device_writes_one_file_named_for_it(dirs: Dirs, store: DefinitionStore) -> None:
    new = Definition(
        UUID_A.upper(), "matrix", "vfio_ap-passthrough", True, (("assign_adapter", "5"),)
    )
    saved = store.save(new)
    path = dirs.etc / f"{UUID_A}.toml"
    assert saved.source_file == str(path)
    assert definitions.same_device(saved, definitions.check_definition(new))
    assert os.listdir(dirs.etc) == [f"{UUID_A}.toml"]  # no temp file left behind
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    text = path.read_text()
    assert text.startswith("# Written by mdevd.")
    assert text.endswith(
        f'[[device]]\nuuid = "{UUID_A}"\nparent = "matrix"\ntype = "vfio_ap-passthrough"\n'
        'autostart = true\nattributes = [\n    { name = "assign_adapter", value = "5" },\n]\n'
    )
    assert store.load().definitions[UUID_A] == saved


def test_save_creates_the_write_directory(tmp_path: Path) -> None:
    etc = tmp_path / "etc" / "mdevd" / "devices.d"
    store = DefinitionStore([etc])
    store.save(Definition(UUID_A, "mtty", "mtty-1"))
    assert (etc / f"{UUID_A}.toml").is_file()


def test_save_updates_a_hand_written_file_in_place(dirs: Dirs, store: DefinitionStore) -> None:
    original = (
        "# my devices\n"
        + device_toml(UUID_A, extra="autostart = true  # boot with it\n")
        + "\n# keep me\n"
        + device_toml(UUID_B)
    )
    path = write(dirs.etc / "farm.toml", original)
    os.chmod(path, 0o600)
    current = store.load().definitions[UUID_A]
    saved = store.save(Definition(UUID_A, "mtty", "mtty-2", True))
    assert saved.source_file == str(path)
    assert path.read_text() == original.replace(
        'type = "mtty-1"\nautostart', 'type = "mtty-2"\nautostart'
    )
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # the admin's mode is kept
    assert sorted(os.listdir(dirs.etc)) == ["farm.toml"]
    assert current.source_line == saved.source_line


def test_saving_an_unchanged_definition_writes_nothing(dirs: Dirs, store: DefinitionStore) -> None:
    path = write(dirs.etc / "a.toml", device_toml(UUID_A))
    before = path.stat()
    saved = store.save(Definition(UUID_A, "mtty", "mtty-1"))
    assert saved.source_file == str(path)
    assert path.stat().st_ino == before.st_ino and path.stat().st_mtime_ns == before.st_mtime_ns


def test_runtime_definitions_are_changed_where_they_live(
    dirs: Dirs, store: DefinitionStore
) -> None:
    path = write(dirs.run / "boot.toml", device_toml(UUID_A))
    saved = store.save(Definition(UUID_A, "mtty", "mtty-1", autostart=True))
    assert saved.source_file == str(path)
    assert "autostart = true" in path.read_text()
    assert os.listdir(dirs.etc) == []
    store.remove(UUID_A)
    assert not path.exists()


def test_vendor_definitions_are_read_only(dirs: Dirs, store: DefinitionStore) -> None:
    vendor_file = write(dirs.vendor / "gpu.toml", device_toml(UUID_A))
    with pytest.raises(ReadOnly) as raised:
        store.save(Definition(UUID_A, "mtty", "mtty-2"))
    message = raised.value.message
    assert f"{vendor_file}:1" in message
    assert f"ln -s /dev/null {dirs.etc / 'gpu.toml'}" in message
    with pytest.raises(ReadOnly):
        store.remove(UUID_A)
    assert not store.is_writable(UUID_A)
    assert store.is_writable(UUID_B)
    assert vendor_file.read_text() == device_toml(UUID_A)
    assert os.listdir(dirs.etc) == []


def test_the_documented_override_of_a_vendor_file_works(dirs: Dirs, store: DefinitionStore) -> None:
    write(dirs.vendor / "gpu.toml", device_toml(UUID_A) + "\n" + device_toml(UUID_B))
    (dirs.etc / "gpu.toml").write_text((dirs.vendor / "gpu.toml").read_text())
    store.save(Definition(UUID_A, "mtty", "mtty-2"))  # now edits the admin's copy
    assert store.load().definitions[UUID_A].source_file == str(dirs.etc / "gpu.toml")
    store.remove(UUID_A)
    store.remove(UUID_B)
    # Emptied, but kept: deleting it would bring the vendor's devices back.
    assert (dirs.etc / "gpu.toml").exists()
    assert store.load().definitions == {}


def test_remove_refuses_when_a_vendor_copy_would_take_over(
    dirs: Dirs, store: DefinitionStore
) -> None:
    mine = write(dirs.etc / "a.toml", device_toml(UUID_A))
    write(dirs.vendor / "b.toml", device_toml(UUID_A, type_id="vendor"))
    with pytest.raises(ReadOnly, match="would take effect once"):
        store.remove(UUID_A)
    assert mine.read_text() == device_toml(UUID_A)


def test_remove_deletes_a_file_left_empty_and_keeps_neighbours(
    dirs: Dirs, store: DefinitionStore
) -> None:
    store.save(Definition(UUID_A, "mtty", "mtty-1"))
    shared = write(
        dirs.etc / "shared.toml", "# two\n" + device_toml(UUID_B) + "\n" + device_toml(UUID_C)
    )
    store.remove(UUID_A)
    assert not (dirs.etc / f"{UUID_A}.toml").exists()
    store.remove(UUID_B)
    assert shared.read_text() == "# two\n" + device_toml(UUID_C)
    with pytest.raises(NotFound):
        store.remove(UUID_A)
    assert list(store.load().definitions) == [UUID_C]


def test_remove_takes_every_writable_copy(dirs: Dirs, store: DefinitionStore) -> None:
    write(dirs.etc / "a.toml", device_toml(UUID_A) + "\n" + device_toml(UUID_A, type_id="dup"))
    write(dirs.run / "b.toml", device_toml(UUID_A) + "\n" + device_toml(UUID_B))
    store.remove(UUID_A)
    result = store.load()
    assert list(result.definitions) == [UUID_B]
    assert result.problems == []
    assert not (dirs.etc / "a.toml").exists()


def test_save_appends_to_an_existing_file_of_its_name(dirs: Dirs, store: DefinitionStore) -> None:
    path = write(dirs.etc / f"{UUID_A}.toml", "# placed by hand\n" + device_toml(UUID_B))
    store.save(Definition(UUID_A, "mtty", "mtty-1"))
    assert path.read_text() == "# placed by hand\n" + device_toml(UUID_B) + "\n" + device_toml(
        UUID_A
    )


def test_save_over_a_mask_replaces_the_mask(dirs: Dirs, store: DefinitionStore) -> None:
    write(dirs.vendor / f"{UUID_A}.toml", device_toml(UUID_A, type_id="vendor"))
    (dirs.etc / f"{UUID_A}.toml").symlink_to("/dev/null")
    saved = store.save(Definition(UUID_A, "mtty", "mine"))
    assert saved.type_id == "mine"
    assert not (dirs.etc / f"{UUID_A}.toml").is_symlink()


def test_save_refuses_to_write_where_it_would_be_masked(tmp_path: Path) -> None:
    top, low = tmp_path / "top", tmp_path / "low"
    top.mkdir()
    low.mkdir()
    (top / f"{UUID_A}.toml").symlink_to("/dev/null")
    store = DefinitionStore([top, low], write_dir=low)
    with pytest.raises(ConfigInvalid, match="masks"):
        store.save(Definition(UUID_A, "mtty", "mtty-1"))


def test_save_refuses_while_an_invalid_entry_of_the_uuid_exists(
    dirs: Dirs, store: DefinitionStore
) -> None:
    broken = write(dirs.etc / "a.toml", device_toml(UUID_A, extra="autostart = 1\n"))
    with pytest.raises(ConfigInvalid, match="fix or remove that entry"):
        store.save(Definition(UUID_A, "mtty", "mtty-1"))
    assert broken.read_text() == device_toml(UUID_A, extra="autostart = 1\n")
    assert sorted(os.listdir(dirs.etc)) == ["a.toml"]


def test_save_never_overwrites_a_file_it_cannot_parse(dirs: Dirs, store: DefinitionStore) -> None:
    broken = write(dirs.etc / f"{UUID_A}.toml", "[[device]\n# the admin is mid-edit\n")
    with pytest.raises(ConfigInvalid, match="will not rewrite"):
        store.save(Definition(UUID_A, "mtty", "mtty-1"))
    assert broken.read_text() == "[[device]\n# the admin is mid-edit\n"


def test_save_refuses_invalid_definitions_before_touching_disk(
    dirs: Dirs, store: DefinitionStore
) -> None:
    for bad in (
        Definition("../../etc/passwd", "mtty", "mtty-1"),
        Definition(UUID_A, "../..", "mtty-1"),
        Definition(UUID_A, "mtty", "mtty-1", attributes=(("../remove", "1"),)),
    ):
        with pytest.raises(InvalidArgument):
            store.save(bad)
    assert os.listdir(dirs.etc) == []


def test_a_symlinked_file_is_edited_at_its_target(
    dirs: Dirs, store: DefinitionStore, tmp_path: Path
) -> None:
    target = write(tmp_path / "kept-elsewhere.toml", device_toml(UUID_A))
    (dirs.etc / "linked.toml").symlink_to(target)
    store.save(Definition(UUID_A, "mtty", "mtty-9"))
    assert (dirs.etc / "linked.toml").is_symlink()
    assert 'type = "mtty-9"' in target.read_text()


def test_a_concurrent_hand_edit_is_never_overwritten(
    dirs: Dirs, store: DefinitionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(dirs.etc / "a.toml", device_toml(UUID_A))
    real_replace = definitions.replace_in_text

    def admin_saves_meanwhile(text: str, source: str, definition: Definition) -> str:
        result = real_replace(text, source, definition)
        path.write_text(device_toml(UUID_A, type_id="the-admins-edit"))
        return result

    monkeypatch.setattr(definitions, "replace_in_text", admin_saves_meanwhile)
    with pytest.raises(Failed, match="changed on disk"):
        store.save(Definition(UUID_A, "mtty", "mtty-2"))
    assert 'type = "the-admins-edit"' in path.read_text()


def test_write_errors_become_failed(
    dirs: Dirs, store: DefinitionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_space(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("mdevd.atomic.write_atomic", no_space)
    with pytest.raises(Failed, match="No space left on device"):
        store.save(Definition(UUID_A, "mtty", "mtty-1"))
    assert os.listdir(dirs.etc) == []


def test_get(dirs: Dirs, store: DefinitionStore) -> None:
    write(dirs.etc / "a.toml", device_toml(UUID_A))
    found = store.get(UUID_A.upper())
    assert found is not None and found.uuid == UUID_A
    assert store.get(UUID_B) is None


def test_a_file_name_that_is_not_utf8_is_reported_printably(
    dirs: Dirs, store: DefinitionStore
) -> None:
    write(Path(os.fsdecode(os.fsencode(dirs.etc) + b"/caf\xe9.toml")), device_toml(UUID_A))
    write(dirs.etc / "good.toml", device_toml(UUID_B))
    result = store.load()
    assert list(result.definitions) == [UUID_B]
    (problem,) = result.problems
    assert str(problem) == f"{dirs.etc}/caf\\xe9.toml: file name is not valid UTF-8; not read"
    str(problem).encode("utf-8")  # printable


def test_a_removal_mdevd_cannot_finish_changes_nothing(dirs: Dirs, store: DefinitionStore) -> None:
    first = write(dirs.etc / "a.toml", device_toml(UUID_A))
    inline = f'device = [{{ uuid = "{UUID_A}", parent = "mtty", type = "mtty-1" }}]\n'
    second = write(dirs.run / "b.toml", inline)
    with pytest.raises(ConfigInvalid, match="edit the file by hand"):
        store.remove(UUID_A)
    assert first.read_text() == device_toml(UUID_A)
    assert second.read_text() == inline
    with pytest.raises(ConfigInvalid):
        DefinitionStore([dirs.run]).save(Definition(UUID_A, "mtty", "mtty-2"))
    assert second.read_text() == inline
