# SPDX-License-Identifier: LGPL-2.1-or-later
"""Fixtures of the daemon tests: the real daemon on a private bus and the emulated kernel.

Most modules share one stack (bus, emulated kernel, daemon, a test client) per module: tests use
their own UUIDs and parents whose room they do not exhaust, and the emulator's faults and delays
are cleared after each test. The bus runs the system bus's default-deny policy plus the
project's own policy file, as on a real system.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.daemon.harness import BusClient, bus_client
from tests.daemon.nobody import UnprivilegedCaller, unprivileged_caller
from tests.support.bus import unprivileged_python
from tests.support.daemon import DEFAULT_CONFIG, DaemonProcess
from tests.support.sim import RunningSim
from tests.support.stack import Stack, running_stack

SCENARIO = Path(__file__).with_name("scenario.toml")


@dataclass
class ClientStack(Stack):
    """The daemon tests' stack: a `tests.support.stack.Stack` and a test client connected to
    its bus, recording the daemon's signals from the start."""

    client: BusClient


@contextmanager
def daemon_stack(
    *,
    scenario: Path = SCENARIO,
    devices_dirs: Sequence[Path] | None = None,
    config_text: str = DEFAULT_CONFIG,
    program: Sequence[str] = ("-m", "mdevd"),
    policy: bool = True,
) -> Iterator[ClientStack]:
    with ExitStack() as stack:
        running = stack.enter_context(
            running_stack(
                scenario,
                policy=policy,
                devices_dirs=devices_dirs,
                config_text=config_text,
                program=program,
            )
        )
        client = stack.enter_context(bus_client(running.address))
        yield ClientStack(running.address, running.sim, running.daemon, client)


@pytest.fixture(scope="module")
def stack() -> Iterator[ClientStack]:
    with daemon_stack() as running:
        yield running


@pytest.fixture
def sim(stack: ClientStack) -> Iterator[RunningSim]:
    """The module's emulated kernel; faults and delays a test set are cleared after it."""
    yield stack.sim
    stack.sim.control.clear()


@pytest.fixture
def client(stack: ClientStack, sim: RunningSim) -> BusClient:
    return stack.client


@pytest.fixture
def daemon(stack: ClientStack) -> DaemonProcess:
    return stack.daemon


@pytest.fixture(scope="session")
def nobody_python() -> Iterator[list[str]]:
    with unprivileged_python() as argv:
        yield argv


@pytest.fixture(scope="module")
def nobody(stack: ClientStack, nobody_python: list[str]) -> Iterator[UnprivilegedCaller]:
    """A connected D-Bus caller running as nobody/nogroup."""
    with unprivileged_caller(nobody_python, stack.address) as caller:
        yield caller
