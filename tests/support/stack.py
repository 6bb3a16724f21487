# SPDX-License-Identifier: LGPL-2.1-or-later
"""The stack a test runs the daemon on: a private bus, an emulated kernel, the real daemon.

    with running_stack() as stack:                      # bus, kernel, daemon, all stopped after
        stack.daemon.ctl("list")
        stack.sim.control.unregister("mtty")

`Stack` is what every such test holds. Test packages that need more around it extend it and
say what they add in the name: the daemon tests' `ClientStack` (tests/daemon/conftest.py) has a
connected test client, the compatibility tests' `CompatStack` (tests/compat/conftest.py) has
mdevctl's directories and its front end. Independent of pytest, like the rest of
tests/support.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.bus import PROJECT_POLICY, private_bus
from tests.support.daemon import DEFAULT_CONFIG, DaemonProcess, running_daemon
from tests.support.sim import RunningSim, running_sim


@dataclass
class Stack:
    """A daemon under test and what it runs on."""

    #: The private bus's address (the daemon's system bus).
    address: str
    #: The emulated kernel the daemon manages (`sim.root` plays /sys).
    sim: RunningSim
    daemon: DaemonProcess


@contextmanager
def running_stack(
    scenario: str | Path = "default",
    *,
    policy: bool = True,
    devices_dirs: Sequence[Path] | None = None,
    config_text: str = DEFAULT_CONFIG,
    program: Sequence[str] = ("-m", "mdevd"),
    extra_args: Sequence[str] = (),
) -> Iterator[Stack]:
    """Start a private bus, the emulated kernel of `scenario` and the daemon; stop all three
    when the block ends (the daemon first).

    `policy=True` runs the bus with the system bus's default-deny policy and the project's
    policy file, as on a real system; False allows everything. The other arguments are
    `tests.support.daemon.running_daemon`'s.
    """
    with ExitStack() as stack:
        address = stack.enter_context(private_bus([PROJECT_POLICY] if policy else None))
        sim = stack.enter_context(running_sim(scenario))
        daemon = stack.enter_context(
            running_daemon(
                address,
                sim.root,
                devices_dirs,
                config_text=config_text,
                program=program,
                extra_args=extra_args,
            )
        )
        yield Stack(address, sim, daemon)
