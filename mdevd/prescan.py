# SPDX-License-Identifier: LGPL-2.1-or-later
"""The pre-scan that bounds a definitions file's structure before a parser sees it.

tomllib and json recurse once per nesting level (600 levels crash them) and tomllib's cost
grows with the square of a dotted key's parts, so every definitions file (TOML in
`mdevd.definitions`, mdevctl's JSON in `mdevd.mdevctl_config`) is scanned for these first. A
linear scan, at C speed (regular expressions and builtins over the whole text): the strings and
comments are blanked out first, exactly where the parser would find them (a string that does
not end where this scan thinks is a syntax error the parser stops at), so that what is left is
structure. Newlines are kept, for the line of a problem.

Apart from `mdevd.definitions` because the mdevctl front end reads `--jsonfile` with it at
every such call (issue 20): this module imports `re` and `itertools` only, and its patterns are
compiled at first use (by `re`, which keeps them), not at import.
"""

from __future__ import annotations

import re
from itertools import accumulate

# The structural bounds (the sizes and counts are `mdevd.definitions`'s, which re-exports
# these). mdevd's schema is shallow: each bound is far above anything a real file holds.

#: Arrays and tables (TOML) or arrays and objects (JSON) open at once. The schema needs 2
#: (`[[device]]`, or `attributes = [ { ... } ]`); a parser recursing 600 levels crashes.
MAX_NESTING_DEPTH = 32
#: Parts of a dotted key (`device.attributes` has 2); tomllib's cost grows with their square.
MAX_KEY_PARTS = 8
#: Characters in a key, and in any unquoted word (a number, a date): the schema's keys are
#: short, and Python refuses to convert integers of more than 4300 digits.
MAX_KEY_LENGTH = 256

_TOML_STRING_OR_COMMENT = (
    r'''"""[^"\\]*(?:(?:\\[\s\S]|"(?!""))[^"\\]*)*""""{0,2}'''  # multi-line basic
    r"""|'''[^']*(?:'(?!'')[^']*)*''''{0,2}"""  # multi-line literal
    r'''|"[^"\\\n]*(?:\\.[^"\\\n]*)*"'''  # basic
    r"""|'[^'\n]*'"""  # literal
    r"|#[^\n]*"  # comment
)
_JSON_STRING = r'"[^"\\]*(?:\\[\s\S][^"\\]*)*"'
_NOT_BRACKET_OR_NEWLINE = r"[^\[\]{}\n]+"
_BRACKET_DEPTH = {"[": 1, "{": 1, "]": -1, "}": -1, "\n": 0}
#: What can separate a dotted key's parts is ' ', tab and quoted parts; anything else ends it.
_NOT_DOT_OR_KEY_END = r"[^.\n\[\]{}=,]+"
_BARE = r"A-Za-z0-9_+\-:"
_LONG_BARE_WORD = rf"(?<![{_BARE}])[{_BARE}]{{{MAX_KEY_LENGTH + 1}}}"


def _blank_out(match: re.Match[str]) -> str:
    return '"' + "\n" * match.group().count("\n")


def line_at(text: str, index: int) -> int:
    """The 1-based line of `text` that `index` is on."""
    return text.count("\n", 0, index) + 1


def _first_too_deep(text: str) -> int:
    """The index in `text` (only brackets and newlines) where nesting first goes too deep."""
    depth = 0
    for index, char in enumerate(text):
        depth += _BRACKET_DEPTH[char]
        if depth > MAX_NESTING_DEPTH:
            return index
    return -1


def too_costly(text: str, *, json: bool = False) -> tuple[int, str] | None:
    """The line and the reason that make `text` too costly to parse (TOML, or JSON with
    `json`), or None.

    Checks nesting depth, dotted-key parts (TOML) and the length of unquoted words; the
    caller has bounded the size. Linear in the length of `text`, whatever it holds.
    """
    blanks = re.compile(_JSON_STRING if json else _TOML_STRING_OR_COMMENT)
    # A constant replacement first (no Python call per string): only a file over a bound is
    # scanned again, keeping the newlines of multi-line strings, for the line to report.
    found = _too_costly(blanks.sub('"', text), json=json)
    if found is not None:
        found = _too_costly(blanks.sub(_blank_out, text), json=json) or found
    return found


def _too_costly(structure: str, *, json: bool) -> tuple[int, str] | None:
    brackets = re.sub(_NOT_BRACKET_OR_NEWLINE, "", structure)
    if max(accumulate(map(_BRACKET_DEPTH.__getitem__, brackets)), default=0) > MAX_NESTING_DEPTH:
        line = line_at(brackets, _first_too_deep(brackets))
        return line, f"nested more than {MAX_NESTING_DEPTH} levels deep (arrays and tables)"
    # Rendered files hold no dot outside strings: counting them first spares the scan.
    if not json and structure.count(".") >= MAX_KEY_PARTS:
        dots = re.sub(_NOT_DOT_OR_KEY_END, "", structure)
        found = dots.find("." * MAX_KEY_PARTS)
        if found >= 0:
            return line_at(dots, found), f"a dotted key has more than {MAX_KEY_PARTS} parts"
    long_word = re.search(_LONG_BARE_WORD, structure)
    if long_word is not None:
        message = f"a key or unquoted value is longer than {MAX_KEY_LENGTH} characters"
        return line_at(structure, long_word.start()), message
    return None
