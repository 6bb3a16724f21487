# SPDX-License-Identifier: LGPL-2.1-or-later
"""Waiting for something the daemon or the emulated kernel does asynchronously.

    device = wait_until(lambda: objects().get(uuid), what=f"{uuid}'s object")
    wait_until(lambda: in_sysfs(sim, uuid), timeout=60, what="the kernel's device")

The one way every test waits: poll a condition until it returns something true, and fail the
test (AssertionError, naming `what`) if `timeout` passes first. Never `sleep` and hope.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

#: The default bound of a wait, in seconds: generous, since kernel events, the daemon's work
#: and a loaded test machine all come in between. A wait that is itself the point of a test
#: (something must happen soon) passes its own, tighter `timeout`.
WAIT_TIMEOUT = 30.0
#: How often the condition is evaluated, in seconds.
POLL_INTERVAL = 0.05


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
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
