# SPDX-License-Identifier: LGPL-2.1-or-later
"""mdevctl's format, checked against mdevctl's own golden test data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mdevd import definitions
from mdevd.errors import ConfigInvalid
from mdevd.mdevctl_format import (
    dumpjson,
    import_tree,
    mdevctl_uuid,
    parse_mdevctl_json,
    read_mdevctl_tree,
    to_mdevctl_json,
)
from mdevd.model import Definition
from mdevd.store import DefinitionStore
from tests.store.conftest import MDEVCTL_TESTDATA, UUID_A, UUID_B, Dirs, device_toml

LOAD_JSON = MDEVCTL_TESTDATA / "load-json"
# The UUID and parent mdevctl's own test_load_json uses for each input.
LOAD_JSON_CASES = [
    ("c07ab7b2-8aa2-427a-91c6-ffc949bb77f9", "0000:00:02.0"),
    ("783e6dbb-ea0e-411f-94e2-717eaad438bf", "0001:00:03.1"),
    ("5269fe7a-18d1-48ad-88e1-3fda4176f536", "0000:00:03.0"),
]
LIST_UUID_1 = "9f579710-6ffc-4201-987a-4ffa0fb1f3a5"  # list/device1.json
LIST_UUID_2 = "4a0a190f-dcf3-4def-9342-c48768f0c940"  # list/device2.json


@pytest.mark.parametrize(("uuid", "parent"), LOAD_JSON_CASES)
def test_load_json_golden(uuid: str, parent: str) -> None:
    text = (LOAD_JSON / f"{uuid}.in").read_text()
    definition = parse_mdevctl_json(text, uuid, parent)
    assert (definition.uuid, definition.parent) == (uuid, parent)
    assert to_mdevctl_json(definition) == (LOAD_JSON / f"{uuid}.out").read_text()


@pytest.mark.parametrize("name", sorted(p.name for p in (MDEVCTL_TESTDATA / "define").glob("*")))
def test_every_define_golden_file_round_trips(name: str) -> None:
    text = (MDEVCTL_TESTDATA / "define" / name).read_text()
    definition = parse_mdevctl_json(text, UUID_A, "0000:00:02.0")
    assert json.loads(to_mdevctl_json(definition)) == json.loads(text)
    assert to_mdevctl_json(definition) == text.rstrip("\n")


def _mdevctl_tree(root: Path) -> Path:
    """The tree mdevctl's `list` tests build: device1 under two parents, device2 under one."""
    for parent, uuid, source in [
        ("0000:00:02.0", LIST_UUID_1, "device1.json"),
        ("0000:00:02.0", LIST_UUID_2, "device2.json"),
        ("0000:00:03.0", LIST_UUID_1, "device1.json"),
    ]:
        (root / parent).mkdir(parents=True, exist_ok=True)
        shutil.copy(MDEVCTL_TESTDATA / "list" / source, root / parent / uuid)
    (root / "scripts.d" / "callouts").mkdir(parents=True)
    return root


def test_list_defined_dumpjson_golden(tmp_path: Path) -> None:
    tree = read_mdevctl_tree(_mdevctl_tree(tmp_path / "mdevctl.d"))
    assert tree.problems == []
    assert dumpjson(tree.definitions) == (
        MDEVCTL_TESTDATA / "list" / "defined.json"
    ).read_text().rstrip("\n")
    text_lines = [
        f"{d.uuid} {d.parent} {d.type_id} {'auto' if d.autostart else 'manual'}"
        for d in tree.definitions
    ]
    assert (
        "\n".join(text_lines) + "\n"
        == (MDEVCTL_TESTDATA / "list" / "defined.text").read_text().rstrip("\n") + "\n"
    )


def test_dumpjson_of_nothing_is_an_empty_list() -> None:
    assert dumpjson([]) == "[]"


