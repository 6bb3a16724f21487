# SPDX-License-Identifier: LGPL-2.1-or-later
"""Reading systemd unit files: sections of `Key=value` lines, keys may repeat."""

from __future__ import annotations

from pathlib import Path


def read_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """`{section: {key: [value, ...]}}` in file order; an empty value resets, as in systemd."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        values = current.setdefault(key.strip(), [])
        if value.strip():
            values.append(value.strip())
        else:
            values.clear()
    return sections
