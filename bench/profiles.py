# SPDX-License-Identifier: LGPL-2.1-or-later
"""What the daemon spent its time on in a `--profile` run: py-spy's samples, summed up.

The benchmark's rows say how fast mdevd is beside mdevctl; these say why (docs/performance.md
quotes them for the rows where mdevd is slower). Every thread is sampled, idle or not, because
the daemon's sysfs and file work runs in worker threads while the event loop waits for it.
A sample is *idle* when its thread waits for work: the loop in `select`, a worker in its
queue. The rest are the daemon at work, shown by the frames they were in (time in a function
and below it) and by the frame on top (time in it alone: a system call shows as its caller).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from pathlib import Path

#: The frames whose samples are the daemon at work, not the interpreter or a library alone.
OWN_CODE = ("mdevd/",)


@dataclass
class Samples:
    total: int = 0
    idle: int = 0
    #: Samples with the frame anywhere on the stack (counted once per sample).
    inclusive: collections.Counter[str] = field(default_factory=collections.Counter)
    #: Samples with the frame on top.
    leaf: collections.Counter[str] = field(default_factory=collections.Counter)


def _idle(frames: list[str]) -> bool:
    top = frames[-1]
    if top.split(" (", 1)[0].endswith("select") and "(selectors.py:" in top:  # the loop, waiting
        return True
    # An executor worker with no mdevd frame is waiting for its next job.
    return any(f.startswith("_worker (concurrent/futures/thread.py") for f in frames) and not any(
        code in f for f in frames for code in OWN_CODE
    )


def read(path: Path) -> Samples:
    """py-spy's raw format: a line per distinct stack, `frame;frame;... count`, root first,
    the first frame naming the thread."""
    samples = Samples()
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")[1:] or [stack]
        samples.total += count
        if _idle(frames):
            samples.idle += count
            continue
        for frame in set(frames):
            samples.inclusive[frame] += count
        samples.leaf[frames[-1]] += count
    return samples


def summary(path: Path, limit: int = 25) -> str:
    samples = read(path)
    busy = samples.total - samples.idle
    lines = [
        f"==== {path.name}: {samples.total} samples of all threads, {samples.idle} idle, "
        f"{busy} at work",
    ]
    if busy == 0:
        return "\n".join(lines) + "\n"

    def share(count: int) -> str:
        return f"{count:7d} {100 * count / busy:5.1f}%"

    lines.append("-- mdevd's frames, by samples at work in them or below them")
    own = [(f, n) for f, n in samples.inclusive.items() if any(c in f for c in OWN_CODE)]
    lines += [f"{share(n)}  {f}" for f, n in sorted(own, key=lambda e: -e[1])[:limit]]
    lines.append("-- the frame on top (a system call shows as its caller)")
    lines += [f"{share(n)}  {f}" for f, n in samples.leaf.most_common(limit)]
    return "\n".join(lines) + "\n"


def write_summaries(directory: Path, limit: int = 25) -> list[Path]:
    """`<name>.txt` beside every `<name>.stacks` in `directory`."""
    written = []
    for stacks in sorted(directory.glob("*.stacks")):
        text = stacks.with_suffix(".txt")
        text.write_text(summary(stacks, limit))
        written.append(text)
    return written