def test_invalid_files_golden_is_accepted() -> None:
    # mdevctl's invalid-files test data is a valid definition (its test breaks the environment).
    text = (MDEVCTL_TESTDATA / "invalid-files" / "device.json").read_text()
    assert parse_mdevctl_json(text, UUID_A, "matrix").attributes[0] == ("assign_adapter", "5")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        # The three malformed inputs mdevctl's test_load_json expects to fail.
        (
            '{"mdev_type": "t", "start": "auto", "attrs": [{"a": "1", "b": "2"}]}',
            "exactly one field",
        ),
        ('{"mdev_type": "t", "start": "auto", "attrs": ["a", "b"]}', "is not an object"),
        ('{"mdev_type": "t", "start": "auto", "attrs": {"a": "1"}}', "'attrs' is not an array"),
        ('{"mdev_type": "t"}', "'start' is missing"),
        ('{"start": "auto"}', "'mdev_type' is missing"),
        ('{"mdev_type": null, "start": "auto"}', "'mdev_type' is missing"),
        ('{"mdev_type": 5, "start": "auto"}', "mdevctl crashes"),
        ('{"mdev_type": "t", "start": "auto", "attrs": [{"a": 1}]}', "not a string"),
        ('["mdev_type"]', "not a JSON object"),
        ("{", "not valid JSON: line 1"),
        ('{"mdev_type": "t", "start": NaN}', "not valid JSON"),
        ('{"mdev_type": "t", "start": "auto", "attrs": [{"a": "\\ud800"}]}', "lone surrogate"),
    ],
)
def test_what_mdevctl_rejects(text: str, reason: str) -> None:
    with pytest.raises(ConfigInvalid, match=r"^mdevctl rejects it: ") as raised:
        parse_mdevctl_json(text, UUID_A, "p")
    assert reason in raised.value.message


@pytest.mark.parametrize(
    ("text", "parent", "reason"),
    [
        ('{"mdev_type": "t", "start": "auto", "attrs": [{"../remove": "1"}]}', "p", "contains '/'"),
        ('{"mdev_type": "t", "start": "auto", "attrs": [{"": "1"}]}', "p", "is empty"),
        ('{"mdev_type": "t", "start": "auto", "attrs": [{"a": "x\\u0000"}]}', "p", "NUL"),
        ('{"mdev_type": "../t", "start": "auto"}', "p", "contains '/'"),
        ('{"mdev_type": "t", "start": "auto"}', "a parent", "whitespace"),
    ],
)
def test_what_mdevctl_accepts_but_mdevd_refuses(text: str, parent: str, reason: str) -> None:
    with pytest.raises(
        ConfigInvalid, match=r"^mdevctl accepts it, but mdevd refuses it: "
    ) as raised:
        parse_mdevctl_json(text, UUID_A, parent)
    assert reason in raised.value.message


def test_mdevctl_start_semantics_and_ignored_keys() -> None:
    for start, autostart in [
        ('"auto"', True),
        ('"manual"', False),
        ('"bogus"', False),
        ("1", False),
    ]:
        text = f'{{"mdev_type": "t", "start": {start}, "attrs": null, "extra": 1}}'
        definition = parse_mdevctl_json(text, UUID_A, "p")
        assert (definition.autostart, definition.attributes) == (autostart, ())


def test_uuid_file_names_as_mdevctl_reads_them() -> None:
    canonical = "9f579710-6ffc-4201-987a-4ffa0fb1f3a5"
    for name in (
        canonical,
        canonical.upper(),
        canonical.replace("-", ""),
        f"{{{canonical}}}",
        f"urn:uuid:{canonical}",
    ):
        assert mdevctl_uuid(name) == canonical
    for name in (
        "README",
        canonical[:-1],
        canonical + "0",
        "9f579710-6ffc42-01-987a-4ffa0fb1f3a5",
        "",
    ):
        assert mdevctl_uuid(name) is None


