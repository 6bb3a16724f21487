# SPDX-License-Identifier: LGPL-2.1-or-later
"""Session-wide isolation for the test suite.

The emulated kernel sends uevents on the udev netlink group, and tests mount FUSE filesystems.
Before anything else runs, the test process moves into its own network and mount namespaces
(as root; these machines and CI run as root): uevents then reach only the monitors of this run,
never a real udev listener on the host, and every mount vanishes with the process even if a
test is killed. Children (the emulated kernel, the daemon, mdevctl) inherit both namespaces.

Inside that mount namespace, the host's configuration directories a daemon under test could
write to (mdevctl's /etc/mdevctl.d, mdevd's /etc/mdevd) are covered by empty copies of
themselves: a test that forgets to point the daemon elsewhere then writes into a tmpfs that
vanishes with the run, never into the host's files.

A failing test's report shows what the daemons under test (mdevd, the emulated kernel) logged
while it ran, also when the daemon is shared by the whole module (tests/support/report_logs.py).
"""

from __future__ import annotations

import pytest

from tests.support.namespaces import enter_private_namespaces, shield_host_directory

pytest_plugins = ("tests.support.report_logs",)

#: Host directories a daemon with default settings writes to.
SHIELDED = ("/etc/mdevctl.d", "/etc/mdevd")


def pytest_configure(config: pytest.Config) -> None:
    enter_private_namespaces()
    for directory in SHIELDED:
        shield_host_directory(directory)
