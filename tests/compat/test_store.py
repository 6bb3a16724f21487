# SPDX-License-Identifier: LGPL-2.1-or-later
"""mdevctl's directory as a live store beside the TOML drop-ins (mdevd.compat.store).

Real directories under tmp_path stand for /etc/mdevd/devices.d, /usr/lib/mdevd/devices.d and
/etc/mdevctl.d; nothing here touches /etc.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mdevd import mdevctl_format
from mdevd.compat.directory import MIRROR_RECORD_NAME, MdevctlDirectory
from mdevd.compat.store import CompatStore
from mdevd.definitions import ProblemKind
from mdevd.errors import ConfigInvalid, NotFound, ReadOnly
from mdevd.model import Definition
from mdevd.store import DefinitionStore

U1 = "11111111-2222-4333-8444-555555555555"
U2 = "22222222-3333-4444-8555-666666666666"
U3 = "33333333-4444-4555-8666-777777777777"


class Tree:
    def __init__(self, root: Path) -> None:
        self.etc = root / "devices.d"
        self.vendor = root / "vendor.d"
        self.mdevctl = root / "mdevctl.d"
        for directory in (self.etc, self.vendor, self.mdevctl):
            directory.mkdir()

    def store(self, compat: bool = True) -> CompatStore:
        toml = DefinitionStore([self.etc, self.vendor], write_dir=self.etc, read_only=[self.vendor])
        return CompatStore(toml, MdevctlDirectory(self.mdevctl) if compat else None)

    def mdevctl_file(self, parent: str, name: str, document: object) -> Path:
        path = self.mdevctl / parent / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(document) if not isinstance(document, str) else document)
        return path

    def toml_file(
        self,
        name: str,
        uuid: str,
        parent: str = "mtty",
        type_id: str = "mtty-1",
        directory: Path | None = None,
    ) -> Path:
        path = (directory or self.etc) / name
        path.write_text(f'[[device]]\nuuid = "{uuid}"\nparent = "{parent}"\ntype = "{type_id}"\n')
        return path


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    return Tree(tmp_path)


def _mdevctl_json(
    type_id: str, start: str = "manual", attrs: list[dict[str, str]] | None = None
) -> dict[str, object]:
    return {"mdev_type": type_id, "start": start, "attrs": attrs or []}


def test_mdevctl_definitions_are_read_with_mdevctls_rules(tree: Tree) -> None:
    path = tree.mdevctl_file(
        "matrix", U1, _mdevctl_json("vfio_ap-passthrough", "auto", [{"assign_adapter": "5"}])
    )
    tree.mdevctl_file("matrix", "not-a-uuid", _mdevctl_json("x"))
    loaded = tree.store().load()
    assert loaded.definitions == {
        U1: Definition(
            U1, "matrix", "vfio_ap-passthrough", True, (("assign_adapter", "5"),), str(path), 0
        )
    }
    [problem] = loaded.problems
    assert problem.file.endswith("not-a-uuid")
    assert "ignored: mdevctl ignores it" in problem.message


def test_one_corrupt_file_does_not_hide_the_others(tree: Tree) -> None:
    # mdevctl fails `list -d` (and autostart) as a whole here; mdevd reports the one file.
    tree.mdevctl_file("mtty", U1, "{not json")
    tree.mdevctl_file("mtty", U2, _mdevctl_json("mtty-1"))
    loaded = tree.store().load()
    assert list(loaded.definitions) == [U2]
    [problem] = loaded.problems
    assert problem.uuid == U1 and "not valid JSON" in problem.message


def test_a_toml_definition_wins_a_conflict_which_is_reported_and_left_alone(tree: Tree) -> None:
    toml = tree.toml_file("a.toml", U1, "mtty", "mtty-2")
    copy = tree.mdevctl_file("mtty", U1, _mdevctl_json("mtty-1"))
    before = copy.read_bytes()
    loaded = tree.store().load()
    assert loaded.definitions[U1].type_id == "mtty-2"
    assert loaded.definitions[U1].source_file == str(toml)
    [problem] = loaded.problems
    assert problem.kind is ProblemKind.CONFLICT and problem.file == str(copy)
    assert f"also defined at {toml}:1, which takes precedence" in problem.message
    assert copy.read_bytes() == before  # someone else's file: not overwritten


def test_a_uuid_under_two_parents_the_first_wins(tree: Tree) -> None:
    tree.mdevctl_file("0000:00:02.0", U1, _mdevctl_json("i915-GVTg_V5_4"))
    second = tree.mdevctl_file("0000:00:03.0", U1, _mdevctl_json("i915-GVTg_V5_4"))
    loaded = tree.store().load()
    assert loaded.definitions[U1].parent == "0000:00:02.0"
    [problem] = loaded.problems
    assert problem.file == str(second) and "under parent 0000:00:02.0" in problem.message


def test_a_new_definition_goes_to_mdevctls_directory_in_its_exact_format(tree: Tree) -> None:
    store = tree.store()
    wanted = Definition(
        U1,
        "matrix",
        "vfio_ap-passthrough",
        True,
        (("assign_adapter", "5"), ("assign_domain", "0x4")),
    )
    saved = store.save(wanted)
    path = tree.mdevctl / "matrix" / U1
    assert saved.source_file == str(path)
    assert path.read_text() == (
        '{\n  "mdev_type": "vfio_ap-passthrough",\n  "start": "auto",\n  "attrs": [\n'
        '    {\n      "assign_adapter": "5"\n    },\n    {\n      "assign_domain": "0x4"\n'
        "    }\n  ]\n}"
    )
    assert list(tree.etc.iterdir()) == []
    assert [p.name for p in path.parent.iterdir()] == [U1]  # no temporary file left behind
    assert not store.changed_by_others(path)
    path.write_text(path.read_text())  # an external rewrite, even with the same content
    assert store.changed_by_others(path)


def test_without_compatibility_new_definitions_are_toml(tree: Tree) -> None:
    tree.mdevctl_file("mtty", U2, _mdevctl_json("mtty-1"))
    store = tree.store(compat=False)
    saved = store.save(Definition(U1, "mtty", "mtty-1"))
    assert saved.source_file == str(tree.etc / f"{U1}.toml")
    assert list(store.load().definitions) == [U1]  # mdevctl's directory is not read either
    assert not (tree.mdevctl / "mtty" / U1).exists()


def test_without_compatibility_a_save_or_removal_looks_at_the_directories_once(
    tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every look stats every definitions file: three looks per define (before, inside and
    after the TOML store's save) made a define cost three times O(all definitions)."""
    for index in range(5):
        tree.toml_file(f"other-{index}.toml", f"{index:08x}-0000-4000-8000-000000000000")
    store = tree.store(compat=False)
    store.load()
    looks = 0
    real = DefinitionStore._load_state

    def counted(self: DefinitionStore) -> object:
        nonlocal looks
        looks += 1
        return real(self)

    monkeypatch.setattr(DefinitionStore, "_load_state", counted)
    store.save(Definition(U1, "mtty", "mtty-1"))
    assert looks == 1
    store.save(Definition(U1, "mtty", "mtty-2"))  # an update, in place
    assert looks == 2
    store.remove(U1)
    assert looks == 3
    assert U1 not in store.load().definitions


