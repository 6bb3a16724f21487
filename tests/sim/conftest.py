# SPDX-License-Identifier: LGPL-2.1-or-later
"""Fixtures for the emulated kernel's own tests: a mounted emulation, a udev monitor, helpers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack
from typing import Any

import pytest
import pyudev

from tests.support.sim import RunningSim, running_sim

SimFactory = Callable[..., RunningSim]


@pytest.fixture
def start_sim() -> Iterator[SimFactory]:
    """Start emulations with `running_sim`'s arguments; all of them stop after the test."""
    with ExitStack() as stack:

        def start(*args: Any, **kwargs: Any) -> RunningSim:
            manager: AbstractContextManager[RunningSim] = running_sim(*args, **kwargs)
            return stack.enter_context(manager)

        yield start


@pytest.fixture
def sim(start_sim: SimFactory) -> RunningSim:
    """The default scenario: mtty, mdpy, mbochs, an NVIDIA-like GPU and the vfio-ap matrix."""
    return start_sim("default")


@pytest.fixture
def monitor() -> pyudev.Monitor:
    """A monitor on udev's netlink group, the production path of the daemon."""
    udev_monitor = pyudev.Monitor.from_netlink(pyudev.Context(), source="udev")
    udev_monitor.start()
    return udev_monitor
