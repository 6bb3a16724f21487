# SPDX-License-Identifier: LGPL-2.1-or-later
"""Golden files of the TOML mdevd writes (`mdevd.definitions.render`), in
tests/data/golden/toml/: a change of the layout of the files mdevd creates is a change of a
golden file, seen in review. `MDEVD_REGENERATE_GOLDEN=1` rewrites them (tests.support.golden).

The definitions cover what the layout has to get right: the keys in their order, autostart
written only when true, a placement only when there is one, attributes one a line in their
order, every escape TOML needs in a string (quotes, backslashes, control characters), text
beyond ASCII kept as it is, several devices in one file, and the header-less table
`append_to_text` adds to an existing file.
"""

from __future__ import annotations

import dataclasses

import pytest

from mdevd.definitions import parse_text, render
from mdevd.model import Definition
from tests.support.golden import GOLDEN, assert_matches_golden

TOML = GOLDEN / "toml"

PLAIN = Definition("0b4d2f46-6c1e-4d7a-9a53-1f0a2b3c4d01", "mtty", "mtty-1")
AUTOSTART = Definition(
    "0b4d2f46-6c1e-4d7a-9a53-1f0a2b3c4d02",
    "matrix",
    "vfio_ap-passthrough",
    autostart=True,
    attributes=(("assign_adapter", "5"), ("assign_domain", "0x47"), ("assign_adapter", "6")),
)
ESCAPES = Definition(
    "0b4d2f46-6c1e-4d7a-9a53-1f0a2b3c4d03",
    "0000:65:00.0",
    "nvidia-558",
    attributes=(
        ("double_quote", 'say "hi"'),
        ("single_quote", "it's"),
        ("backslash", "C:\\path\\to"),
        ("controls", "tab\there, line\nbreak, cr\r, bell\x07, del\x7f"),
        ("unicode", "café, 日本語, 🙂"),
        ("empty", ""),
        ('odd"name\\', "names may hold quotes and backslashes too"),
    ),
)

#: An nvidia-vf vGPU pinned to one virtual function of its GPU (docs/nvidia-vf.md).
PLACEMENT = Definition(
    "0b4d2f46-6c1e-4d7a-9a53-1f0a2b3c4d04",
    "0000:3d:00.0",
    "nvidia-1145",
    autostart=True,
    placement="0000:3d:00.5",
)

#: golden file -> (definitions, header; None: render's default header).
CASES: dict[str, tuple[tuple[Definition, ...], str | None]] = {
    "plain.toml": ((PLAIN,), None),
    "autostart-and-attributes.toml": ((AUTOSTART,), None),
    "quotes-escapes-unicode.toml": ((ESCAPES,), None),
    "several-devices.toml": ((PLAIN, AUTOSTART, ESCAPES), None),
    "appended-table.toml": ((AUTOSTART,), ""),
    "placement.toml": ((PLACEMENT,), None),
}


def _rendered(name: str) -> str:
    definitions, header = CASES[name]
    return render(definitions) if header is None else render(definitions, header=header)


@pytest.mark.parametrize("name", sorted(CASES))
def test_rendered_toml_matches_its_golden_file(name: str) -> None:
    assert_matches_golden(TOML / name, _rendered(name), "the rendered TOML")


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_golden_file_reads_back_as_its_definitions(name: str) -> None:
    parsed = parse_text((TOML / name).read_text(), name)
    assert parsed.problems == ()
    shown = [dataclasses.replace(d, source_file="", source_line=0) for d in parsed.definitions]
    assert shown == list(CASES[name][0])


def test_every_golden_toml_file_is_one_the_tests_write() -> None:
    assert {path.name for path in TOML.iterdir()} == set(CASES)