def test_changes_to_an_mdevctl_definition_are_made_in_place(tree: Tree) -> None:
    path = tree.mdevctl_file("mtty", U1.upper(), _mdevctl_json("mtty-1"))  # mdevctl takes it
    store = tree.store()
    current = store.load().definitions[U1]
    store.save(Definition(U1, "mtty", "mtty-2", True))
    assert json.loads(path.read_text()) == _mdevctl_json("mtty-2", "auto")
    assert sorted(p.name for p in path.parent.iterdir()) == [U1.upper()]
    assert current.source_file == str(path)
    store.remove(U1)
    assert not path.exists()
    with pytest.raises(NotFound):
        store.remove(U1)


def test_toml_definitions_are_mirrored_and_follow_their_toml(tree: Tree) -> None:
    toml = tree.toml_file("a.toml", U1, "mtty", "mtty-1")
    store = tree.store()
    loaded = store.load()
    mirror = tree.mdevctl / "mtty" / U1
    assert loaded.definitions[U1].source_file == str(toml)
    assert loaded.problems == []
    assert mirror.read_text() == mdevctl_format.to_mdevctl_json(loaded.definitions[U1])
    assert (tree.mdevctl / MIRROR_RECORD_NAME).exists()

    toml.write_text(toml.read_text().replace("mtty-1", "mtty-2"))  # a hand edit, then a reload
    assert store.load().problems == []
    assert json.loads(mirror.read_text())["mdev_type"] == "mtty-2"

    toml.unlink()  # the admin removes the definition: its copy goes, nothing is left defined
    assert store.load().definitions == {}
    assert not mirror.exists()
    assert not (tree.mdevctl / MIRROR_RECORD_NAME).exists()


