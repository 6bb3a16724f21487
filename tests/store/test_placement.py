# SPDX-License-Identifier: LGPL-2.1-or-later
"""A definition's `placement` (an nvidia-vf vGPU pinned to one virtual function of its GPU,
docs/nvidia-vf.md) in the TOML format: read, checked, written, edited, and saved by the store."""

from __future__ import annotations

import tomllib

import pytest

from mdevd import definitions
from mdevd.definitions import parse_text, render
from mdevd.errors import InvalidArgument, InvalidName
from mdevd.model import Definition
from mdevd.store import DefinitionStore
from tests.store.conftest import UUID_A, UUID_B, device_toml

GPU = "0000:3d:00.0"
VF = "0000:3d:00.5"
PINNED = Definition(UUID_A, GPU, "nvidia-1145", True, placement=VF)


def test_a_placement_is_read_in_lower_case() -> None:
    text = device_toml(UUID_A, GPU, "nvidia-1145", f'placement = "{VF.upper()}"\n')
    parsed = parse_text(text, "f.toml")
    assert parsed.problems == ()
    (definition,) = parsed.definitions
    assert definition.placement == VF


def test_without_a_placement_the_backend_chooses() -> None:
    (definition,) = parse_text(device_toml(UUID_A), "f.toml").definitions
    assert definition.placement == ""


@pytest.mark.parametrize(
    "value", ['"0000:3d:00"', '"../../remove"', '"0000:3d:00.8"', '"3d:00.5"', "5", "true"]
)
def test_a_bad_placement_costs_its_entry_only_and_is_reported_on_its_line(value: str) -> None:
    text = (
        device_toml(UUID_A, GPU, "nvidia-1145", f"placement = {value}\n")
        + "\n"
        + device_toml(UUID_B, GPU, "nvidia-1145", f'placement = "{VF}"\n')
    )
    parsed = parse_text(text, "f.toml")
    assert [d.uuid for d in parsed.definitions] == [UUID_B]
    (problem,) = parsed.problems
    assert problem.line == 5
    assert problem.uuid == UUID_A
    assert "placement" in problem.message


def test_check_definition_normalizes_a_placement_and_refuses_a_bad_one() -> None:
    upper = Definition(UUID_A, GPU, "nvidia-1145", placement=VF.upper())
    assert definitions.check_definition(upper).placement == VF
    with pytest.raises(InvalidName, match="placement"):
        definitions.check_definition(Definition(UUID_A, GPU, "t", placement="../x"))
    assert issubclass(InvalidName, InvalidArgument)


def test_a_placement_makes_another_device() -> None:
    assert not definitions.same_device(PINNED, Definition(UUID_A, GPU, "nvidia-1145", True))
    elsewhere = Definition(UUID_A, GPU, "nvidia-1145", True, (), "f.toml", 3, VF)
    assert definitions.same_device(PINNED, elsewhere)


def test_render_writes_a_placement_after_the_type_and_reads_it_back() -> None:
    text = render([PINNED], header="")
    assert text == (
        f'[[device]]\nuuid = "{UUID_A}"\nparent = "{GPU}"\ntype = "nvidia-1145"\n'
        f'placement = "{VF}"\nautostart = true\n'
    )
    assert tomllib.loads(text)["device"][0]["placement"] == VF
    (again,) = parse_text(text, "f.toml").definitions
    assert definitions.same_device(again, PINNED)
    # No key without a placement: mdev definitions are written as before.
    assert "placement" not in render([Definition(UUID_A, "mtty", "mtty-1")])


def test_editing_in_place_adds_changes_and_drops_a_placement_keeping_comments() -> None:
    hand = (
        "# the L40S\n"
        + device_toml(UUID_A, GPU, "nvidia-1145", "autostart = true  # at boot\n")
        + "\n# the other one\n"
        + device_toml(UUID_B)
    )
    pinned = definitions.replace_in_text(hand, "f.toml", PINNED)
    assert pinned == hand.replace(
        "autostart = true  # at boot\n", f'autostart = true  # at boot\nplacement = "{VF}"\n'
    )
    moved = definitions.replace_in_text(
        pinned, "f.toml", Definition(UUID_A, GPU, "nvidia-1145", True, placement="0000:3d:00.6")
    )
    assert moved == pinned.replace(VF, "0000:3d:00.6")
    unpinned = definitions.replace_in_text(
        moved, "f.toml", Definition(UUID_A, GPU, "nvidia-1145", True)
    )
    assert unpinned == hand


def test_the_store_saves_a_placement_and_loads_it_back(store: DefinitionStore) -> None:
    saved = store.save(Definition(UUID_A, GPU, "nvidia-1145", placement=VF.upper()))
    assert saved.placement == VF
    with open(saved.source_file, "rb") as file:
        assert tomllib.load(file)["device"][0]["placement"] == VF
    assert store.load().definitions[UUID_A].placement == VF
    # The same definition again is no change; another placement is one, in place.
    store.save(Definition(UUID_A, GPU, "nvidia-1145", placement=VF))
    store.save(Definition(UUID_A, GPU, "nvidia-1145", placement="0000:3d:00.6"))
    assert store.load().definitions[UUID_A].placement == "0000:3d:00.6"
