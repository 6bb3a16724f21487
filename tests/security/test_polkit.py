# SPDX-License-Identifier: LGPL-2.1-or-later
"""polkit as the contract uses it, against a real polkitd: the actions as polkitd reads them,
interactive authentication only when asked, the NotAuthorized* names, the example rule and
the imply annotation, and the failures that deny (a timeout, a missing .policy file).

Interactive authentication is answered by `AuthenticationAgent`, registered with polkitd for
the calling process: it plays the person at the dialog, dismissing it or authenticating.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest
from dbus_fast import Message, Variant
from dbus_fast.aio import MessageBus

from mdevd.bus import auth, names
from mdevd.bus.polkit import PolkitAuthority
from mdevd.errors import MdevdError, NotAuthorized
from tests.security.callers import Caller, Reply
from tests.security.conftest import OTHER_TYPE, PARENT, TYPE, World, new_uuid
from tests.support.polkit import (
    EXAMPLE_RULES,
    AgentAnswer,
    AuthenticationAgent,
    RunningPolkit,
    running_polkitd,
    tty_agent,
)

pytestmark = pytest.mark.timeout(120)

T = TypeVar("T")

INTERACTIVE = {"auth.interactive": Variant("b", True)}


def _create(caller: Caller, uuid: str, options: dict[str, Variant] | None = None) -> Reply:
    return caller.manager(
        "CreateDevice", "ssa{sv}", [PARENT, TYPE, {"uuid": Variant("s", uuid), **(options or {})}]
    )


def _define(caller: Caller, uuid: str, options: dict[str, Variant] | None = None) -> Reply:
    return caller.manager(
        "DefineDevice",
        "ssa{sv}",
        [PARENT, OTHER_TYPE, {"uuid": Variant("s", uuid), **(options or {})}],
    )


def _sysfs_devices(world: World) -> set[str]:
    return {p.name for p in (world.sim.root / "bus/mdev/devices").iterdir()}


def _remove(world: World, uuid: str) -> None:
    """Undo a successful create or define (as root, who is always allowed)."""
    state = world.root.call(
        f"{names.DEVICES_PATH}/{uuid.replace('-', '_')}",
        names.PROPERTIES_INTERFACE,
        "GetAll",
        "s",
        [names.DEVICE_INTERFACE],
    )
    if not state.ok:
        return
    properties = {key: value.value for key, value in state.body[0].items()}
    if properties["Defined"]:
        assert world.root.device(uuid, "Undefine", "a{sv}", [{}]).ok
    if properties["Active"]:
        assert world.root.device(uuid, "Stop", "a{sv}", [{}]).ok


async def _in_thread(function: Callable[[], T]) -> T:
    """Run a blocking caller request while this loop keeps serving the agent."""
    return await asyncio.get_running_loop().run_in_executor(None, function)


async def _until(condition: Callable[[], object], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def _with_agent(
    world: World, caller: Caller, answer: AgentAnswer, body: Callable[[AuthenticationAgent], Any]
) -> Any:
    async def main() -> Any:
        async with AuthenticationAgent.registered(world.address, caller.pid, answer) as agent:
            return await body(agent)

    return asyncio.run(main())


# ---- the .policy file, as polkitd reads it ------------------------------------------------


def _pkaction(address: str, action: str) -> dict[str, str]:
    result = subprocess.run(
        ["pkaction", "--verbose", "--action-id", action],
        env=dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=address),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    fields = {}
    for line in result.stdout.splitlines()[1:]:
        key, _, value = line.strip().partition(":")
        fields[key] = value.strip()
    return fields


def test_actions_as_polkitd_reads_them(world: World, polkitd: RunningPolkit) -> None:
    """The contract's table: defaults any/inactive/active, and configure implies manage and
    use."""
    manage = _pkaction(world.address, names.ACTION_MANAGE_DEVICES)
    configure = _pkaction(world.address, names.ACTION_CONFIGURE_DEVICES)
    assert (manage["implicit any"], manage["implicit inactive"], manage["implicit active"]) == (
        "auth_admin",
        "auth_admin",
        "auth_admin_keep",
    )
    assert (
        configure["implicit any"],
        configure["implicit inactive"],
        configure["implicit active"],
    ) == ("auth_admin", "auth_admin", "auth_admin")
    assert configure["annotation"] == (
        f"org.freedesktop.policykit.imply -> {names.ACTION_MANAGE_DEVICES}"
        f" {names.ACTION_USE_DEVICE}"
    )
    use = _pkaction(world.address, names.ACTION_USE_DEVICE)
    assert (use["implicit any"], use["implicit inactive"], use["implicit active"]) == (
        "auth_admin",
        "auth_admin",
        "auth_admin",
    )
    assert "annotation" not in manage
    assert "annotation" not in use
    for fields in (manage, configure, use):
        assert fields["message"].startswith("Authentication is required to ")
        assert fields["description"]
    # Every action the table names exists in the file polkitd loaded.
    assert {a for a in auth.METHOD_ACTIONS.values() if a != auth.NO_CHECK} == {
        names.ACTION_MANAGE_DEVICES,
        names.ACTION_CONFIGURE_DEVICES,
        names.ACTION_USE_DEVICE,
    }


# ---- interactive authentication ------------------------------------------------------------


def test_features_announce_interactive_authentication(world: World) -> None:
    reply = world.root.call(
        names.MANAGER_PATH,
        names.PROPERTIES_INTERFACE,
        "Get",
        "ss",
        [names.MANAGER_INTERFACE, "Features"],
    )
    assert reply.ok
    assert "auth.interactive" in reply.body[0].value


def test_dialog_only_when_the_caller_asks(world: World, polkitd: RunningPolkit) -> None:
    caller = world.callers["unprivileged"]
    before = _sysfs_devices(world)

    async def body(agent: AuthenticationAgent) -> dict[str, object]:
        quiet = await _in_thread(lambda: _create(caller, new_uuid()))
        asked_quietly = list(agent.requests)
        create = await _in_thread(lambda: _create(caller, new_uuid(), INTERACTIVE))
        define = await _in_thread(lambda: _define(caller, new_uuid(), INTERACTIVE))
        return {
            "quiet": quiet,
            "asked quietly": asked_quietly,
            "create": create,
            "define": define,
            "actions asked": [request.action_id for request in agent.requests],
        }

    result = _with_agent(world, caller, "dismiss", body)
    quiet = result["quiet"]
    assert quiet.outcome == "NotAuthorizedCanObtain"
    assert "retry with auth.interactive=true" in quiet.message
    assert result["asked quietly"] == []
    assert result["create"].outcome == "NotAuthorizedDismissed"
    assert result["define"].outcome == "NotAuthorizedDismissed"
    assert result["actions asked"] == [names.ACTION_MANAGE_DEVICES, names.ACTION_CONFIGURE_DEVICES]
    assert _sysfs_devices(world) == before


def test_authenticating_in_the_dialog_allows(world: World, polkitd: RunningPolkit) -> None:
    caller = world.callers["unprivileged"]
    uuid = new_uuid()

    async def body(agent: AuthenticationAgent) -> Reply:
        return await _in_thread(lambda: _create(caller, uuid, INTERACTIVE))

    try:
        reply = _with_agent(world, caller, "authenticate", body)
        assert reply.ok, reply
        assert uuid in _sysfs_devices(world)
    finally:
        _remove(world, uuid)


@pytest.mark.parametrize(
    ("answer", "pam_auth", "expected"),
    [("authenticate", "pam_permit.so", "ok"), ("fail", "pam_deny.so", "NotAuthorized")],
)
def test_the_test_agent_answers_like_pkttyagent(
    world: World, polkitd: RunningPolkit, answer: AgentAnswer, pam_auth: str, expected: str
) -> None:
    """The test agent stands in for a person at a dialog; polkit's own text agent, with PAM
    accepting or refusing the password, gives the daemon the same answers."""
    caller = world.callers["unprivileged"]
    made: list[str] = []

    def create() -> Reply:
        made.append(new_uuid())
        return _create(caller, made[-1], INTERACTIVE)

    async def body(agent: AuthenticationAgent) -> Reply:
        return await _in_thread(create)

    try:
        with_test_agent = _with_agent(world, caller, answer, body)
        with tty_agent(world.address, caller.pid, pam_auth):
            with_pkttyagent = create()
        assert (with_test_agent.outcome, with_pkttyagent.outcome) == (expected, expected)
    finally:
        for uuid in made:
            _remove(world, uuid)


def test_interactive_without_an_agent(world: World, polkitd: RunningPolkit) -> None:
    reply = _create(world.callers["unprivileged"], new_uuid(), INTERACTIVE)
    assert reply.outcome == "NotAuthorizedCanObtain"
    assert "no authentication agent" in reply.message


def test_the_daemon_serves_others_while_a_dialog_is_open(
    world: World, polkitd: RunningPolkit
) -> None:
    """The loop never waits on polkitd: reads and other callers go on during a long check."""
    caller = world.callers["unprivileged"]
    uuid = new_uuid()

    async def body(agent: AuthenticationAgent) -> tuple[Reply, Reply, Reply]:
        pending = asyncio.ensure_future(_in_thread(lambda: _create(caller, uuid, INTERACTIVE)))
        await _until(lambda: agent.requests)
        read = await _in_thread(
            lambda: world.callers["granted"].call(
                names.ROOT_PATH, names.OBJECT_MANAGER_INTERFACE, "GetManagedObjects"
            )
        )
        other = await _in_thread(lambda: _define(world.callers["granted"], new_uuid()))
        assert not pending.done()
        agent.release("authenticate")
        return read, other, await pending

    other_uuid = ""
    try:
        read, other, created = _with_agent(world, caller, "hold", body)
        assert read.ok and other.ok and created.ok, (read, other, created)
        other_uuid = other.body[0].rsplit("/", 1)[1].replace("_", "-")
    finally:
        _remove(world, uuid)
        if other_uuid:
            _remove(world, other_uuid)


# ---- rules and imply -----------------------------------------------------------------------


def test_the_example_rule_is_what_grants_the_group(world: World) -> None:
    granted = world.callers["granted"]
    with running_polkitd(world.address, rules=()):
        outcomes = {
            "create": _create(granted, new_uuid()).outcome,
            "define": _define(granted, new_uuid()).outcome,
        }
    assert outcomes == {"create": "NotAuthorizedCanObtain", "define": "NotAuthorizedCanObtain"}


@pytest.fixture
def manage_only_rules(tmp_path: Path) -> Iterator[Path]:
    text = EXAMPLE_RULES.read_text().replace(
        f'"{names.ACTION_CONFIGURE_DEVICES}"', f'"{names.ACTION_MANAGE_DEVICES}"'
    )
    assert names.ACTION_MANAGE_DEVICES in text
    path = tmp_path / "50-mdevd.rules"
    path.write_text(text)
    yield path


def test_manage_does_not_imply_configure(world: World, manage_only_rules: Path) -> None:
    granted = world.callers["granted"]
    uuid = new_uuid()
    try:
        with running_polkitd(world.address, rules=[manage_only_rules]):
            create = _create(granted, uuid)
            define = _define(granted, new_uuid())
        assert create.ok, create
        assert define.outcome == "NotAuthorizedCanObtain"
    finally:
        _remove(world, uuid)


# ---- failures deny -------------------------------------------------------------------------


def test_without_the_policy_file_even_root_is_denied(world: World) -> None:
    """polkitd that does not know the actions is a broken installation: deny, never fall back."""
    before = _sysfs_devices(world)
    with running_polkitd(world.address, actions=()):
        reply = _create(world.root, new_uuid())
    assert reply.outcome == "NotAuthorized"
    assert "is not registered" in reply.message
    assert _sysfs_devices(world) == before


async def _authorize(
    world: World, authority: Callable[[MessageBus], PolkitAuthority], sender: str, interactive: bool
) -> tuple[str, int]:
    """Authorize `sender` for CreateDevice; the denial message, and how many bus round trips
    this same loop completed while the decision was pending."""
    bus = await MessageBus(bus_address=world.address).connect()
    try:
        authorizer = auth.Authorizer(bus, authority=authority(bus))
        decision = asyncio.ensure_future(authorizer.authorize("CreateDevice", sender, interactive))
        round_trips = 0
        while not decision.done():
            await bus.call(
                Message(
                    destination=names.DBUS_BUS_NAME,
                    path=names.DBUS_PATH,
                    interface=names.DBUS_INTERFACE,
                    member="GetId",
                )
            )
            round_trips += 1
            await asyncio.sleep(0.01)
        try:
            decision.result()
        except MdevdError as denial:
            assert isinstance(denial, NotAuthorized)
            return denial.message, round_trips
        return "allowed", round_trips
    finally:
        bus.disconnect()


def test_a_polkitd_that_does_not_answer_denies(world: World, polkitd: RunningPolkit) -> None:
    sender = world.callers["granted"].unique_name
    polkitd.pause()
    try:
        message, round_trips = asyncio.run(
            _authorize(world, lambda bus: PolkitAuthority(bus, timeout=0.5), sender, False)
        )
    finally:
        polkitd.resume()
    assert re.fullmatch(
        rf"CreateDevice: caller {re.escape(sender)} is not allowed to "
        rf"{names.ACTION_MANAGE_DEVICES}: polkit did not decide on "
        rf"{names.ACTION_MANAGE_DEVICES} for {re.escape(sender)} within 0.5 s",
        message,
    )
    assert round_trips > 1
    # Once polkitd answers again, the same user is allowed (the rule grants the group).
    allowed, _ = asyncio.run(_authorize(world, PolkitAuthority, sender, False))
    assert allowed == "allowed"


def test_a_dialog_nobody_answers_times_out_and_is_closed(
    world: World, polkitd: RunningPolkit
) -> None:
    caller = world.callers["unprivileged"]

    async def body(agent: AuthenticationAgent) -> tuple[str, list[str]]:
        message, _ = await _authorize(
            world,
            lambda bus: PolkitAuthority(bus, interactive_timeout=1.0),
            caller.unique_name,
            True,
        )
        # The timeout cancels the check in polkitd, which tells the agent to close the dialog.
        await _until(lambda: agent.cancelled)
        return message, [request.cookie for request in agent.requests]

    message, cookies = _with_agent(world, caller, "hold", body)
    assert "polkit did not decide" in message and "within 1 s" in message
    assert len(cookies) == 1


def test_authorization_comes_before_the_parent_lock(world: World, polkitd: RunningPolkit) -> None:
    """Rule 7: a denied call is answered at once even while another call holds its parent."""
    slow, queued = new_uuid(), new_uuid()
    world.sim.control.delay("create", 2)
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            holding = pool.submit(_create, world.root, slow)
            # Let root's create reach the kernel (it holds mtty's lock while the write sleeps).
            time.sleep(0.5)
            waiting = pool.submit(_create, world.callers["granted"], queued)
            denied = _create(world.callers["unprivileged"], new_uuid())
            # Both allowed creates are still in progress: the denial did not wait for the lock.
            in_progress = (holding.done(), waiting.done())
            results = (holding.result(), waiting.result())
        assert denied.outcome == "NotAuthorizedCanObtain"
        assert in_progress == (False, False)
        assert all(result.ok for result in results), results
    finally:
        world.sim.control.delay("create", 0)
        _remove(world, slow)
        _remove(world, queued)