def test_an_edited_mirror_copy_is_never_lost(tree: Tree) -> None:
    toml = tree.toml_file("a.toml", U1)
    store = tree.store()
    store.load()
    mirror = tree.mdevctl / "mtty" / U1
    mirror.write_text(json.dumps(_mdevctl_json("mtty-2")))  # e.g. the real mdevctl's modify
    loaded = store.load()
    assert loaded.definitions[U1].type_id == "mtty-1"  # the TOML wins while it exists
    assert [p.kind for p in loaded.problems] == [ProblemKind.CONFLICT]
    assert json.loads(mirror.read_text())["mdev_type"] == "mtty-2"
    toml.unlink()
    loaded = store.load()
    assert loaded.definitions[U1].type_id == "mtty-2"  # now an mdevctl definition of its own
    assert loaded.definitions[U1].source_file == str(mirror)


def test_a_change_through_mdevd_replaces_every_copy(tree: Tree) -> None:
    tree.toml_file("a.toml", U1)
    store = tree.store()
    store.load()
    mirror = tree.mdevctl / "mtty" / U1
    mirror.write_text(json.dumps(_mdevctl_json("mtty-2")))
    saved = store.save(Definition(U1, "mtty", "mtty-1", True))
    assert saved.autostart and saved.source_file.endswith("a.toml")
    assert json.loads(mirror.read_text()) == _mdevctl_json("mtty-1", "auto")
    assert store.load().problems == []


def test_removal_takes_every_copy_under_every_parent(tree: Tree) -> None:
    tree.toml_file("a.toml", U1, "0000:00:02.0", "i915-GVTg_V5_4")
    other = tree.mdevctl_file("0000:00:03.0", U1, _mdevctl_json("i915-GVTg_V5_4"))
    store = tree.store()
    store.load()
    store.remove(U1)
    assert not (tree.etc / "a.toml").exists()
    assert not other.exists() and not (tree.mdevctl / "0000:00:02.0" / U1).exists()
    assert store.load().definitions == {}


def test_vendor_definitions_are_mirrored_but_read_only(tree: Tree) -> None:
    tree.toml_file("v.toml", U1, directory=tree.vendor)
    store = tree.store()
    store.load()
    assert (tree.mdevctl / "mtty" / U1).exists()
    with pytest.raises(ReadOnly):
        store.remove(U1)
    assert (tree.mdevctl / "mtty" / U1).exists()


def test_a_broken_file_is_not_overwritten_by_a_new_definition(tree: Tree) -> None:
    broken = tree.mdevctl_file("mtty", U1, '{"mdev_type": 5, "start": "auto"}')
    with pytest.raises(ConfigInvalid, match="fix or remove that entry"):
        tree.store().save(Definition(U1, "mtty", "mtty-1"))
    assert broken.read_text() == '{"mdev_type": 5, "start": "auto"}'


def test_unsafe_names_mdevctl_would_accept_are_refused(tree: Tree) -> None:
    tree.mdevctl_file(
        "matrix", U1, _mdevctl_json("vfio_ap-passthrough", "auto", [{"../../remove": "1"}])
    )
    loaded = tree.store().load()
    assert loaded.definitions == {}
    assert "mdevctl accepts it, but mdevd refuses it" in loaded.problems[0].message


