# SPDX-License-Identifier: LGPL-2.1-or-later
"""The device definition file format: its only parser, validator, renderer and editor.

A definitions file is TOML holding one or more `[[device]]` tables:

    [[device]]
    uuid = "7a3c1d52-0b8e-4c1f-9f62-3d1e5a4b7c90"
    parent = "0000:65:00.0"
    type = "nvidia-558"
    placement = "0000:65:00.5"                         # optional: nvidia-vf's pinned VF
    autostart = true                                   # optional, default false
    attributes = [                                     # optional, written in this order
        { name = "assign_adapter", value = "5" },
    ]

Everything that turns text into `Definition`s goes through `parse_bytes`/`parse_text`, and
everything that turns `Definition`s into text goes through `render` or the `*_in_text` editors,
so the format has one definition (`docs/config-format.md` describes it for people).

Parsing never raises for bad input: it returns the good definitions and a `Problem` for each
bad file or entry, with the line the problem is on when it is known. One bad entry costs that
entry only; a file TOML cannot parse costs that file only.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from mdevd import plain_toml, prescan, validate
from mdevd.errors import AttributeRejected, ConfigInvalid, InvalidArgument
from mdevd.model import Attributes, Definition

# The structural bounds live with the pre-scan that enforces them (the mdevctl front end
# imports only that); they are this module's too, as they were.
from mdevd.prescan import MAX_KEY_LENGTH as MAX_KEY_LENGTH
from mdevd.prescan import MAX_KEY_PARTS as MAX_KEY_PARTS
from mdevd.prescan import MAX_NESTING_DEPTH as MAX_NESTING_DEPTH

DEVICE_KEYS: tuple[str, ...] = ("uuid", "parent", "type", "placement", "autostart", "attributes")
REQUIRED_KEYS: tuple[str, ...] = ("uuid", "parent", "type")
ATTRIBUTE_KEYS: tuple[str, ...] = ("name", "value")

# --- bounds ---------------------------------------------------------------------------------
# Every definitions file (TOML here, mdevctl's JSON in mdevd.mdevctl_config) is checked against
# these before a parser sees it, so that no file can make loading crash (tomllib and json
# recurse once per nesting level) or run for long (tomllib's cost grows with the square of a
# dotted key's parts). A file over a bound is one problem, like any other bad file. mdevd's
# schema is shallow: each bound is far above anything a real file holds. The structural ones
# (nesting, dotted-key parts, key length) are mdevd.prescan's, imported above.

#: Bytes in a TOML definitions file: MAX_DEVICES_PER_FILE devices with a few attributes
#: each. tomllib reads hostile input at ~0.3 MB/s at worst, so this bounds one file's cost.
MAX_FILE_SIZE = 4 * 1024 * 1024
#: Bytes of TOML definitions files read by one load, in all directories together (65,536
#: devices take ~16 MB); files beyond it (in precedence order) are not loaded.
MAX_TOTAL_SIZE = 32 * 1024 * 1024
#: Bytes in one mdevctl JSON file (one device each; attribute values are at most 4 KiB).
MAX_MDEVCTL_FILE_SIZE = 1024 * 1024
#: `[[device]]` tables in one file.
MAX_DEVICES_PER_FILE = 16_384
#: Definitions loaded from every directory together (TOML and mdevctl's); files beyond it
#: (in precedence order) are not loaded.
MAX_DEVICES_TOTAL = 65_536
#: Problems listed for one file; the rest are counted in one more (each costs a log line).
MAX_PROBLEMS_PER_FILE = 100
#: Entries in one definitions directory; a directory holding more is not read at all.
MAX_DIRECTORY_ENTRIES = 131_072

#: Written at the top of files mdevd creates, so an admin who opens one knows what to expect.
WRITTEN_FILE_HEADER = (
    "# Written by mdevd. Hand edits are welcome: mdevd updates this file in place and keeps\n"
    "# comments. The format is described in mdevd's docs/config-format.md.\n\n"
)


class ProblemKind(StrEnum):
    UNREADABLE = "unreadable"  # I/O error, not a regular file, not UTF-8, refused by its owner
    LIMIT = "limit"  # over one of the bounds above: the whole file is skipped
    SYNTAX = "syntax"  # not TOML: the whole file is skipped
    INVALID = "invalid"  # valid TOML, but not a valid definition: that entry is skipped
    CONFLICT = "conflict"  # a UUID defined more than once: all but one are skipped


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with the definitions, located as precisely as the parser knows."""

    file: str
    #: 1-based; 0 when the parser does not know the line.
    line: int
    message: str
    kind: ProblemKind = ProblemKind.INVALID
    #: The device it is about, when known (lower-case canonical form).
    uuid: str = ""

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line > 0 else self.file
        return f"{where}: {self.message}"


