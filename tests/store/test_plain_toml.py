# SPDX-License-Identifier: LGPL-2.1-or-later
"""Definitions files in the plain layout are read without tomllib, exactly as tomllib reads
them (issue 20: the daemon ready with 10,000 definitions in under 1 s; tomllib was most of
the store's start-up).

`mdevd.plain_toml.read` may decline any file (tomllib then reads it); what it must never do
is accept a file tomllib refuses, or read one differently. The generated files below mix the
plain layout with every near miss that matters: escapes, quotes, non-ASCII, control
characters, CR, other value forms, duplicate keys, keys outside a table, unclosed arrays.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mdevd import definitions, plain_toml
from mdevd.definitions import render
from mdevd.model import Definition
from mdevd.store import DefinitionStore

_VALUES = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12),
    st.text(max_size=6),  # anything: quotes, backslashes, control characters, non-ASCII
    st.sampled_from(["mtty", "0000:65:00.0", "nvidia-558", 'a"b', "a\\nb", "é", "\t", "#x"]),
)


def _value(draw: st.DrawFn) -> str:
    return draw(_VALUES).replace("\n", " ")


@st.composite
def _plain_table(draw: st.DrawFn) -> list[str]:
    """A `[[device]]` table whose lines are each of the plain layout's forms (their values
    may still be anything)."""
    lines = ["[[device]]"]
    keys = draw(st.lists(st.sampled_from(["uuid", "parent", "type", "placement"]), unique=True))
    lines += [f'{key} = "{_value(draw)}"' for key in keys]
    if draw(st.booleans()):
        lines.append(f"autostart = {draw(st.sampled_from(['true', 'false']))}")
    if draw(st.booleans()):
        lines.append("attributes = [")
        for _ in range(draw(st.integers(0, 2))):
            comma = draw(st.sampled_from([",", ",", ""]))  # none needed after the last only
            lines.append(f'    {{ name = "{_value(draw)}", value = "{_value(draw)}" }}{comma}')
        if draw(st.sampled_from([True, True, True, False])):  # sometimes never closed
            lines.append("]")
    if draw(st.booleans()):
        lines.insert(draw(st.integers(0, len(lines))), "#" + _value(draw))
    return lines


@st.composite
def _near_miss(draw: st.DrawFn) -> str:
    """A line that is not of the plain layout, or is but does not belong where it lands."""
    key = draw(st.sampled_from(["uuid", "parent", "type", "placement", "autostart", "other"]))
    value = _value(draw)
    return draw(
        st.sampled_from(
            [
                "",
                "#" + value,
                "[[device]]",
                "[[device]] ",
                "[device]",
                "[[device]]\r",
                f'{key} = "{value}"',
                f"{key} = {draw(st.sampled_from(['true', 'false', '1', 'True', '[]']))}",
                "attributes = [",
                "attributes = []",
                f'    {{ name = "{value}", value = "{value}" }}',
                f'{{ name = "{value}", value = "x" }},',
                "]",
                " ]",
                f'{key}="{value}"',
                f"{key} = '{value}'",
                value,
            ]
        )
    )


@st.composite
def _files(draw: st.DrawFn) -> str:
    lines = ["# " + _value(draw)] if draw(st.booleans()) else []
    for _ in range(draw(st.integers(0, 3))):
        lines += draw(_plain_table())
    for _ in range(draw(st.integers(0, 2))):
        lines.insert(draw(st.integers(0, len(lines))), draw(_near_miss()))
    return "\n".join(lines) + ("\n" if draw(st.booleans()) else "")


def _tomllib(text: str) -> dict[str, Any] | None:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return None


@settings(max_examples=3000, deadline=None)
@given(_files())
def test_what_it_accepts_tomllib_reads_the_same(text: str) -> None:
    read = plain_toml.read(text)
    if read is not None:
        assert read == _tomllib(text)


_NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8)
#: Printable ASCII with nothing to escape (a `"` or `\\` is written escaped: tomllib reads it).
_PRINTABLE = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters='"\\'),
    max_size=16,
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.builds(
            Definition,
            uuid=st.uuids().map(str),
            parent=st.sampled_from(["mtty", "0000:65:00.0", "matrix"]),
            type_id=st.sampled_from(["mtty-1", "nvidia-558", "vfio_ap-passthrough"]),
            autostart=st.booleans(),
            attributes=st.lists(st.tuples(_NAMES, _PRINTABLE), max_size=3).map(tuple),
            placement=st.sampled_from(["", "0000:3d:00.5"]),
        ),
        max_size=4,
    )
)
def test_every_file_mdevd_writes_without_escapes_is_plain(
    written: list[Definition],
) -> None:
    text = render(written)
    read = plain_toml.read(text)
    assert read is not None
    assert read == tomllib.loads(text)


def test_a_load_of_files_mdevd_wrote_never_calls_tomllib(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []

    def counted(text: str) -> dict[str, Any]:
        calls.append(text)
        return tomllib.loads(text)

    monkeypatch.setattr(
        definitions,
        "tomllib",
        SimpleNamespace(loads=counted, TOMLDecodeError=tomllib.TOMLDecodeError),
    )
    directory = tmp_path / "devices.d"
    directory.mkdir()
    for index in range(50):
        uuid = f"{index:08x}-0000-4000-8000-000000000000"
        written = Definition(uuid, "mtty", "mtty-1", autostart=index % 2 == 0,
                             attributes=(("a", str(index)),) if index % 3 else ())  # fmt: skip
        (directory / f"{uuid}.toml").write_text(render([written]))
    hand = '[[device]]\nuuid = "99999999-0000-4000-8000-000000000000"\nparent = "mtty" # why\n'
    (directory / "hand.toml").write_text(hand + 'type = "mtty-1"\n')
    result = DefinitionStore([directory]).load()
    assert len(result.definitions) == 51
    assert result.problems == []
    assert len(calls) == 1  # only the hand-written file with its trailing comment
