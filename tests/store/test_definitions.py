# SPDX-License-Identifier: LGPL-2.1-or-later
"""The definition file format: what loads, what is reported, and where."""

from __future__ import annotations

import tomllib

import pytest

from mdevd import definitions
from mdevd.definitions import ProblemKind, parse_bytes, parse_text, render
from mdevd.errors import ConfigInvalid, InvalidArgument, InvalidName, InvalidUUID
from mdevd.model import Definition
from tests.store.conftest import UUID_A, UUID_B, UUID_C, device_toml
from tests.support.paths import REPO

FULL = f"""\
# a comment
[[device]]
uuid = "{UUID_A.upper()}"
parent = "matrix"
type = "vfio_ap-passthrough"
autostart = true
attributes = [
    {{ name = "assign_adapter", value = "5" }},
    {{ name = "assign_adapter", value = "6" }},
    {{ name = "assign_domain", value = "0xab" }},
]
"""


def test_full_entry_loads_with_order_and_repeats_kept() -> None:
    parsed = parse_text(FULL, "f.toml")
    assert parsed.problems == ()
    assert parsed.definitions == (
        Definition(
            UUID_A,  # upper-case in the file, canonical lower-case in the definition
            "matrix",
            "vfio_ap-passthrough",
            True,
            (("assign_adapter", "5"), ("assign_adapter", "6"), ("assign_domain", "0xab")),
            "f.toml",
            2,
        ),
    )


def test_defaults_and_several_devices_in_file_order() -> None:
    text = device_toml(UUID_B) + "\n" + device_toml(UUID_A, "0000:65:00.0", "nvidia-558")
    parsed = parse_text(text, "f.toml")
    assert [(d.uuid, d.autostart, d.attributes, d.source_line) for d in parsed.definitions] == [
        (UUID_B, False, (), 1),
        (UUID_A, False, (), 6),
    ]


def test_attribute_tables_form_is_the_same_format() -> None:
    text = device_toml(UUID_A) + '[[device.attributes]]\nname = "a"\nvalue = "1"\n'
    (definition,) = parse_text(text, "f.toml").definitions
    assert definition.attributes == (("a", "1"),)


def test_empty_and_comment_only_files_define_nothing_without_problems() -> None:
    for text in ("", "# nothing here\n\n"):
        parsed = parse_text(text, "f.toml")
        assert (parsed.definitions, parsed.problems, parsed.usable) == ((), (), True)


def _problems(text: str) -> list[tuple[int, str]]:
    return [(p.line, p.message) for p in parse_text(text, "f.toml").problems]


@pytest.mark.parametrize(
    ("extra", "line", "fragment"),
    [
        (
            "autostrat = true\n",
            5,
            "unknown key 'autostrat' in [[device]] (did you mean 'autostart'?)",
        ),
        ('autostart = "yes"\n', 5, "'autostart' must be true or false, not a string"),
        ('attributes = "a=1"\n', 5, "'attributes' must be an array, not a string"),
        ('attributes = ["a"]\n', 5, "attribute 1 must be a table"),
        ('attributes = [{ name = "a" }]\n', 5, "attribute 1 has no 'value'"),
        ('attributes = [{ name = "a", value = "1", extra = 1 }]\n', 5, "unknown key 'extra'"),
        ('attributes = [{ name = "a", value = 1 }]\n', 5, "value must be a string, not int"),
        ('attributes = [{ name = "../x", value = "1" }]\n', 5, "'../x' contains '/'"),
        ('attributes = [{ name = ".hidden", value = "1" }]\n', 5, "starts with '.'"),
        ('attributes = [{ name = "a", value = "x\\u0000y" }]\n', 5, "NUL"),
    ],
)
def test_bad_keys_and_values_are_reported_on_their_line(
    extra: str, line: int, fragment: str
) -> None:
    text = device_toml(UUID_A, extra=extra)
    parsed = parse_text(text, "f.toml")
    assert parsed.definitions == ()
    assert len(parsed.problems) == 1
    (problem,) = parsed.problems
    assert (problem.line, problem.kind, problem.uuid) == (line, ProblemKind.INVALID, UUID_A)
    assert fragment in problem.message
    assert str(problem).startswith(f"f.toml:{line}: device {UUID_A}: ")


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("uuid", '"not-a-uuid"', "is not a UUID"),
        ("uuid", "42", "UUID must be a string"),
        ("parent", '"../../etc"', "contains '/'"),
        ("parent", '".."', "is not a name"),
        ("parent", '"a b"', "whitespace"),
        ("type", '""', "type name is empty"),
        ("type", '"x/y"', "contains '/'"),
    ],
)
def test_names_that_could_escape_sysfs_are_refused(key: str, value: str, fragment: str) -> None:
    fields = {"uuid": f'"{UUID_A}"', "parent": '"mtty"', "type": '"mtty-1"', key: value}
    body = "".join(f"{k} = {v}\n" for k, v in fields.items())
    problems = _problems("\n[[device]]\n" + body)
    assert len(problems) == 1
    line = 3 + list(fields).index(key)
    assert problems[0][0] == line
    assert fragment in problems[0][1]