def printable_path(path: str | os.PathLike[str]) -> str:
    """A path as text that can be printed and sent over D-Bus.

    File names are bytes; one that is not UTF-8 reaches Python with surrogate escapes, which
    no UTF-8 stream accepts. Those bytes are shown as `\\xNN` instead.
    """
    return os.fsencode(path).decode("utf-8", "backslashreplace")


@dataclass(frozen=True, slots=True)
class ParsedFile:
    """What one file holds: its valid definitions in file order, and its problems."""

    definitions: tuple[Definition, ...]
    problems: tuple[Problem, ...]
    #: False when nothing in the file could be used (unreadable, not UTF-8, not TOML).
    usable: bool


# --- locating things in the text ------------------------------------------------------------
# tomllib reports lines only in syntax errors, so table and key lines come from scanning the
# text. The scan is trusted only when it finds exactly as many `[[device]]` headers as tomllib
# found tables (a header-like line inside a multi-line string would break the count, never
# silently shift it), and edits are verified by parsing the result again.

_DEVICE_HEADER_RE = re.compile(
    r"""[ \t]*\[\[[ \t]*(?:device|"device"|'device')[ \t]*\]\][ \t]*(?:#.*)?"""
)
_COMMENT_OR_BLANK_RE = re.compile(r"[ \t]*(?:#.*)?")
_TOML_ERROR_LINE_RE = re.compile(r"\(at line (\d+), column \d+\)$")


def _device_header_lines(lines: Sequence[str]) -> list[int]:
    """0-based indexes of the lines that open a `[[device]]` table."""
    return [i for i, line in enumerate(lines) if _DEVICE_HEADER_RE.fullmatch(line)]


def _key_lines(lines: Sequence[str], start: int, end: int, keys: Iterable[str]) -> dict[str, int]:
    """0-based index of the first line assigning each of `keys` within lines[start:end].

    One pass over that text for all the keys: a file with many bad keys must not cost a
    pass per key (100,000 of them made loading quadratic).
    """
    wanted = dict.fromkeys(keys)
    if not wanted or start >= end:
        return {}
    # Escaped: a key is the file's text, and any text can be a quoted key ("a(b" = 1).
    alternatives = "|".join(re.escape(key) for key in wanted)
    pattern = re.compile(rf"""^[ \t]*["']?({alternatives})["']?[ \t]*=""", re.MULTILINE)
    chunk = "\n".join(lines[start:end])
    found: dict[str, int] = {}
    position, line = 0, start
    for match in pattern.finditer(chunk):
        line += chunk.count("\n", position, match.start())
        position = match.start()
        found.setdefault(match.group(1), line)
        if len(found) == len(wanted):
            break
    return found


