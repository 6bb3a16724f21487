"""What the daemon spent its time on in a `--profile` run: cProfile's files, as text.

The benchmark's rows say how fast mdevd is beside mdevctl; these say why (docs/performance.md
quotes them for the rows where mdevd is slower). Only the event loop's thread is profiled:
sysfs reads and writes that run in worker threads appear as the loop's wait for them.
"""

from __future__ import annotations

import io
import pstats
from pathlib import Path


def summary(path: Path, limit: int = 25) -> str:
    """The functions with the most time of their own, then with the most time below them."""
    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out)
    stats.strip_dirs()
    for order in ("tottime", "cumulative"):
        print(f"==== {path.name}, by {order}", file=out)
        stats.sort_stats(order).print_stats(limit)
    return out.getvalue()


def write_summaries(directory: Path, limit: int = 25) -> list[Path]:
    """`<name>.txt` beside every `<name>.pstats` in `directory`."""
    written = []
    for profile in sorted(directory.glob("*.pstats")):
        text = profile.with_suffix(".txt")
        text.write_text(summary(profile, limit))
        written.append(text)
    return written