def test_missing_keys_are_reported_at_the_table_and_all_at_once() -> None:
    problems = _problems('# header\n[[device]]\nparent = "mtty"\n')
    assert problems == [(2, "device 1: 'uuid' is missing"), (2, "device 1: 'type' is missing")]


def test_unknown_top_level_keys_and_wrong_device_shape() -> None:
    assert _problems("devices = 1\n") == [
        (1, "unknown key 'devices' in the file (did you mean 'device'?); allowed: device")
    ]
    assert _problems('\ndevice = "x"\n') == [
        (2, "'device' must be [[device]] tables, not a string")
    ]
    assert _problems("device = [1]\n")[0][1] == "device 1 must be a table, not an integer"


def test_one_bad_entry_costs_only_that_entry() -> None:
    text = (
        device_toml(UUID_A)
        + "\n"
        + device_toml(UUID_B, extra="bogus = 1\n")
        + "\n"
        + device_toml(UUID_C)
    )
    parsed = parse_text(text, "f.toml")
    assert [d.uuid for d in parsed.definitions] == [UUID_A, UUID_C]
    assert [(p.line, p.uuid) for p in parsed.problems] == [(10, UUID_B)]


def test_syntax_error_names_the_line_and_skips_the_file() -> None:
    text = device_toml(UUID_A) + "\n[[device]]\nuuid = \n"
    parsed = parse_text(text, "f.toml")
    assert not parsed.usable
    assert parsed.definitions == ()
    (problem,) = parsed.problems
    assert (problem.line, problem.kind) == (7, ProblemKind.SYNTAX)
    assert problem.message.startswith("not valid TOML: ")
    assert "(at line" not in problem.message  # the line is in the location, not repeated


def test_duplicate_key_is_a_syntax_error_with_line() -> None:
    (problem,) = parse_text(device_toml(UUID_A, extra='type = "x"\n'), "f.toml").problems
    assert (problem.line, problem.kind) == (5, ProblemKind.SYNTAX)


def test_invalid_utf8_names_the_line() -> None:
    data = device_toml(UUID_A).encode() + b"# caf\xe9\n"
    parsed = parse_bytes(data, "f.toml")
    assert [(p.line, p.kind, p.message) for p in parsed.problems] == [
        (5, ProblemKind.UNREADABLE, "not valid UTF-8 text")
    ]


def test_header_lookalike_in_a_string_loses_line_numbers_not_definitions() -> None:
    text = device_toml(UUID_A, extra='bogus = """\n[[device]]\n"""\n')
    parsed = parse_text(text, "f.toml")
    assert parsed.definitions == ()
    (problem,) = parsed.problems
    assert problem.line == 0  # ambiguous: no line rather than a wrong one
    assert str(problem).startswith(f"f.toml: device {UUID_A}: unknown key 'bogus'")


def test_render_round_trips_and_is_plain_toml() -> None:
    original = (
        Definition(
            UUID_A, "matrix", "vfio_ap-passthrough", True, (("a", 'q"u\\o\nte'), ("a", "2"))
        ),
        Definition(UUID_B, "mtty", "mtty-1"),
    )
    text = render(original)
    assert tomllib.loads(text)["device"][1] == {"uuid": UUID_B, "parent": "mtty", "type": "mtty-1"}
    parsed = parse_text(text, "f.toml")
    assert parsed.problems == ()
    assert all(
        definitions.same_device(a, b) for a, b in zip(parsed.definitions, original, strict=True)
    )
    assert "[[device]]" in text and "autostart = true" in text


def test_check_definition_normalizes_and_refuses_with_the_projects_errors() -> None:
    checked = definitions.check_definition(Definition(UUID_A.upper(), "mtty", "mtty-1"))
    assert checked.uuid == UUID_A
    with pytest.raises(InvalidUUID):
        definitions.check_definition(Definition("x", "mtty", "mtty-1"))
    with pytest.raises(InvalidName):
        definitions.check_definition(
            Definition(UUID_A, "mtty", "mtty-1", attributes=(("../x", "1"),))
        )
    with pytest.raises(InvalidArgument):
        definitions.check_definition(Definition(UUID_A, "mtty", "mtty-1", autostart="yes"))  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        definitions.check_definition(
            Definition(UUID_A, "mtty", "mtty-1", attributes=(("a", "\ud800"),))
        )


