# SPDX-License-Identifier: LGPL-2.1-or-later
"""The document tomllib would return, for definitions files in the plain layout mdevd writes.

tomllib is pure Python: about 80 us for a file of one device, most of the daemon's start-up
with 10,000 definitions files (issue 20: ready in under 1 s). Nearly every definitions file
is one mdevd wrote (`definitions.render`) or one written the same simple way: comment lines,
`[[device]]` headers, `key = "string"`, `autostart = true|false`, and the `attributes` array
one `{ name = "...", value = "..." }` per line. `read` recognizes exactly that, line by line
and key by key, and returns what tomllib returns for it; for anything else (another key or
value form, an escape, a non-ASCII character, a duplicate key, CR, a key outside a table) it
returns None and the caller asks tomllib, which then decides, errors included. So this never
accepts a file tomllib refuses nor reads one differently (tests/store/test_plain_toml.py
checks it against tomllib over generated files); what it cannot prove, tomllib reads.
"""

from __future__ import annotations

import re
from typing import Any

#: A basic string with nothing to unescape: printable ASCII but `"` and `\`.
_STRING = r'"([\x20\x21\x23-\x5b\x5d-\x7e]*)"'
_STRING_KEYS = frozenset({"uuid", "parent", "type", "placement"})
_KEY_VALUE = re.compile(rf"([a-z]+) = (?:{_STRING}|(true|false)|(\[))")
_ATTRIBUTE = re.compile(rf"[ \t]*\{{ name = {_STRING}, value = {_STRING} \}},?")
#: A comment line: TOML allows tab and every character but control characters; ASCII only here.
_COMMENT = re.compile(r"#[\t\x20-\x7e]*")


def read(text: str) -> dict[str, Any] | None:
    """tomllib.loads(text), if `text` is in the plain layout; else None."""
    tables: list[dict[str, Any]] = []
    table: dict[str, Any] | None = None
    #: Inside `attributes = [`: the array being filled, and whether a comma ended the last
    #: element (TOML allows one after each; without it only the closing bracket may follow).
    attributes: list[dict[str, str]] | None = None
    more = True
    for line in text.split("\n"):
        if attributes is not None:
            if line == "]":
                attributes = None
                continue
            match = _ATTRIBUTE.fullmatch(line)
            if match is None or not more:
                return None
            attributes.append({"name": match.group(1), "value": match.group(2)})
            more = line.endswith(",")
            continue
        if not line or _COMMENT.fullmatch(line):
            continue
        if line == "[[device]]":
            table = {}
            tables.append(table)
            continue
        match = _KEY_VALUE.fullmatch(line)
        if match is None or table is None:
            return None
        key, string, boolean, array = match.groups()
        if key in table:
            return None
        if string is not None and key in _STRING_KEYS:
            table[key] = string
        elif boolean is not None and key == "autostart":
            table[key] = boolean == "true"
        elif array is not None and key == "attributes":
            attributes = table[key] = []
            more = True
        else:
            return None
    if attributes is not None:
        return None  # the array was never closed
    return {"device": tables} if tables else {}
