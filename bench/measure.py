# SPDX-License-Identifier: LGPL-2.1-or-later
"""How a row is timed, wherever it runs: on the emulated kernel (`bench/rows.py`) and inside the
real-kernel guest (`tests/realkernel/guest/bench.py`).

Contenders alternate repetition by repetition (mdevctl, mdevd, floor, mdevctl, ...), so a change
in the machine's load during a run hits all of them, not the one that happened to run last.
This module imports nothing of the emulated kernel, so the guest can use it.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Awaitable, Callable, Sequence

import pyudev

from bench.report import Stats

Measure = Callable[[], Awaitable[float]]
#: A measure that times several spans of one repetition (a create and the removal after it).
MultiMeasure = Callable[[], Awaitable[Sequence[float]]]


async def alternate(repetitions: int, *measures: Measure) -> list[Stats]:
    """Run each measure once per repetition, in turn; their samples, in the same order."""
    samples: list[list[float]] = [[] for _ in measures]
    for _ in range(repetitions):
        for index, measure in enumerate(measures):
            samples[index].append(await measure())
    return [Stats(tuple(s)) for s in samples]


async def alternate_spans(repetitions: int, *measures: MultiMeasure) -> list[list[Stats]]:
    """`alternate` for measures that time several spans each: stats[measure][span]."""
    samples: list[list[list[float]]] = [[] for _ in measures]
    for _ in range(repetitions):
        for index, measure in enumerate(measures):
            samples[index].append(list(await measure()))
    return [
        [Stats(tuple(rep[span] for rep in runs)) for span in range(len(runs[0]))]
        for runs in samples
    ]


def timed_command(argv: Sequence[str], env: dict[str, str] | None = None) -> float:
    """Seconds from fork to exit of `argv` (process start-up included, as a user pays it)."""
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
    return elapsed


class BindWatcher:
    """The kernel's `bind` uevents of mdev devices, read from udev's netlink group.

    A clock that stops at the last device's `bind` needs no polling of sysfs, which would
    load the kernel the contenders are timed on (on the emulated one, a FUSE round trip each).
    """

    def __init__(self) -> None:
        self.monitor = pyudev.Monitor.from_netlink(pyudev.Context(), source="udev")
        self.monitor.set_receive_buffer_size(32 * 1024 * 1024)
        self.monitor.start()

    def drain(self) -> None:
        while self.monitor.poll(timeout=0) is not None:
            pass

    def wait_for_binds(self, uuids: set[str], timeout: float = 300) -> float:
        """Block until every one of `uuids` was bound; the perf_counter time of the last."""
        missing = set(uuids)
        deadline = time.monotonic() + timeout
        last = time.perf_counter()
        while missing:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(missing)} of {len(uuids)} devices were never bound")
            # None also when libudev dropped a message it read: not a timeout, poll again.
            device = self.monitor.poll(timeout=max(0.01, deadline - time.monotonic()))
            if device is not None and device.action == "bind" and device.subsystem == "mdev":
                missing.discard(device.sys_name)
                last = time.perf_counter()
        return last
