# SPDX-License-Identifier: LGPL-2.1-or-later
"""Every definitions file is bounded before a parser sees it (issue 15, findings 1 and 2).

Each hostile file is one `FILE:LINE` problem, costs well under a second, and every other file
in the same directory still loads; `mdevd check-config` reports it with exit status 1 and no
traceback. Before the bounds, the deep file raised RecursionError out of the load, the long
dotted key took 42 s and 1.6 GB in tomllib, and the long integer and the regex-like key
raised ValueError and re.error.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mdevd import definitions
from mdevd.definitions import ProblemKind, parse_text, render
from mdevd.model import Definition
from mdevd.store import DefinitionStore
from tests.store.conftest import UUID_A, UUID_B, device_toml
from tests.support.paths import REPO

#: (file name, how to make it, what its problem says). Each is ~1 KB to 40 KB.
HOSTILE_TEXT: dict[str, tuple[str, str]] = {
    "deep-array.toml": ("x = " + "[" * 600 + "]" * 600 + "\n", "nested more than"),
    "deep-inline.toml": ("x = " + "{a=" * 600 + "}" * 600 + "\n", "nested more than"),
    "deep-unclosed.toml": ("x = " + "[" * 100_000 + "\n", "nested more than"),
    "dotted-key.toml": ("a" + ".a" * 19_999 + " = 1\n", "dotted key has more than"),
    "dotted-header.toml": ("[a" + ".a" * 19_999 + "]\n", "dotted key has more than"),
    "long-integer.toml": ("x = " + "1" * 5000 + "\n", "longer than"),
    "long-quoted-key.toml": ('"' + "k" * 100_000 + '" = 1\n', "longer than"),
}


def _write_hostile(directory: Path) -> dict[str, str]:
    """Write every hostile file into `directory`; name -> what its problem must say."""
    expected = {}
    for name, (text, message) in HOSTILE_TEXT.items():
        (directory / name).write_text(text)
        expected[name] = message
    return expected


@pytest.mark.parametrize("name", sorted(HOSTILE_TEXT))
def test_a_hostile_text_is_one_problem_at_once(name: str) -> None:
    text, message = HOSTILE_TEXT[name]
    parse_text.cache_clear()
    started = time.monotonic()
    parsed = parse_text(text, name)
    assert time.monotonic() - started < 1.0
    assert not parsed.usable and parsed.definitions == ()
    (problem,) = parsed.problems
    assert message in problem.message
    assert problem.kind is ProblemKind.LIMIT
    assert problem.line >= 1  # FILE:LINE, like any other bad file


def test_the_line_of_a_bound_is_where_it_is_crossed() -> None:
    text = device_toml(UUID_A) + "\n# a comment with [[[[ and a.b.c.d.e.f\nx = [\n" + "[\n" * 40
    (problem,) = parse_text(text, "f.toml").problems
    assert (
        problem.line == text.count("\n", 0, text.index("x = [")) + 1 + definitions.MAX_NESTING_DEPTH
    )


def test_strings_and_comments_do_not_count() -> None:
    # Brackets, dots and long words inside strings and comments are text, not structure.
    noise = "[" * 100 + "a." * 100 + "9" * 1000
    text = f"# {noise}\n" + device_toml(
        UUID_A,
        extra=(
            f'attributes = [ {{ name = "a", value = "{noise}" }},\n'
            f"  {{ name = 'b', value = '{noise}' }},\n"
            f'  {{ name = "c", value = """{noise}\n{noise}""" }},\n'
            f"  {{ name = 'd', value = '''{noise}''' }} ]\n"
        ),
    )
    parsed = parse_text(text, "f.toml")
    assert parsed.problems == () and len(parsed.definitions) == 1


def test_the_schema_stays_well_inside_the_bounds() -> None:
    long_form = device_toml(UUID_A) + '[[device.attributes]]\nname = "a"\nvalue = "1"\n'
    dotted = f'device = [{{ uuid = "{UUID_B}", parent = "mtty", type.x = 1 }}]\n'
    assert parse_text(long_form, "f.toml").problems == ()
    assert "LIMIT" not in str([p.kind.name for p in parse_text(dotted, "g.toml").problems])


def test_a_key_that_looks_like_a_regular_expression_is_just_a_key() -> None:
    # Its line is looked up with a regular expression built from it (re.error before).
    parsed = parse_text('"a(b" = 1\n' + device_toml(UUID_A), "f.toml")
    assert parsed.usable and [d.uuid for d in parsed.definitions] == [UUID_A]
    assert [(p.line, "'a(b'" in p.message) for p in parsed.problems] == [(1, True)]


def test_a_file_of_too_many_devices_is_one_problem() -> None:
    count = definitions.MAX_DEVICES_PER_FILE + 1
    text = render(
        Definition(f"{i:08x}-0000-4000-8000-000000000000", "m", "t") for i in range(count)
    )
    (problem,) = parse_text(text, "many.toml").problems
    assert problem.kind is ProblemKind.LIMIT and f"more than {count - 1}" in problem.message
    assert problem.line > 0


def test_a_table_of_a_million_bad_keys_costs_a_bounded_list() -> None:
    text = "[[device]]\n" + "".join(f"k{i} = 1\n" for i in range(200_000))
    started = time.monotonic()
    problems = parse_text(text, "keys.toml").problems
    assert time.monotonic() - started < 5
    assert len(problems) == definitions.MAX_PROBLEMS_PER_FILE + 1
    assert "more problems in this file" in problems[-1].message


# --- files in a directory -------------------------------------------------------------------


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _char_device(path: Path) -> None:
    os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 5))  # /dev/zero: endless if read


def _sparse(path: Path) -> None:
    with path.open("wb") as f:
        f.truncate(10 * 1024**3)


def _invalid_utf8(path: Path) -> None:
    path.write_bytes(device_toml(UUID_B).encode() + b"# \xff\xfe\n")


ODD_FILES: dict[str, tuple[Callable[[Path], None], str]] = {
    "fifo.toml": (_fifo, "not a regular file"),
    "char-device.toml": (_char_device, "not a regular file"),
    "sparse-10g.toml": (_sparse, f"larger than {definitions.MAX_FILE_SIZE} bytes"),
    "invalid-utf8.toml": (_invalid_utf8, "not valid UTF-8"),
}


def test_hostile_files_cost_themselves_only(tmp_path: Path) -> None:
    directory = tmp_path / "devices.d"
    directory.mkdir()
    (directory / "good.toml").write_text(device_toml(UUID_A))
    expected = _write_hostile(directory)
    for name, (make, message) in ODD_FILES.items():
        make(directory / name)
        expected[name] = message
    started = time.monotonic()
    result = DefinitionStore([directory]).load()
    assert time.monotonic() - started < 5
    assert list(result.definitions) == [UUID_A]
    by_file = {Path(p.file).name: p for p in result.problems}
    assert set(by_file) == set(expected), result.problems
    for name, message in expected.items():
        assert message in by_file[name].message, by_file[name]


def test_the_total_bounds_keep_the_first_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(definitions, "MAX_DEVICES_TOTAL", 2)
    for index, uuid in enumerate((UUID_A, UUID_B, "33333333-4444-4555-8666-777777777777")):
        (tmp_path / f"{index}.toml").write_text(device_toml(uuid))
    result = DefinitionStore([tmp_path]).load()
    assert list(result.definitions) == [UUID_A, UUID_B]
    (problem,) = result.problems
    assert problem.file.endswith("2.toml") and problem.kind is ProblemKind.LIMIT


def test_a_directory_of_too_many_entries_is_refused_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(definitions, "MAX_DIRECTORY_ENTRIES", 3)
    crowded, other = tmp_path / "crowded", tmp_path / "other"
    crowded.mkdir()
    other.mkdir()
    for index in range(4):
        (crowded / f"{index}.txt").write_text("")
    (other / "a.toml").write_text(device_toml(UUID_A))
    result = DefinitionStore([crowded, other]).load()
    assert list(result.definitions) == [UUID_A]
    (problem,) = result.problems
    assert problem.file == str(crowded) and "more than 3 entries" in problem.message


def test_check_config_reports_every_hostile_file_without_a_traceback(tmp_path: Path) -> None:
    directory = tmp_path / "devices.d"
    directory.mkdir()
    (directory / "good.toml").write_text(device_toml(UUID_A))
    expected = _write_hostile(directory)
    _fifo(directory / "fifo.toml")
    _sparse(directory / "sparse-10g.toml")
    done = subprocess.run(
        [sys.executable, "-m", "mdevd", "check-config", "--devices-dir", str(directory)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    for name, message in expected.items():
        assert any(
            line.startswith(f"{directory / name}:") and message in line
            for line in done.stdout.splitlines()
        ), (name, done.stdout)
    assert "the rest loads: 1 definition" in done.stdout
