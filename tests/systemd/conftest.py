# SPDX-License-Identifier: LGPL-2.1-or-later
"""Fixtures for the service-manager tests: a private bus, the emulated mtty, a notify socket."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.bus import private_bus
from tests.support.sim import RunningSim, running_sim
from tests.systemd.notify import NotifySocket


@pytest.fixture
def bus() -> Iterator[str]:
    with private_bus() as address:
        yield address


@pytest.fixture
def sim() -> Iterator[RunningSim]:
    with running_sim("mtty") as emulated:
        yield emulated


@pytest.fixture
def notify() -> Iterator[NotifySocket]:
    with NotifySocket() as socket:
        yield socket


@pytest.fixture
def devices_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "devices.d"
    directory.mkdir()
    return directory
