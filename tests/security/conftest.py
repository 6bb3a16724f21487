# SPDX-License-Identifier: LGPL-2.1-or-later
"""The world of the security tests: the real daemon on the emulated kernel, on a private bus
that loads the project's bus policy, with callers running as three users, and a real polkitd
with the project's actions and the example rules whenever a test asks for one.

Users: root; `mdevd-tester`, a member of group `mdevd`, which the example rule grants the
configure action (and through `imply` the manage action); `nobody`, whom nothing grants
anything; `mdevd-owner` and `mdevd-other`, whom the example rule grants nothing either, but
whom `test_owner_checks` grants the manage action alone (an extra rules file), to own devices
and to be refused another's. The test accounts exist only inside the test process's mount
namespace.
"""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from dbus_fast import Variant

from tests.security.callers import ROOT_PYTHON, Caller, running_caller
from tests.support.bus import POLKIT_POLICY, PROJECT_POLICY, private_bus, unprivileged_python
from tests.support.daemon import DaemonProcess, running_daemon
from tests.support.polkit import (
    Account,
    Accounts,
    RunningPolkit,
    extra_accounts,
    running_polkitd,
)
from tests.support.sim import RunningSim, running_sim

GRANTED_USER = "mdevd-tester"
GRANTED_GROUP = "mdevd"
#: Users in no group of the example rule (tests/security/test_owner_checks.py grants them the
#: manage action alone).
OWNER_USER = "mdevd-owner"
OTHER_USER = "mdevd-other"

#: The parent and types the tests create devices with (config/sim/default.toml).
PARENT = "mtty"
TYPE = "mtty-1"
OTHER_TYPE = "mtty-2"


@dataclass(frozen=True)
class Targets:
    """Devices a denied call would change if it were allowed: each in the state in which the
    call it is the target of succeeds."""

    defined: str  # defined, inactive: Start, Update, Undefine
    running: str  # defined and active: Stop
    transient: str  # active, not defined: Define


@dataclass
class World:
    address: str
    sim: RunningSim
    daemon: DaemonProcess
    accounts: Accounts
    #: "root", "granted", "unprivileged", "owner", "other"
    callers: dict[str, Caller]
    targets: Targets

    @property
    def root(self) -> Caller:
        return self.callers["root"]


def new_uuid() -> str:
    return str(uuidlib.uuid4())


def _make_targets(root: Caller) -> Targets:
    defined, running, transient = new_uuid(), new_uuid(), new_uuid()
    for uuid, start in ((defined, False), (running, True)):
        reply = root.manager(
            "DefineDevice",
            "ssa{sv}",
            [PARENT, TYPE, {"uuid": Variant("s", uuid), "start": Variant("b", start)}],
        )
        assert reply.ok, reply
    reply = root.manager(
        "CreateDevice", "ssa{sv}", [PARENT, TYPE, {"uuid": Variant("s", transient)}]
    )
    assert reply.ok, reply
    return Targets(defined, running, transient)


@pytest.fixture(scope="session")
def world() -> Iterator[World]:
    with (
        extra_accounts(
            [
                Account(GRANTED_USER, groups=(GRANTED_GROUP,)),
                Account(OWNER_USER),
                Account(OTHER_USER),
            ]
        ) as accounts,
        private_bus([PROJECT_POLICY, POLKIT_POLICY]) as address,
        running_sim("default") as sim,
        running_daemon(address, sim.root) as daemon,
        unprivileged_python(user=GRANTED_USER, group=GRANTED_USER) as granted_python,
        unprivileged_python() as nobody_python,
        unprivileged_python(user=OWNER_USER, group=OWNER_USER) as owner_python,
        unprivileged_python(user=OTHER_USER, group=OTHER_USER) as other_python,
        running_caller("root", ROOT_PYTHON, address) as root,
        running_caller("granted", granted_python, address) as granted,
        running_caller("unprivileged", nobody_python, address) as unprivileged,
        running_caller("owner", owner_python, address) as owner,
        running_caller("other", other_python, address) as other,
    ):
        # polkitd is not running yet: root alone may act, which is all the setup needs.
        targets = _make_targets(root)
        yield World(
            address,
            sim,
            daemon,
            accounts,
            {
                "root": root,
                "granted": granted,
                "unprivileged": unprivileged,
                "owner": owner,
                "other": other,
            },
            targets,
        )


@pytest.fixture
def polkitd(world: World) -> Iterator[RunningPolkit]:
    """polkitd with the project's .policy and the example rules, for one test."""
    with running_polkitd(world.address) as polkit:
        yield polkit