# --- editing in place -------------------------------------------------------------------------

HAND_WRITTEN = f"""\
# Devices for the render farm.   <- file header

# The first one.
[[device]]  # header comment
uuid = "{UUID_A}"
parent = "0000:65:00.0"   # the A100
type = "nvidia-558"       # 8 GB profile
attributes = [
    {{ name = "a", value = "1" }},  # why a=1
]

# The second one, keep.
[[device]]
uuid = "{UUID_B}"
parent = "0000:65:00.0"
type = "nvidia-558"
autostart = true
# trailing comment
"""


def test_replace_keeps_comments_and_neighbours_byte_for_byte() -> None:
    changed = Definition(UUID_A, "0000:65:00.0", "nvidia-559", True, (("a", "1"),))
    new_text = definitions.replace_in_text(HAND_WRITTEN, "f.toml", changed)
    # Only the changed value and the new key differ; the new key goes after the last one.
    assert new_text == HAND_WRITTEN.replace(
        'type = "nvidia-558"       # 8 GB profile\n', 'type = "nvidia-559"       # 8 GB profile\n'
    ).replace("  # why a=1\n]\n", "  # why a=1\n]\nautostart = true\n")


def test_replace_attributes_rewrites_only_that_array() -> None:
    changed = Definition(UUID_A, "0000:65:00.0", "nvidia-558", False, (("b", "2"), ("c", "3")))
    new_text = definitions.replace_in_text(HAND_WRITTEN, "f.toml", changed)
    head, tail = HAND_WRITTEN.split(
        'attributes = [\n    { name = "a", value = "1" },  # why a=1\n]\n'
    )
    assert new_text == (
        head
        + 'attributes = [\n    { name = "b", value = "2" },\n    { name = "c", value = "3" },\n]\n'
        + tail
    )


def test_replace_second_device_and_turn_autostart_off() -> None:
    changed = Definition(UUID_B, "0000:65:00.0", "nvidia-558", False)
    new_text = definitions.replace_in_text(HAND_WRITTEN, "f.toml", changed)
    assert new_text == HAND_WRITTEN.replace("autostart = true\n", "autostart = false\n")


def test_remove_keeps_everything_else() -> None:
    new_text = definitions.remove_from_text(HAND_WRITTEN, "f.toml", UUID_A)
    start = HAND_WRITTEN.index("[[device]]  # header comment")
    end = HAND_WRITTEN.index("# The second one")
    assert new_text == HAND_WRITTEN[:start] + HAND_WRITTEN[end:]


def test_append_adds_a_table_at_the_end() -> None:
    new_text = definitions.append_to_text(
        HAND_WRITTEN, "f.toml", Definition(UUID_C, "mtty", "mtty-1")
    )
    assert new_text.startswith(HAND_WRITTEN)
    assert new_text[len(HAND_WRITTEN) :] == "\n" + device_toml(UUID_C)


def test_edits_refuse_what_they_cannot_do_safely() -> None:
    with pytest.raises(ConfigInvalid, match="not valid TOML"):
        definitions.replace_in_text("uuid = \n", "f.toml", Definition(UUID_A, "m", "t"))
    with pytest.raises(ConfigInvalid, match="not defined in a"):
        definitions.remove_from_text(HAND_WRITTEN, "f.toml", UUID_C)
    inline = f'device = [{{ uuid = "{UUID_A}", parent = "m", type = "t" }}]\n'
    with pytest.raises(ConfigInvalid):
        definitions.remove_from_text(inline, "f.toml", UUID_A)


def test_shipped_examples_are_valid() -> None:
    examples = sorted((REPO / "config" / "examples").glob("*.toml"))
    assert len(examples) >= 2
    for path in examples:
        parsed = parse_bytes(path.read_bytes(), str(path))
        assert parsed.problems == (), path
        assert parsed.definitions, path
    several = parse_bytes((REPO / "config/examples/several-devices.toml").read_bytes(), "x")
    assert len(several.definitions) > 1


def test_file_size_limit_is_generous() -> None:
    big = render(
        Definition(f"{i:08x}-0000-4000-8000-000000000000", "mtty", "mtty-1") for i in range(10_000)
    )
    assert len(big.encode()) < definitions.MAX_FILE_SIZE
