# SPDX-License-Identifier: LGPL-2.1-or-later
"""Property tests: malformed TOML and malformed definitions only ever produce the store's own
problems and errors, never a crash, and never cost a good neighbour.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mdevd import definitions, mdevctl_format
from mdevd.config import parse_config
from mdevd.definitions import ParsedFile, Problem, parse_bytes, parse_text, render
from mdevd.errors import MdevdError
from mdevd.model import Definition
from mdevd.store import DefinitionStore
from tests.store.conftest import UUID_A, UUID_B

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

GOOD = Definition(UUID_A, "0000:65:00.0", "nvidia-558", True, (("a", "1"), ("a", "2")))
GOOD_TEXT = render([GOOD])

# Strings a hostile or careless file might hold: path tricks, whitespace, control characters.
nasty_strings = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["", ".", "..", "../x", "a/b", "a b", "x\x00", "\x7f", "é", UUID_A, "mtty"]),
)
toml_scalars = st.one_of(
    nasty_strings, st.booleans(), st.integers(), st.floats(allow_nan=False), st.dates()
)
toml_values = st.recursive(
    toml_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(nasty_strings, inner, max_size=3),
    max_leaves=8,
)
device_keys = st.sampled_from(["uuid", "parent", "type", "autostart", "attributes", "extra"])
attribute_items = st.one_of(
    st.fixed_dictionaries({"name": nasty_strings, "value": nasty_strings}),
    st.dictionaries(st.sampled_from(["name", "value", "other"]), toml_values, max_size=3),
    toml_scalars,
)
device_tables = st.dictionaries(
    device_keys,
    st.one_of(toml_values, st.lists(attribute_items, max_size=4)),
    max_size=6,
)


def assert_well_formed(parsed: ParsedFile, text_lines: int) -> None:
    """Everything that loaded is valid; every problem is ours and located sensibly."""
    for definition in parsed.definitions:
        assert definitions.check_definition(definition) == definition
    for problem in parsed.problems:
        assert isinstance(problem, Problem)
        assert 0 <= problem.line <= text_lines + 1
        assert problem.message and str(problem).startswith(problem.file)


@FAST
@given(st.text(max_size=300))
def test_any_text_parses_to_definitions_and_problems(text: str) -> None:
    assert_well_formed(parse_text(text, "f.toml"), text.count("\n"))


@FAST
@given(st.binary(max_size=300))
def test_any_bytes_parse_to_definitions_and_problems(data: bytes) -> None:
    assert_well_formed(parse_bytes(data, "f.toml"), data.count(b"\n"))


@FAST
@given(
    st.lists(
        st.tuples(st.integers(0, len(GOOD_TEXT)), st.integers(0, 12), st.text(max_size=6)),
        max_size=4,
    )
)
def test_mutated_valid_files_never_crash(edits: list[tuple[int, int, str]]) -> None:
    text = GOOD_TEXT
    for position, cut, insert in edits:
        text = text[:position] + insert + text[position + cut :]
    assert_well_formed(parse_text(text, "f.toml"), text.count("\n"))


@FAST
@given(st.lists(device_tables, min_size=1, max_size=4))
def test_malformed_entries_never_cost_a_good_neighbour(tables: list[dict[str, Any]]) -> None:
    good = Definition(UUID_B, "mtty", "mtty-1")
    # Each table alone: it loads, or it is reported; never both, never neither.
    alone = [parse_text(tomli_w.dumps({"device": [t]}), "f.toml") for t in tables]
    for parsed in alone:
        assert (len(parsed.definitions), bool(parsed.problems)) in {(1, False), (0, True)}
    # Together (with a good one last): exactly the same ones load.
    text = tomli_w.dumps(
        {"device": [*tables, {"uuid": UUID_B, "parent": "mtty", "type": "mtty-1"}]}
    )
    together = parse_text(text, "f.toml")
    assert_well_formed(together, text.count("\n"))
    expected = [d for parsed in alone for d in parsed.definitions] + [good]
    assert len(together.definitions) == len(expected)
    assert all(
        definitions.same_device(a, b) for a, b in zip(together.definitions, expected, strict=True)
    )


@SLOW
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=200),
            device_tables.map(lambda t: tomli_w.dumps({"device": [t]}).encode()),
        ),
        max_size=4,
    )
)
def test_the_store_loads_any_directory_without_crashing(contents: list[bytes]) -> None:
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        for index, content in enumerate(contents):
            (directory / f"{index}.toml").write_bytes(content)
        (directory / "zz-good.toml").write_text(render([GOOD]))
        result = DefinitionStore([directory]).load()
        assert result.definitions[UUID_A].source_file.endswith(("zz-good.toml", ".toml"))
        for problem in result.problems:
            assert isinstance(problem, Problem)


malformed_definitions = st.builds(
    Definition,
    uuid=st.one_of(st.just(UUID_A), nasty_strings, st.integers()),
    parent=st.one_of(st.just("mtty"), nasty_strings, st.none()),
    type_id=st.one_of(st.just("mtty-1"), nasty_strings),
    autostart=st.one_of(st.booleans(), st.integers(), nasty_strings),
    attributes=st.one_of(
        st.lists(st.tuples(nasty_strings, nasty_strings), max_size=3).map(tuple),
        st.lists(st.one_of(toml_values, st.tuples(toml_values)), max_size=3).map(tuple),
        toml_values,
    ),
)


@SLOW
@given(malformed_definitions)
def test_saving_malformed_definitions_raises_only_our_errors(definition: Definition) -> None:
    with tempfile.TemporaryDirectory() as name:
        store = DefinitionStore([Path(name)])
        try:
            saved = store.save(definition)
        except MdevdError:
            assert store.load().definitions == {}
            return
        loaded = store.load()
        assert loaded.problems == []
        assert loaded.definitions == {saved.uuid: saved}
        assert definitions.same_device(saved, definitions.check_definition(definition))


@FAST
@given(st.one_of(st.text(max_size=200), toml_values.map(lambda v: json.dumps(v, default=str))))
def test_mdevctl_json_raises_only_config_invalid(text: str) -> None:
    try:
        definition = mdevctl_format.parse_mdevctl_json(text, UUID_A, "matrix")
    except MdevdError as e:
        assert e.message.startswith(("mdevctl rejects it: ", "mdevctl accepts it, but mdevd"))
        return
    assert definitions.check_definition(definition) == definition


@FAST
@given(st.text(max_size=200))
def test_any_config_text_gives_a_config_and_problems(text: str) -> None:
    result = parse_config(text, "mdevd.toml", Path("/base"))
    assert all(isinstance(p, Problem) for p in result.problems)