def _toml_type(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return "a date or time"


def _unknown_key_message(key: str, allowed: Sequence[str], where: str) -> str:
    import difflib  # only a bad key's hint needs it

    hint = difflib.get_close_matches(key, allowed, n=1)
    suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
    return f"unknown key {key!r} in {where}{suggestion}; allowed: {', '.join(allowed)}"


# --- bounding the input before a parser sees it -----------------------------------------


def bound_problem(text: str, source: str, *, json: bool = False) -> Problem | None:
    """The problem that makes `text` too costly to parse (TOML, or JSON with `json`), or None:
    `mdevd.prescan`'s finding, as a problem of `source`."""
    found = prescan.too_costly(text, json=json)
    if found is None:
        return None
    line, message = found
    return Problem(source, line, message, ProblemKind.LIMIT)


def _long_key(document: dict[str, Any]) -> str | None:
    """A key longer than MAX_KEY_LENGTH where the schema has keys, which problems quote: the
    file's, a device's, an attribute's. (Quoted keys get past the pre-scan, which sees no
    keys inside strings; keys deeper down are in values that are refused whole.)"""
    tables = document.get("device")
    levels: list[Iterable[str]] = [document]
    if isinstance(tables, list):
        for table in tables:
            if isinstance(table, dict):
                levels.append(table)
                attributes = table.get("attributes")
                if isinstance(attributes, list):
                    levels.extend(item for item in attributes if isinstance(item, dict))
    for keys in levels:
        for key in keys:
            if len(key) > MAX_KEY_LENGTH:
                return key
    return None


# --- validation -----------------------------------------------------------------------------


@dataclass(slots=True)
class _EntryErrors:
    """Errors of one `[[device]]` table, each tied to the key it is about ('' = the table).

    Only the first `limit` are kept (and worded: an unknown key's hint costs a fuzzy match);
    the others are counted, so a table of a million bad keys costs no more than a few.
    """

    limit: int = MAX_PROBLEMS_PER_FILE
    errors: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    dropped: int = 0

    @property
    def full(self) -> bool:
        return len(self.errors) >= self.limit

    @property
    def found_any(self) -> bool:
        return bool(self.errors) or self.dropped > 0

    def add(self, key: str, message: str) -> None:
        if self.full:
            self.dropped += 1
        else:
            self.errors.append((key, message))

    def add_unknown_key(self, about: str, key: str, allowed: Sequence[str], where: str) -> None:
        """`key` is not one of `allowed` in `where`; the error is located at key `about`."""
        self.add(about, "" if self.full else _unknown_key_message(key, allowed, where))


def _check_attributes(value: object, errors: _EntryErrors) -> Attributes:
    if not isinstance(value, list):
        errors.add("attributes", f"'attributes' must be an array, not {_toml_type(value)}")
        return ()
    checked: list[tuple[str, str]] = []
    for index, item in enumerate(value, start=1):
        label = f"attribute {index}"
        if not isinstance(item, dict):
            errors.add(
                "attributes",
                f"{label} must be a table {{ name = ..., value = ... }}, not {_toml_type(item)}",
            )
            continue
        unknown = [k for k in item if k not in ATTRIBUTE_KEYS]
        for key in unknown:
            errors.add_unknown_key("attributes", key, ATTRIBUTE_KEYS, label)
        missing = [k for k in ATTRIBUTE_KEYS if k not in item]
        for key in missing:
            errors.add("attributes", f"{label} has no {key!r}")
        if unknown or missing:
            continue
        name, attr_value = item["name"], item["value"]
        try:
            checked.append(
                (
                    validate.device_attribute_name(name),
                    validate.attribute_value(attr_value, str(name)),
                )
            )
        except (InvalidArgument, AttributeRejected) as e:
            errors.add("attributes", f"{label}: {e.message}")
    return tuple(checked)


def _definition_from_table(
    table: Mapping[str, Any], errors: _EntryErrors
) -> tuple[str, str, str, bool, Attributes, str]:
    for key in table:
        if key not in DEVICE_KEYS:
            errors.add_unknown_key(key, key, DEVICE_KEYS, "[[device]]")
    for key in REQUIRED_KEYS:
        if key not in table:
            errors.add("", f"{key!r} is missing")

    checks = (
        ("uuid", validate.uuid),
        ("parent", validate.parent_name),
        ("type", validate.type_id),
        ("placement", validate.pci_address),
    )
    results: dict[str, str] = {}
    for key, check in checks:
        if key in table:
            try:
                results[key] = check(table[key])
            except InvalidArgument as e:
                errors.add(key, e.message)
    uuid, parent, type_id = (
        results.get("uuid", ""),
        results.get("parent", ""),
        results.get("type", ""),
    )

    autostart = table.get("autostart", False)
    if not isinstance(autostart, bool):
        errors.add("autostart", f"'autostart' must be true or false, not {_toml_type(autostart)}")
        autostart = False
    attributes = _check_attributes(table.get("attributes", []), errors)
    return uuid, parent, type_id, autostart, attributes, results.get("placement", "")


def check_definition(definition: Definition) -> Definition:
    """Validate a `Definition` built in code (from the API); return it normalized.

    Raises `InvalidArgument` (or its subclasses `InvalidUUID`, `InvalidName`) naming the problem,
    `AttributeRejected` for an attribute named as a driver-core file (`remove`, `uevent`...).
    """
    if not isinstance(definition, Definition):
        raise InvalidArgument(f"not a definition: {type(definition).__name__}")
    uuid, parent, type_id, placement, attributes = validate.definition_fields(
        definition.uuid,
        definition.parent,
        definition.type_id,
        definition.placement,
        definition.autostart,
        definition.attributes,
    )
    return dataclasses.replace(
        definition,
        uuid=uuid,
        parent=parent,
        type_id=type_id,
        attributes=attributes,
        placement=placement,
    )


def same_device(a: Definition, b: Definition) -> bool:
    """Equal as devices: everything but where they were read from."""
    return (a.uuid, a.parent, a.type_id, a.autostart, tuple(a.attributes), a.placement) == (
        b.uuid,
        b.parent,
        b.type_id,
        b.autostart,
        tuple(b.attributes),
        b.placement,
    )


# --- parsing --------------------------------------------------------------------------------


def _unusable(source: str, line: int, message: str, kind: ProblemKind) -> ParsedFile:
    return ParsedFile((), (Problem(source, line, message, kind),), usable=False)


def toml_syntax_problem(error: tomllib.TOMLDecodeError, source: str) -> Problem:
    """A Problem for a TOML syntax error, with the line tomllib names in its message."""
    message = str(error)
    match = _TOML_ERROR_LINE_RE.search(message)
    line = int(match.group(1)) if match else 0
    if match:
        message = message[: match.start()].rstrip()
    return Problem(source, line, f"not valid TOML: {message}", ProblemKind.SYNTAX)


def parse_bytes(data: bytes, source: str) -> ParsedFile:
    """Parse a definitions file's raw content; `source` names it in problems."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        return _unusable(source, line, "not valid UTF-8 text", ProblemKind.UNREADABLE)
    return parse_text(text, source)


@functools.lru_cache(maxsize=2)
def parse_text(text: str, source: str) -> ParsedFile:
    """Parse a definitions file's text; `source` names it in problems.

    The last results are remembered: an edit parses a file to verify it, and the store then
    loads the very same text (for a file of 10,000 devices, each parse costs ~0.5 s).
    """
    # The plain layout mdevd writes is read without tomllib (5-10x faster), in one linear
    # pass: it needs none of the bounds below, which its fixed keys and two levels of nesting
    # never reach. Anything else, tomllib reads and judges.
    plain = plain_toml.read(text)
    if plain is not None:
        document = plain
    else:
        too_costly = bound_problem(text, source)
        if too_costly is not None:
            return ParsedFile((), (too_costly,), usable=False)
        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            return ParsedFile((), (toml_syntax_problem(e, source),), usable=False)
        except (ValueError, RecursionError) as e:
            # What the pre-scan has not foreseen must still cost this file only, not the load.
            return _unusable(source, 0, f"cannot be parsed: {e}"[:200], ProblemKind.LIMIT)

    problems: list[Problem] = []
    lines = text.split("\n")
    long_key = None if plain is not None else _long_key(document)
    if long_key is not None:
        line = prescan.line_at(text, max(text.find(long_key), 0))
        message = f"key {long_key[:64]!r}... is longer than {MAX_KEY_LENGTH} characters"
        return _unusable(source, line, message, ProblemKind.LIMIT)
    unknown = [key for key in document if key != "device"]
    dropped = max(0, len(unknown) - MAX_PROBLEMS_PER_FILE)
    unknown = unknown[:MAX_PROBLEMS_PER_FILE]
    tables = document.get("device", [])
    located_keys = [*unknown, "device"] if unknown or not isinstance(tables, list) else []
    top_lines = _key_lines(lines, 0, len(lines), located_keys)
    for key in unknown:
        line = top_lines.get(key, -1) + 1
        problems.append(Problem(source, line, _unknown_key_message(key, ("device",), "the file")))

    if not isinstance(tables, list):
        line = top_lines.get("device", -1) + 1
        problems.append(
            Problem(source, line, f"'device' must be [[device]] tables, not {_toml_type(tables)}")
        )
        return ParsedFile((), tuple(_summed_up(problems, dropped, source)), usable=True)

    if plain is not None:
        # Its headers are exactly `[[device]]`, and no other line of it can look like one.
        headers = [index for index, line in enumerate(lines) if line == "[[device]]"]
    else:
        headers = _device_header_lines(lines)
    if len(headers) != len(tables):
        headers = []  # cannot map tables to lines; report without line numbers
    if len(tables) > MAX_DEVICES_PER_FILE:
        line = headers[MAX_DEVICES_PER_FILE] + 1 if headers else 0
        message = (
            f"more than {MAX_DEVICES_PER_FILE} [[device]] tables in one file "
            f"({len(tables)}); split it into several files"
        )
        return _unusable(source, line, message, ProblemKind.LIMIT)
    definitions: list[Definition] = []
    for index, table in enumerate(tables):
        start = headers[index] if headers else -1
        end = headers[index + 1] if headers and index + 1 < len(headers) else len(lines)
        label = f"device {index + 1}"
        if not isinstance(table, dict):
            problems.append(
                Problem(source, start + 1, f"{label} must be a table, not {_toml_type(table)}")
            )
            continue
        errors = _EntryErrors(limit=max(0, MAX_PROBLEMS_PER_FILE - len(problems)))
        uuid, parent, type_id, autostart, attributes, placement = _definition_from_table(
            table, errors
        )
        dropped += errors.dropped
        if uuid:
            label = f"device {uuid}"
        key_lines = (
            _key_lines(lines, start, end, (key for key, _ in errors.errors if key))
            if headers
            else {}
        )
        located = [
            Problem(source, key_lines.get(key, start) + 1, f"{label}: {message}", uuid=uuid)
            for key, message in errors.errors
        ]
        problems.extend(sorted(located, key=lambda p: p.line))
        if not errors.found_any:
            definitions.append(
                Definition(
                    uuid, parent, type_id, autostart, attributes, source, start + 1, placement
                )
            )
    return ParsedFile(tuple(definitions), tuple(_summed_up(problems, dropped, source)), usable=True)


def _summed_up(problems: list[Problem], dropped: int, source: str) -> list[Problem]:
    """`problems`, and one more saying how many were not listed."""
    if dropped:
        message = f"{dropped} more problems in this file, not listed"
        problems.append(Problem(source, 0, message))
    return problems


# --- rendering ------------------------------------------------------------------------------


def _table(definition: Definition) -> dict[str, Any]:
    table: dict[str, Any] = {
        "uuid": definition.uuid,
        "parent": definition.parent,
        "type": definition.type_id,
    }
    if definition.placement:
        table["placement"] = definition.placement
    if definition.autostart:
        table["autostart"] = True
    if definition.attributes:
        table["attributes"] = [{"name": n, "value": v} for n, v in definition.attributes]
    return table


def _toml_string(value: str) -> str:
    # tomli-w knows TOML's escaping rules (DEL and other control characters included). Imported
    # here: only rendering needs it, and Python keeps the module after the first call.
    import tomli_w

    return tomli_w.dumps({"s": value})[len("s = ") : -1]


def _render_attributes(attributes: Attributes) -> str:
    items = "".join(
        f"    {{ name = {_toml_string(n)}, value = {_toml_string(v)} }},\n" for n, v in attributes
    )
    return f"attributes = [\n{items}]\n"


def _render_table(definition: Definition) -> str:
    text = (
        "[[device]]\n"
        f"uuid = {_toml_string(definition.uuid)}\n"
        f"parent = {_toml_string(definition.parent)}\n"
        f"type = {_toml_string(definition.type_id)}\n"
    )
    if definition.placement:
        text += f"placement = {_toml_string(definition.placement)}\n"
    if definition.autostart:
        text += "autostart = true\n"
    if definition.attributes:
        text += _render_attributes(definition.attributes)
    return text


def render(definitions: Iterable[Definition], header: str = WRITTEN_FILE_HEADER) -> str:
    """A new definitions file holding `definitions`, in order, one `[[device]]` table each.

    Always the same layout, one attribute per line, so that files mdevd writes read (and diff)
    like hand-written ones.
    """
    return header + "\n".join(_render_table(d) for d in definitions)


# --- editing existing text in place ---------------------------------------------------------
# A definition in a hand-written file is changed by splicing: the lines of its own table are
# re-rendered (with tomlkit, so comments on the keys that did not change stay), every other
# byte of the file stays as it was. The result is parsed again and must hold exactly the
# intended definitions, or nothing is written.


def _entry_span(text: str, source: str, line: int) -> tuple[list[str], int, int]:
    """The file's lines and the [start, end) line span of the table whose header is `line`.

    The span runs from the `[[device]]` header to the last line that is not blank or a comment:
    comments after it belong to what follows.
    """
    lines = text.split("\n")
    headers = _device_header_lines(lines)
    start = line - 1
    if start not in headers:
        raise ConfigInvalid(
            f"{source}: mdevd edits only [[device]] tables in place, and cannot find them "
            "unambiguously in this file; edit it by hand"
        )
    following = [h for h in headers if h > start]
    end = following[0] if following else len(lines)
    while end > start + 1 and _COMMENT_OR_BLANK_RE.fullmatch(lines[end - 1]):
        end -= 1
    return lines, start, end


def _located(parsed: ParsedFile, source: str, uuid: str) -> Definition:
    """The definition of `uuid` in a parsed file: the first valid one, as the store uses."""
    for definition in parsed.definitions:
        if definition.uuid == uuid:
            if definition.source_line <= 0:
                break
            return definition
    raise ConfigInvalid(
        f"{source}: device {uuid} is not defined in a [[device]] table mdevd can find here; "
        "edit the file by hand"
    )


def _edited_table_text(chunk: str, definition: Definition) -> str:
    import tomlkit.items  # see replace_in_text

    document = tomlkit.parse(chunk)
    table = document["device"][0]
    assert isinstance(table, tomlkit.items.Table)
    current: dict[str, Any] = table.unwrap()
    wanted = _table(definition)
    if str(current.get("uuid", "")).lower() != definition.uuid:
        table["uuid"] = definition.uuid
    for key in ("parent", "type"):
        if current.get(key) != wanted[key]:
            table[key] = wanted[key]
    if str(current.get("placement", "")).lower() != definition.placement:
        if definition.placement:
            table["placement"] = definition.placement
        elif "placement" in current:
            del table["placement"]
    autostart_changed = current.get("autostart", False) != definition.autostart
    if autostart_changed and ("autostart" in current or definition.autostart):
        # An absent key already means false: add it only to say true.
        table["autostart"] = definition.autostart
    if current.get("attributes", []) != wanted.get("attributes", []):
        if "attributes" in current:
            del table["attributes"]
        if definition.attributes:
            # Rendered as in new files and re-read by tomlkit, for one layout everywhere.
            rendered = tomlkit.parse(_render_attributes(definition.attributes))
            table["attributes"] = rendered["attributes"]
    return tomlkit.dumps(document)


def _verified(new_text: str, source: str, before: ParsedFile, expect: list[Definition]) -> str:
    """Return `new_text` if it parses to exactly `expect` (and no new problems), else refuse."""
    after = parse_text(new_text, source)
    ok = (
        after.usable
        and len(after.problems) == len(before.problems)
        and len(after.definitions) == len(expect)
        and all(same_device(a, b) for a, b in zip(after.definitions, expect, strict=True))
    )
    if not ok:
        raise ConfigInvalid(
            f"{source}: mdevd could not edit this file in place without changing other "
            "definitions in it; edit it by hand"
        )
    return new_text


def _parsed_for_edit(text: str, source: str) -> ParsedFile:
    parsed = parse_text(text, source)
    if not parsed.usable:
        problem = parsed.problems[0]
        raise ConfigInvalid(f"{problem}; mdevd will not rewrite a file it cannot parse")
    return parsed


def replace_in_text(text: str, source: str, definition: Definition) -> str:
    """`text` with the table of `definition.uuid` changed to `definition`, all else kept."""
    # Imported here, not at the top: tomlkit costs ~60 ms to import and only in-place edits
    # of hand-written files need it; every command and the daemon's start-up would pay it.
    import tomlkit.exceptions

    before = _parsed_for_edit(text, source)
    old = _located(before, source, definition.uuid)
    lines, start, end = _entry_span(text, source, old.source_line)
    chunk = "\n".join(lines[start:end]) + "\n"
    try:
        edited = _edited_table_text(chunk, definition)
    except (tomlkit.exceptions.TOMLKitError, KeyError, TypeError, AttributeError) as e:
        raise ConfigInvalid(f"{source}:{start + 1}: cannot edit this table in place: {e}") from None
    new_lines = [*lines[:start], *edited.rstrip("\n").split("\n"), *lines[end:]]
    expect = [definition if d is old else d for d in before.definitions]
    return _verified("\n".join(new_lines), source, before, expect)


def remove_from_text(text: str, source: str, uuid: str) -> str:
    """`text` without the first valid table of `uuid` (and one blank line after it)."""
    before = _parsed_for_edit(text, source)
    old = _located(before, source, uuid)
    lines, start, end = _entry_span(text, source, old.source_line)
    if end < len(lines) and not lines[end].strip():
        end += 1
    new_text = "\n".join([*lines[:start], *lines[end:]])
    expect = [d for d in before.definitions if d is not old]
    return _verified(new_text, source, before, expect)


def append_to_text(text: str, source: str, definition: Definition) -> str:
    """`text` with a table for `definition` added at the end."""
    before = _parsed_for_edit(text, source)
    separator = "" if not text.strip() else ("\n" if text.endswith("\n") else "\n\n")
    new_text = text + separator + render([definition], header="")
    return _verified(new_text, source, before, [*before.definitions, definition])
