# SPDX-License-Identifier: LGPL-2.1-or-later
"""Fixtures of the event tests: a private bus, the emulated kernel, and a way to start the
real daemon (a subprocess) on both, with a recorder of its signals already listening."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.bus import private_bus
from tests.support.daemon import DaemonProcess, running_daemon
from tests.support.signals import EVENTS_FROM_ANY_SENDER, SignalRecorder
from tests.support.sim import RunningSim, running_sim
from tests.udev.support import SCENARIO, daemon_config


@dataclass
class Setup:
    """One test's world: the bus, the kernel, the definitions directory, the daemon."""

    address: str
    sim: RunningSim
    devices_dir: Path
    workdir: Path
    recorder: SignalRecorder
    daemon: DaemonProcess | None = None


@pytest.fixture
def bus_address() -> Iterator[str]:
    with private_bus() as address:
        yield address


@pytest.fixture
def sim() -> Iterator[RunningSim]:
    with running_sim(SCENARIO) as running:
        yield running


@pytest.fixture
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="mdevd-udev-", dir="/tmp") as name:
        path = Path(name)
        (path / "devices.d").mkdir()
        yield path


StartDaemon = Callable[..., DaemonProcess]


@pytest.fixture
def world(bus_address: str, sim: RunningSim, workdir: Path) -> Iterator[Setup]:
    """The bus, the kernel and a recorder; `start_daemon(world)` adds the daemon."""
    with SignalRecorder(bus_address, EVENTS_FROM_ANY_SENDER) as recorder:
        yield Setup(bus_address, sim, workdir / "devices.d", workdir, recorder)


@pytest.fixture
def start_daemon() -> Iterator[Callable[..., DaemonProcess]]:
    """`start_daemon(world, **daemon_config_keys)`: the real daemon, stopped after the test.
    `devices_dirs` replaces the one definitions directory (`world.devices_dir`)."""
    with ExitStack() as stack:

        def start(
            setup: Setup, *, devices_dirs: list[Path] | None = None, **config: Any
        ) -> DaemonProcess:
            config_file = daemon_config(setup.workdir, **config)
            daemon = stack.enter_context(
                running_daemon(
                    setup.address,
                    setup.sim.root,
                    devices_dirs or [setup.devices_dir],
                    extra_args=["--config", str(config_file)],
                )
            )
            setup.daemon = daemon
            return daemon

        yield start
