# SPDX-License-Identifier: LGPL-2.1-or-later
"""Fixtures of the D-Bus tests: a private bus, and a Python that runs as `nobody`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.bus import private_bus, unprivileged_python


@pytest.fixture
def bus_address() -> Iterator[str]:
    """A private system-type bus that allows everything."""
    with private_bus() as address:
        yield address


@pytest.fixture(scope="session")
def nobody_python() -> Iterator[list[str]]:
    """argv prefix of a Python interpreter running as nobody/nogroup, with dbus-fast."""
    with unprivileged_python() as argv:
        yield argv
