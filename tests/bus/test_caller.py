# SPDX-License-Identifier: LGPL-2.1-or-later
"""Each method call sees its own caller, with many calls from root and nobody in flight."""

from __future__ import annotations

import asyncio
import json
import os
import random
import textwrap
from typing import Annotated

import pytest
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus
from dbus_fast.service import ServiceInterface

from mdevd.bus import caller
from mdevd.bus.signatures import DBusSignature, DBusStr, dbus_method
from mdevd.errors import Failed

pytestmark = pytest.mark.timeout(60)

INTERFACE = "org.mdevd.Test.Caller"
NAME = "org.mdevd.Test"
#: Calls in flight per connection: under dbus-daemon's max_replies_per_connection (128).
IN_FLIGHT = 100
ROOT_CONNECTIONS = 4
NOBODY_PROCESSES = 2
NOBODY_UID = 65534


class WhoAmI(ServiceInterface):
    def __init__(self, bus: MessageBus) -> None:
        super().__init__(INTERFACE)
        self.bus = bus

    @dbus_method(name="Async")
    async def async_method(self) -> Annotated[list[object], DBusSignature("su")]:
        sender = caller.current_sender()
        # Let other calls run (and overwrite the handler's context) before looking again.
        await asyncio.sleep(random.uniform(0, 0.02))  # noqa: S311
        uid = await caller.sender_uid(self.bus, sender)
        await asyncio.sleep(random.uniform(0, 0.02))  # noqa: S311
        if caller.current_sender() != sender:
            raise RuntimeError("the caller changed during the call")
        return [sender, uid]

    @dbus_method(name="Sync")
    def sync_method(self) -> DBusStr:
        return caller.current_sender()


def _call(member: str) -> Message:
    return Message(destination=NAME, path="/test", interface=INTERFACE, member=member)


async def _root_client(address: str) -> list[str]:
    """Misattributions seen by one root connection making IN_FLIGHT concurrent calls."""
    bus = await MessageBus(bus_address=address).connect()
    try:
        replies = await asyncio.gather(
            *(bus.call(_call("Async" if i % 2 else "Sync")) for i in range(IN_FLIGHT))
        )
    finally:
        bus.disconnect()
    wrong = []
    for reply in replies:
        if reply.message_type is MessageType.ERROR:
            wrong.append(f"{reply.error_name}: {reply.body}")
        elif reply.body not in ([bus.unique_name, 0], [bus.unique_name]):
            wrong.append(f"root {bus.unique_name} seen as {reply.body}")
    return wrong


# Runs as nobody: prints what its calls saw that was not itself.
_NOBODY_CLIENT = textwrap.dedent(
    """
    import asyncio, json, os, sys
    from dbus_fast import Message, MessageType
    from dbus_fast.aio import MessageBus

    async def main(address, count):
        bus = await MessageBus(bus_address=address).connect()
        def call(member):
            return Message(destination=%(name)r, path="/test", interface=%(interface)r,
                           member=member)
        replies = await asyncio.gather(
            *(bus.call(call("Async" if i %% 2 else "Sync")) for i in range(count)))
        me, uid = bus.unique_name, os.getuid()
        wrong = []
        for reply in replies:
            if reply.message_type is MessageType.ERROR:
                wrong.append(f"{reply.error_name}: {reply.body}")
            elif reply.body not in ([me, uid], [me]):
                wrong.append(f"nobody {me} seen as {reply.body}")
        print(json.dumps({"uid": uid, "calls": len(replies), "wrong": wrong}))

    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
    """
) % {"name": NAME, "interface": INTERFACE}


async def _nobody_client(nobody_python: list[str], address: str) -> dict[str, object]:
    process = await asyncio.create_subprocess_exec(
        *nobody_python,
        "-c",
        _NOBODY_CLIENT,
        address,
        str(IN_FLIGHT),
        stdout=asyncio.subprocess.PIPE,
        cwd="/",
    )
    output, _ = await process.communicate()
    assert process.returncode == 0
    result: dict[str, object] = json.loads(output)
    return result


async def _serve_and_call(address: str, nobody_python: list[str]) -> None:
    service = await MessageBus(bus_address=address).connect()
    caller.track_calls(service)
    service.export("/test", WhoAmI(service))
    await service.request_name(NAME)
    try:
        root_results, nobody_results = await asyncio.gather(
            asyncio.gather(*(_root_client(address) for _ in range(ROOT_CONNECTIONS))),
            asyncio.gather(
                *(_nobody_client(nobody_python, address) for _ in range(NOBODY_PROCESSES))
            ),
        )
    finally:
        service.disconnect()
    assert [wrong for result in root_results for wrong in result] == []
    for result in nobody_results:
        assert result == {"uid": NOBODY_UID, "calls": IN_FLIGHT, "wrong": []}


def test_each_call_sees_its_own_caller(bus_address: str, nobody_python: list[str]) -> None:
    assert os.getuid() == 0
    asyncio.run(_serve_and_call(bus_address, nobody_python))


def test_outside_a_method_call_there_is_no_caller() -> None:
    with pytest.raises(RuntimeError):
        caller.current_call()


async def _uid_of_unknown_name(address: str) -> None:
    bus = await MessageBus(bus_address=address).connect()
    try:
        with pytest.raises(Failed, match=r"cannot identify caller :1\.9999: .*NameHasNoOwner"):
            await caller.sender_uid(bus, ":1.9999")
        assert await caller.sender_uid(bus, bus.unique_name or "") == 0
    finally:
        bus.disconnect()


def test_uid_of_a_name_that_is_gone_is_failed(bus_address: str) -> None:
    asyncio.run(_uid_of_unknown_name(bus_address))
