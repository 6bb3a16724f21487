# SPDX-License-Identifier: LGPL-2.1-or-later
"""One device's mdevctl JSON, `{"mdev_type": "T", "start": "auto", "attrs": [...]}`, read with
mdevctl's own acceptance rules and mdevd's checks.

What mdevctl (1.x, `MDev::load_from_json`) accepts:
- the content is JSON (strict: no NaN) whose `mdev_type` and `start` are present and not null;
  `mdev_type` must be a string (mdevctl crashes otherwise);
- `start` is `"auto"` for autostart, anything else means manual;
- `attrs` is absent, null, or an array of objects with exactly one key and a string value,
  kept in order; other keys are ignored.
On top of that, mdevd refuses what mdevctl would accept but cannot be safe: parent, type and
attribute names that are not plain sysfs names (mdevctl joins `../x` onto the device path),
and values with NUL (`mdevd.validate.definition_fields`, the checks of every definition).

Both readers of it use this: `mdevd.mdevctl_format`, for each file of mdevctl's directory
(as a `Definition`), and the mdevctl front end, for `--jsonfile`. Apart from the definitions
because libvirt runs the front end once per node-device operation (issue 20): this module
imports `json`, `mdevd.prescan`, `mdevd.validate` (and its `mdevd.errors`) and
`mdevd.mdevctl_shapes`, not the TOML store's modules, `mdevd.model`, dataclasses or pathlib.
"""

from __future__ import annotations

import json

from mdevd import prescan, validate
from mdevd.errors import AttributeRejected, ConfigInvalid, InvalidArgument
from mdevd.mdevctl_shapes import MdevctlConfig

TYPE_CHECKING = False  # annotations only: importing typing is a start-up cost
if TYPE_CHECKING:
    from typing import Any


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _surrogate_free(value: object) -> bool:
    """serde_json refuses lone surrogate escapes (`"\\ud800"`); Python's json lets them in."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(value, list):
        return all(_surrogate_free(v) for v in value)
    if isinstance(value, dict):
        return all(_surrogate_free(k) and _surrogate_free(v) for k, v in value.items())
    return True


def _mdevctl_rejects(reason: str) -> ConfigInvalid:
    return ConfigInvalid(f"mdevctl rejects it: {reason}")


def read_config(text: str, uuid: str, parent: str) -> MdevctlConfig:
    """The device mdevctl would load from `text` for `uuid` under `parent`, normalized.

    Raises `ConfigInvalid` saying whether mdevctl itself rejects it, or mdevctl accepts it but
    mdevd refuses it (an unsafe name), and why.
    """
    too_costly = prescan.too_costly(text, json=True)
    if too_costly is not None:
        line, reason = too_costly
        where = f"line {line}: " if line else ""
        raise ConfigInvalid(f"not read: {where}{reason}")
    try:
        document = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:  # cannot happen within the bound; must cost this file only if it does
        raise ConfigInvalid("not read: nested too deeply") from None
    except ValueError as e:  # JSONDecodeError included
        where = f"line {e.lineno}: " if isinstance(e, json.JSONDecodeError) else ""
        message = e.msg if isinstance(e, json.JSONDecodeError) else str(e)
        raise _mdevctl_rejects(f"not valid JSON: {where}{message}") from None
    if not _surrogate_free(document):
        raise _mdevctl_rejects("not valid JSON: a string holds a lone surrogate escape")
    if not isinstance(document, dict):
        raise _mdevctl_rejects("the file is not a JSON object")
    if document.get("mdev_type") is None:
        raise _mdevctl_rejects("'mdev_type' is missing")
    if document.get("start") is None:
        raise _mdevctl_rejects("'start' is missing")
    mdev_type = document["mdev_type"]
    if not isinstance(mdev_type, str):
        raise _mdevctl_rejects("'mdev_type' is not a string (mdevctl crashes on it)")
    autostart = document["start"] == "auto"
    attrs = document.get("attrs")
    if attrs is None:
        attrs = []
    if not isinstance(attrs, list):
        raise _mdevctl_rejects("'attrs' is not an array")
    pairs: list[tuple[str, str]] = []
    for index, attr in enumerate(attrs, start=1):
        if not isinstance(attr, dict):
            raise _mdevctl_rejects(f"attribute {index} is not an object")
        if len(attr) != 1:
            raise _mdevctl_rejects(f"attribute {index} does not have exactly one field")
        ((name, value),) = attr.items()
        if not isinstance(value, str):
            raise _mdevctl_rejects(f"attribute {index} ({name!r}) has a value that is not a string")
        pairs.append((name, value))

    try:
        # No placement: mdevctl's JSON has none (nvidia-vf devices are not mdevctl's).
        uuid, parent, type_id, _, attributes = validate.definition_fields(
            uuid, parent, mdev_type, "", autostart, tuple(pairs)
        )
    except (InvalidArgument, AttributeRejected) as e:
        raise ConfigInvalid(f"mdevctl accepts it, but mdevd refuses it: {e.message}") from None
    return MdevctlConfig(uuid, parent, type_id, autostart, attributes)
