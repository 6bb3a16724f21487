# SPDX-License-Identifier: LGPL-2.1-or-later
"""How the engine runs things: blocking I/O in worker threads, keyed locks, and work that
runs once more when asked again meanwhile.

- `IoRunner`: kernel and store calls run in a worker pool, each bounded by a timeout. A sysfs
  write can block (a device held by a VM) and must never stall the event loop; a worker thread
  cannot be stopped, so a call that times out goes on, and `IoTimeout.pending` is its outcome.
- `KeyedLocks`: one lock per key (a UUID, a parent), kept only while someone holds it or
  waits for it, so the locks do not grow with every key ever used.
- `Coalescer`: "run again if asked meanwhile", for every loop that needs it (the engine's
  rescans and reloads, the daemon's SIGHUP reloads): one run at a time, and however many asks
  came during a run, one more run after it.
- `BackgroundTasks`: tasks nobody awaits, kept referenced until they end.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

from mdevd.errors import Timeout

P = ParamSpec("P")
T = TypeVar("T")


class IoTimeout(Timeout):
    """A kernel or store operation that did not finish in time; `pending` is its outcome."""

    def __init__(self, message: str, pending: asyncio.Future[Any]) -> None:
        super().__init__(message)
        self.pending = pending


class IoRunner:
    """Runs blocking calls in `workers` threads; a call that takes longer than `timeout`
    seconds raises `IoTimeout` to its caller."""

    def __init__(self, timeout: float, workers: int) -> None:
        self.timeout = timeout
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mdevd-io")

    async def run(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, functools.partial(function, *args, **kwargs))
        try:
            async with asyncio.timeout(self.timeout):
                # Shielded: a worker thread cannot be stopped, and what it still does matters.
                return await asyncio.shield(future)
        except TimeoutError as exc:
            future.add_done_callback(_consume_outcome)
            name = getattr(function, "__name__", "operation")
            raise IoTimeout(f"{name} did not finish within {self.timeout:g} s", future) from exc

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _consume_outcome(future: asyncio.Future[Any]) -> None:
    # Nobody may wait for a timed-out operation: retrieve its exception so that asyncio does
    # not report it as never retrieved.
    if not future.cancelled():
        future.exception()


class KeyedLocks:
    """One asyncio lock per key, there while a task holds or waits for it."""

    def __init__(self) -> None:
        # Per key: the lock and how many tasks hold or wait for it. An entry goes when the last
        # one leaves, or every key ever used would keep a lock for good.
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        """How many keys have a lock now (held or waited for)."""
        return len(self._locks)


class Coalescer:
    """Runs `work` in a task when asked (`request`). Asked while it runs, it runs `work` once
    more when the run ends, however many times it was asked meanwhile: a run starts after the
    last ask, so it sees everything asked for. A failure is logged (`failure`, to `log`: the
    owner's) and does not end the asking: the next ask runs it again."""

    def __init__(
        self, work: Callable[[], Awaitable[object]], failure: str, log: logging.Logger
    ) -> None:
        self._work = work
        self._failure = failure
        self._log = log
        self._again = False
        self._task: asyncio.Task[None] | None = None

    def request(self) -> None:
        self._again = True
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    @property
    def running(self) -> asyncio.Task[None] | None:
        """The task while a run is in progress or due, else None."""
        if self._task is None or self._task.done():
            return None
        return self._task

    async def _run(self) -> None:
        while self._again:
            self._again = False
            try:
                await self._work()
            except Exception:  # the next ask tries again; asking must never stop working
                self._log.exception(self._failure)

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()


class BackgroundTasks:
    """Tasks that nobody awaits, referenced until they end (the loop keeps only weak ones)."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
