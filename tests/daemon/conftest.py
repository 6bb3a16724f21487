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
from tests.support.bus import PROJECT_POLICY, private_bus, unprivileged_python
from tests.support.daemon import DaemonProcess, running_daemon
from tests.support.sim import RunningSim, running_sim

SCENARIO = Path(__file__).with_name("scenario.toml")
DEFAULT_CONFIG = "# defaults; the command line sets the directories\n"


@dataclass
class Stack:
    address: str
    sim: RunningSim
    daemon: DaemonProcess
    client: BusClient


@contextmanager
def daemon_stack(
    *,
    scenario: Path = SCENARIO,
    devices_dirs: Sequence[Path] | None = None,
    config_text: str | None = None,
    program: Sequence[str] = ("-m", "mdevd"),
    policy: bool = True,
) -> Iterator[Stack]:
    with ExitStack() as stack:
        address = stack.enter_context(private_bus([PROJECT_POLICY] if policy else None))
        sim = stack.enter_context(running_sim(scenario))
        daemon = stack.enter_context(
            running_daemon(
                address,
                sim.root,
                devices_dirs,
                program=program,
                config_text=DEFAULT_CONFIG if config_text is None else config_text,
            )
        )
        client = stack.enter_context(bus_client(address))
        yield Stack(address, sim, daemon, client)


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with daemon_stack() as running:
        yield running


@pytest.fixture
def sim(stack: Stack) -> Iterator[RunningSim]:
    """The module's emulated kernel; faults and delays a test set are cleared after it."""
    yield stack.sim
    stack.sim.control.clear()


@pytest.fixture
def client(stack: Stack, sim: RunningSim) -> BusClient:
    return stack.client


@pytest.fixture
def daemon(stack: Stack) -> DaemonProcess:
    return stack.daemon


@pytest.fixture(scope="session")
def nobody_python() -> Iterator[list[str]]:
    with unprivileged_python() as argv:
        yield argv


@pytest.fixture(scope="module")
def nobody(stack: Stack, nobody_python: list[str]) -> Iterator[UnprivilegedCaller]:
    """A connected D-Bus caller running as nobody/nogroup."""
    with unprivileged_caller(nobody_python, stack.address) as caller:
        yield caller
