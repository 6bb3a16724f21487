# SPDX-License-Identifier: LGPL-2.1-or-later
"""Waiting for something the daemon or the kernel does asynchronously.

    device = wait_until(lambda: objects().get(uuid), what=f"{uuid}'s object")
    wait_until(lambda: in_sysfs(sim, uuid), timeout=60, what="the kernel's device")
    r.check("the device comes up", came_true(lambda: in_sysfs(sim, uuid), 120))
    await wait_until_async(client_saw_one, 120, "an event")     # in a coroutine
    r.check("mdevd adopts it", await came_true_async(adopted, 60, interval=0.2))

The one way every test waits: poll a condition until it returns something true. `wait_until`
fails the test (AssertionError, naming `what`) if `timeout` passes first; `came_true` is the
same wait as a check, answering whether the condition came true in time (the real-kernel
guest records that answer in its report and goes on). `wait_until_async` and `came_true_async`
are the two for a coroutine: they sleep with asyncio, so the loop's other work (an event
collector, a D-Bus client) goes on, and the condition may be a coroutine function. Never
`sleep` and hope. Only the standard library: the real-kernel guest imports this too.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, overload

T = TypeVar("T")

#: The default bound of a wait, in seconds: generous, since kernel events, the daemon's work
#: and a loaded test machine all come in between. A wait that is itself the point of a test
#: (something must happen soon) passes its own, tighter `timeout`.
WAIT_TIMEOUT = 30.0
#: How often the condition is evaluated, in seconds.
POLL_INTERVAL = 0.05


def _timed_out(timeout: float, what: str) -> AssertionError:
    return AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def _poll(condition: Callable[[], T | None], timeout: float, interval: float) -> T | None:
    """The first true value of `condition`, or None once `timeout` has passed."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            return None
        time.sleep(interval)


async def _poll_async(
    condition: Callable[[], Awaitable[T | None] | T | None], timeout: float, interval: float
) -> T | None:
    """`_poll` for a coroutine; `condition` may return an awaitable, which is awaited."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            return None
        await asyncio.sleep(interval)


def wait_until(
    condition: Callable[[], T | None],
    timeout: float = WAIT_TIMEOUT,
    what: str = "condition",
    *,
    interval: float = POLL_INTERVAL,
) -> T:
    """Call `condition` until it returns something true, and return that value.

    Raises AssertionError ("timed out after N s waiting for WHAT") once `timeout` seconds have
    passed; the condition is evaluated once more after the deadline, so a slow condition is
    never cut short. Exceptions from `condition` propagate at once.
    """
    value = _poll(condition, timeout, interval)
    if value is None:
        raise _timed_out(timeout, what)
    return value


def came_true(
    condition: Callable[[], object],
    timeout: float = WAIT_TIMEOUT,
    *,
    interval: float = POLL_INTERVAL,
) -> bool:
    """`wait_until` as a check: whether `condition` returned something true within `timeout`
    seconds (False, not an error, if it did not). Exceptions from `condition` propagate."""
    return _poll(condition, timeout, interval) is not None


@overload
async def wait_until_async(
    condition: Callable[[], Awaitable[T | None]],
    timeout: float = ...,
    what: str = ...,
    *,
    interval: float = ...,
) -> T: ...
@overload
async def wait_until_async(
    condition: Callable[[], T | None],
    timeout: float = ...,
    what: str = ...,
    *,
    interval: float = ...,
) -> T: ...
async def wait_until_async(
    condition: Callable[[], Awaitable[T | None] | T | None],
    timeout: float = WAIT_TIMEOUT,
    what: str = "condition",
    *,
    interval: float = POLL_INTERVAL,
) -> T:
    """`wait_until` in a coroutine: `condition` may be a plain or a coroutine function."""
    value = await _poll_async(condition, timeout, interval)
    if value is None:
        raise _timed_out(timeout, what)
    return value


async def came_true_async(
    condition: Callable[[], Awaitable[object] | object],
    timeout: float = WAIT_TIMEOUT,
    *,
    interval: float = POLL_INTERVAL,
) -> bool:
    """`came_true` in a coroutine: `condition` may be a plain or a coroutine function."""
    return await _poll_async(condition, timeout, interval) is not None
