# SPDX-License-Identifier: LGPL-2.1-or-later
"""Benchmark: loading 10,000 definitions, from 10,000 files and from one file.

    python -m bench.bench_store [--devices N] [--keep DIR]

Prints, for each layout, the time of a cold load (a new store: every file read and parsed), of
a warm load (the same store again: files are only stat()ed), the peak memory the cold load
allocated (tracemalloc, measured in a separate run because tracing slows Python down), and the
time of one API update in place. Runs in well under a minute.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

from mdevd import definitions
from mdevd.definitions import render
from mdevd.model import Definition
from mdevd.store import DefinitionStore


def _definition(index: int) -> Definition:
    return Definition(
        uuid=f"{index:08x}-7c4b-4e1a-9d2f-{index:012x}",
        parent=f"0000:{index % 256:02x}:00.0",
        type_id="nvidia-558",
        autostart=index % 2 == 0,
        attributes=(("assign_adapter", str(index % 16)), ("assign_domain", "0xab")),
    )


def _make_many_files(directory: Path, count: int) -> None:
    directory.mkdir(parents=True)
    for index in range(count):
        definition = _definition(index)
        (directory / f"{definition.uuid}.toml").write_text(render([definition]))


def _make_one_file(directory: Path, count: int) -> None:
    directory.mkdir(parents=True)
    (directory / "all.toml").write_text(render(_definition(i) for i in range(count)))


def _seconds(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def _peak_bytes(action: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _bench(label: str, directory: Path, count: int) -> None:
    def cold_load() -> None:
        definitions.parse_text.cache_clear()  # cold means parsing everything again
        result = DefinitionStore([directory]).load()
        if len(result.definitions) != count or result.problems:
            raise SystemExit(f"{label}: loaded {len(result.definitions)} of {count}")

    definitions.parse_text.cache_clear()
    warm_store = DefinitionStore([directory])
    cold = _seconds(lambda: warm_store.load())
    warm = _seconds(lambda: warm_store.load())
    peak = _peak_bytes(cold_load)
    changed = _definition(count // 2)
    update = _seconds(
        lambda: warm_store.save(Definition(changed.uuid, changed.parent, "nvidia-559"))
    )
    print(
        f"{label:<22} cold load {cold * 1000:8.1f} ms   warm load {warm * 1000:7.1f} ms   "
        f"peak traced memory {peak / 2**20:6.1f} MiB   one update in place {update * 1000:7.1f} ms"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--devices", type=int, default=10_000, help="definitions (10000)")
    parser.add_argument("--keep", type=Path, help="build the trees here and keep them")
    args = parser.parse_args(argv)
    count: int = args.devices

    with tempfile.TemporaryDirectory(prefix="mdevd-bench-") as scratch:
        root: Path = args.keep or Path(scratch)
        started = time.perf_counter()
        _make_many_files(root / "many", count)
        _make_one_file(root / "one", count)
        built = time.perf_counter() - started
        print(f"mdevd store benchmark: {count} definitions (files built in {built:.1f} s)")
        _bench(f"{count} files", root / "many", count)
        _bench("1 file", root / "one", count)
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(f"process peak RSS {max_rss / 1024:.1f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
