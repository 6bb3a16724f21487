# SPDX-License-Identifier: LGPL-2.1-or-later
"""Authorization: the method -> action table, default deny, and root-only decisions while
polkitd is not on the bus (these buses have none; tests/security runs a real polkitd)."""

from __future__ import annotations

import asyncio
import re
import textwrap

import pytest
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus
from dbus_fast.service import ServiceInterface

from mdevd.bus import auth, names
from mdevd.bus.caller import CallerTracker
from mdevd.bus.errors import dbus_errors
from mdevd.bus.signatures import DBusStr, dbus_method
from mdevd.errors import NotAuthorized
from tests.support.paths import REPO

pytestmark = pytest.mark.timeout(60)

#: The contract, in the shared notes beside the repository.
#: The project's copy of the contract (the shared notes' text, with its additions).
CONTRACT = REPO / "docs" / "dbus-api.md"
MANAGE = {"CreateDevice", "Start", "Stop", "QueryAttributes"}
CONFIGURE = {"DefineDevice", "Define", "Undefine", "Update", "Reload"}
USE = {"Open"}
READS = {"GetDevice", "ListDevices", "ListDeviceSummaries"}


def test_table_matches_the_contract() -> None:
    assert {m for m, a in auth.METHOD_ACTIONS.items() if a == names.ACTION_MANAGE_DEVICES} == MANAGE
    assert {
        m for m, a in auth.METHOD_ACTIONS.items() if a == names.ACTION_CONFIGURE_DEVICES
    } == CONFIGURE
    assert {m for m, a in auth.METHOD_ACTIONS.items() if a == names.ACTION_USE_DEVICE} == USE
    assert {m for m, a in auth.METHOD_ACTIONS.items() if a == auth.NO_CHECK} == READS
    assert set(auth.METHOD_ACTIONS) == MANAGE | CONFIGURE | USE | READS


def test_contract_polkit_table_is_the_same() -> None:
    text = CONTRACT.read_text()
    for action, methods in (
        (names.ACTION_MANAGE_DEVICES, MANAGE),
        (names.ACTION_CONFIGURE_DEVICES, CONFIGURE),
        (names.ACTION_USE_DEVICE, USE),
    ):
        row = next(line for line in text.splitlines() if line.startswith(f"| `{action}`"))
        assert set(re.findall(r"[A-Z][A-Za-z]+", row.split("|")[2])) == methods


@pytest.mark.parametrize("method", ["Frobnicate", "", "start", "GetManagedObjects"])
def test_methods_missing_from_the_table_are_denied(method: str) -> None:
    with pytest.raises(NotAuthorized, match="no authorization rule"):
        auth.required_action(method)


# Holds a connection as nobody: prints its unique name, then waits for stdin to close.
_NOBODY_CONNECTION = textwrap.dedent(
    """
    import asyncio, sys
    from dbus_fast.aio import MessageBus

    async def main(address):
        bus = await MessageBus(bus_address=address).connect()
        print(bus.unique_name, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

    asyncio.run(main(sys.argv[1]))
    """
)


async def _decisions(address: str, nobody_python: list[str]) -> dict[tuple[str, str], str]:
    """method, who -> "allowed" or the NotAuthorized message, for root, nobody and a ghost."""
    bus = await MessageBus(bus_address=address).connect()
    nobody = await asyncio.create_subprocess_exec(
        *nobody_python,
        "-c",
        _NOBODY_CONNECTION,
        address,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd="/",
    )
    try:
        assert nobody.stdout is not None
        nobody_name = (await nobody.stdout.readline()).decode().strip()
        authorizer = auth.Authorizer(bus)
        senders = {"root": bus.unique_name or "", "nobody": nobody_name, "ghost": ":1.9999"}
        decisions: dict[tuple[str, str], str] = {}
        for method in auth.METHOD_ACTIONS:
            for who, sender in senders.items():
                for interactive in (False, True):
                    try:
                        await authorizer.authorize(method, sender, interactive)
                        decision = "allowed"
                    except NotAuthorized as error:
                        decision = error.message
                    key = (method, who)
                    # Without polkitd nobody can ask for a password: the flag changes nothing.
                    assert decisions.setdefault(key, decision) == decision
        return decisions
    finally:
        assert nobody.stdin is not None
        nobody.stdin.close()
        await nobody.wait()
        bus.disconnect()


def test_root_only_without_polkit(bus_address: str, nobody_python: list[str]) -> None:
    decisions = asyncio.run(_decisions(bus_address, nobody_python))
    for method in MANAGE | CONFIGURE | USE:
        assert decisions[method, "root"] == "allowed"
        assert re.fullmatch(
            rf"{method}: caller :1\.\d+ \(uid 65534\) is not allowed to "
            r"org\.mdevd\.mdevd1\.(manage-devices|configure-devices|use-device): "
            r"polkit is not running, so only root is",
            decisions[method, "nobody"],
        )
        # A caller that cannot be identified is denied, never allowed.
        assert decisions[method, "ghost"].startswith(f"{method}: cannot identify caller :1.9999")
    for who in ("root", "nobody", "ghost"):
        assert decisions["GetDevice", who] == "allowed"


class Guarded(ServiceInterface):
    """The shape of the daemon's handlers: authorize the current caller, then act."""

    def __init__(self, authorizer: auth.Authorizer) -> None:
        super().__init__("org.mdevd.Test.Guarded")
        self.authorizer = authorizer

    @dbus_method(name="Start")
    @dbus_errors
    async def start(self) -> DBusStr:
        await self.authorizer.authorize_caller("Start", False)
        return "started"


# Calls Start as nobody; prints the error name or the reply.
_NOBODY_START = textwrap.dedent(
    """
    import asyncio, sys
    from dbus_fast import Message
    from dbus_fast.aio import MessageBus

    async def main(address, service):
        bus = await MessageBus(bus_address=address).connect()
        reply = await bus.call(Message(destination=service, path="/guarded",
                               interface="org.mdevd.Test.Guarded", member="Start"))
        print(reply.error_name or reply.body[0])

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


async def _start_as_root_and_nobody(address: str, nobody_python: list[str]) -> tuple[str, str]:
    service = await MessageBus(bus_address=address).connect()
    callers = CallerTracker(service)
    callers.install()
    service.export("/guarded", Guarded(auth.Authorizer(service, callers)))
    client = await MessageBus(bus_address=address).connect()
    try:
        reply = await client.call(
            Message(
                destination=service.unique_name,
                path="/guarded",
                interface="org.mdevd.Test.Guarded",
                member="Start",
            )
        )
        assert reply.message_type is MessageType.METHOD_RETURN
        nobody = await asyncio.create_subprocess_exec(
            *nobody_python,
            "-c",
            _NOBODY_START,
            address,
            service.unique_name or "",
            stdout=asyncio.subprocess.PIPE,
            cwd="/",
        )
        output, _ = await nobody.communicate()
        return reply.body[0], output.decode().strip()
    finally:
        client.disconnect()
        service.disconnect()


def test_authorize_caller_over_the_bus(bus_address: str, nobody_python: list[str]) -> None:
    root, nobody = asyncio.run(_start_as_root_and_nobody(bus_address, nobody_python))
    assert root == "started"
    assert nobody == "org.mdevd.Mdevd1.Error.NotAuthorized"
