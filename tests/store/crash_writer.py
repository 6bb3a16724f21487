# SPDX-License-Identifier: LGPL-2.1-or-later
"""A writer for the crash-safety test: rewrites definitions in a loop until it is SIGKILLed.

Run as `python -m tests.store.crash_writer DIR`. It prints `ready` once every file has been
written once, then alternates each file between its "old" and "new" content forever.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mdevd import atomic
from mdevd.model import Definition
from mdevd.store import DefinitionStore

FARM_UUID = "11111111-2222-4333-8444-555555555555"
BIG_UUID = "22222222-3333-4444-8555-666666666666"
RAW_NAME = "raw.bin"

FARM_TEXT = f"""\
# The render farm, written by hand.
[[device]]  # the first card
uuid = "{FARM_UUID}"
parent = "0000:65:00.0"   # the A100
type = "nvidia-558"

# A neighbour that must survive every rewrite.
[[device]]
uuid = "33333333-4444-4555-8666-777777777777"
parent = "0000:65:00.0"
type = "nvidia-558"
"""


def farm(version: int) -> Definition:
    return Definition(FARM_UUID, "0000:65:00.0", ("nvidia-558", "nvidia-559")[version])


def big(version: int) -> Definition:
    # ~250 KB of attributes, so that a write takes long enough to be interrupted.
    value = "xy"[version] * 500
    attributes = tuple((f"attr_{i}", value) for i in range(500))
    return Definition(BIG_UUID, "matrix", "vfio_ap-passthrough", bool(version), attributes)


def raw(version: int) -> bytes:
    return bytes([65 + version]) * (2 << 20)


def main() -> None:
    directory = Path(sys.argv[1])
    store = DefinitionStore([directory])
    atomic.write_atomic(directory / "farm.toml", FARM_TEXT.encode())
    version = 0
    store.save(big(version))
    atomic.write_atomic(directory / RAW_NAME, raw(version))
    print("ready", flush=True)
    while True:
        version = 1 - version
        store.save(farm(version))
        store.save(big(version))
        atomic.write_atomic(directory / RAW_NAME, raw(version))


if __name__ == "__main__":
    main()