def test_tree_reports_what_mdevctl_ignores_or_rejects(tmp_path: Path) -> None:
    root = _mdevctl_tree(tmp_path / "mdevctl.d")
    parent = root / "0000:00:02.0"
    (parent / "README").write_text("notes")
    (parent / UUID_A).write_text('{"mdev_type": "t"}')
    (parent / UUID_B).symlink_to(parent / LIST_UUID_2)
    (root / "stray-file").write_text("")
    tree = read_mdevctl_tree(root)
    assert len(tree.definitions) == 3
    reported = {Path(p.file).name: p.message for p in tree.problems}
    assert reported == {
        "README": "not imported: mdevctl ignores it (the name is not a UUID)",
        UUID_A: "not imported: mdevctl rejects it: 'start' is missing",
        UUID_B: "not imported: mdevctl ignores symlinks",
    }


def test_tree_root_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigInvalid, match="cannot read mdevctl's directory"):
        read_mdevctl_tree(tmp_path / "absent")


def test_import_writes_toml_and_is_repeatable(
    tmp_path: Path, dirs: Dirs, store: DefinitionStore
) -> None:
    tree = read_mdevctl_tree(_mdevctl_tree(tmp_path / "mdevctl.d"))
    report = import_tree(tree, store, dry_run=False)
    assert [(d.uuid, p) for d, p in report.imported] == [
        (LIST_UUID_2, dirs.etc / f"{LIST_UUID_2}.toml"),
        (LIST_UUID_1, dirs.etc / f"{LIST_UUID_1}.toml"),
    ]
    # mdevctl allows a UUID under two parents; mdevd keeps the first and says so.
    (conflict,) = report.problems
    assert conflict.file.endswith(f"0000:00:03.0/{LIST_UUID_1}")
    assert "only that one is imported" in conflict.message
    loaded = store.load()
    assert loaded.problems == []
    assert loaded.definitions[LIST_UUID_1].attributes[:2] == (
        ("assign_adapter", "5"),
        ("assign_adapter", "6"),
    )
    assert loaded.definitions[LIST_UUID_2].autostart
    # Exporting gives mdevctl's listing back, minus the second parent's duplicate.
    expected = json.loads((MDEVCTL_TESTDATA / "list" / "defined.json").read_text())
    del expected[0]["0000:00:03.0"]
    assert json.loads(dumpjson(loaded.definitions.values())) == expected

    again = import_tree(tree, store, dry_run=False)
    assert (again.imported, [d.uuid for d in again.unchanged]) == ([], [LIST_UUID_2, LIST_UUID_1])


def test_import_never_overwrites_a_different_definition(
    tmp_path: Path, dirs: Dirs, store: DefinitionStore
) -> None:
    mine = dirs.etc / "mine.toml"
    mine.write_text(device_toml(LIST_UUID_2, parent="0000:00:02.0", type_id="something-else"))
    tree = read_mdevctl_tree(_mdevctl_tree(tmp_path / "mdevctl.d"))
    report = import_tree(tree, store, dry_run=False)
    assert [d.uuid for d, _ in report.imported] == [LIST_UUID_1]
    assert any(f"already defined differently at {mine}:1" in p.message for p in report.problems)
    assert mine.read_text() == device_toml(
        LIST_UUID_2, parent="0000:00:02.0", type_id="something-else"
    )


def test_dry_run_writes_nothing(tmp_path: Path, dirs: Dirs, store: DefinitionStore) -> None:
    tree = read_mdevctl_tree(_mdevctl_tree(tmp_path / "mdevctl.d"))
    report = import_tree(tree, store, dry_run=True)
    assert len(report.imported) == 2
    assert list(dirs.etc.iterdir()) == []


def test_exported_definition_reads_back_identically() -> None:
    original = Definition(UUID_A, "matrix", "vfio_ap-passthrough", True, (("a", "é"), ("a", "2")))
    again = parse_mdevctl_json(to_mdevctl_json(original), UUID_A, "matrix")
    assert definitions.same_device(original, again)