def test_a_damaged_mirror_record_loses_nothing(tree: Tree) -> None:
    tree.toml_file("a.toml", U1)
    store = tree.store()
    store.load()
    (tree.mdevctl / MIRROR_RECORD_NAME).write_text("[not a record")
    (tree.etc / "a.toml").unlink()
    loaded = store.load()
    # Without the record mdevd cannot tell its copy from mdevctl's: it keeps the definition.
    assert list(loaded.definitions) == [U1]
    assert any(MIRROR_RECORD_NAME in p.file for p in loaded.problems)
    assert os.path.exists(tree.mdevctl / "mtty" / U1)


# ---- placements: mdevctl's format has none ------------------------------------------------------

GPU = "0000:3d:00.0"
VF = "0000:3d:00.5"


def test_a_new_definition_with_a_placement_is_toml_and_its_mirror_leaves_the_placement_out(
    tree: Tree,
) -> None:
    store = tree.store()
    saved = store.save(Definition(U1, GPU, "nvidia-1145", True, placement=VF))
    assert saved.source_file == str(tree.etc / f"{U1}.toml")
    assert saved.placement == VF
    mirror = tree.mdevctl / GPU / U1
    assert json.loads(mirror.read_text()) == _mdevctl_json("nvidia-1145", "auto")
    loaded = store.load()
    assert loaded.problems == []
    assert loaded.definitions[U1].placement == VF  # the TOML wins
    assert loaded.definitions[U1].source_file == saved.source_file


def test_a_mirror_without_the_placement_is_up_to_date_and_not_rewritten(tree: Tree) -> None:
    toml = tree.etc / "gpu.toml"
    toml.write_text(
        f'[[device]]\nuuid = "{U1}"\nparent = "{GPU}"\ntype = "nvidia-1145"\nplacement = "{VF}"\n'
    )
    store = tree.store()
    store.load()
    mirror = tree.mdevctl / GPU / U1
    record = tree.mdevctl / MIRROR_RECORD_NAME
    written = (mirror.stat().st_mtime_ns, record.stat().st_mtime_ns)
    assert not store.changed_by_others(mirror)
    for _ in range(3):
        loaded = store.load()
        assert loaded.problems == []
        assert loaded.definitions[U1].placement == VF
    assert (mirror.stat().st_mtime_ns, record.stat().st_mtime_ns) == written

    toml.unlink()  # the copy still follows its TOML definition
    assert store.load().definitions == {}
    assert not mirror.exists()


def test_a_copy_identical_but_for_the_placement_is_taken_as_the_mirror(tree: Tree) -> None:
    tree.mdevctl_file(GPU, U1, _mdevctl_json("nvidia-1145"))  # e.g. the original of an import
    (tree.etc / "gpu.toml").write_text(
        f'[[device]]\nuuid = "{U1}"\nparent = "{GPU}"\ntype = "nvidia-1145"\nplacement = "{VF}"\n'
    )
    loaded = tree.store().load()
    assert loaded.problems == []
    assert loaded.definitions[U1].placement == VF


def test_an_mdevctl_definition_given_a_placement_moves_to_toml(tree: Tree) -> None:
    path = tree.mdevctl_file(GPU, U1, _mdevctl_json("nvidia-1145"))
    store = tree.store()
    store.load()
    saved = store.save(Definition(U1, GPU, "nvidia-1145", placement=VF))
    assert saved.source_file == str(tree.etc / f"{U1}.toml")
    loaded = store.load()
    assert loaded.problems == []
    assert loaded.definitions[U1].placement == VF
    assert json.loads(path.read_text()) == _mdevctl_json("nvidia-1145")  # now its mirror
    store.remove(U1)
    assert not path.exists()
    assert store.load().definitions == {}


def test_export_leaves_a_placement_out(tree: Tree) -> None:
    definition = Definition(U1, GPU, "nvidia-1145", True, placement=VF)
    assert mdevctl_format.listing_object([definition]) == [
        {GPU: [{U1: _mdevctl_json("nvidia-1145", "auto")}]}
    ]
