# SPDX-License-Identifier: LGPL-2.1-or-later
"""A read flood at 10,000 definitions does not stall the daemon for anyone else.

Before mdevd answered GetManagedObjects itself, one call at 10,000 definitions held the event
loop for ~7.6 s, and every call behind it waited for all the flood's replies. Here four other
connections send 32 GetManagedObjects at once; then the test's own Ping, GetDevice and a
CreateDevice must be answered while the flood is still being served. "Promptly" is an order,
not a time: a reply's serial number is the order in which the daemon sent it (one counter per
connection), so the test counts the flood's replies the daemon sent before each of its own.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future

import pytest
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from mdevd.bus import names
from mdevd.bus.reads import MAX_IN_FLIGHT, PER_CALLER_WAITING
from tests.daemon.conftest import SCENARIO, ClientStack, daemon_stack
from tests.daemon.harness import CALL_TIMEOUT, BusClient, new_uuid, options
from tests.support.paths import REPO

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

DEFINITIONS = 10_000
CONNECTIONS = 4
CALLS = 8
TARGETS = (
    ("mtty", "mtty-1"),
    ("par-a", "par-a-1"),
    ("par-b", "par-b-1"),
    ("0000:66:00.0", "nvidia-556"),
)


def _uuid(index: int) -> str:
    return f"f100d000-0000-4000-8000-{index:012x}"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClientStack]:
    directory = tmp_path_factory.mktemp("devices.d")
    for index in range(DEFINITIONS):
        parent, type_id = TARGETS[index % len(TARGETS)]
        (directory / f"{_uuid(index)}.toml").write_text(
            f'[[device]]\nuuid = "{_uuid(index)}"\nparent = "{parent}"\ntype = "{type_id}"\n'
            f'autostart = false\nattributes = [{{ name = "setting", value = "{index}" }}]\n'
        )
    with daemon_stack(scenario=SCENARIO, devices_dirs=[directory]) as running:
        yield running


def _with_serial(client: BusClient, message: Message) -> Future[Message]:
    """Send `message`; the future has the whole reply (its serial included)."""

    async def call() -> Message:
        reply = await client.bus.call(message)
        assert reply is not None
        return reply

    return client.submit(call())


def _call(client: BusClient, path: str, interface: str, member: str, *args: object) -> Message:
    signature = {"GetDevice": "s", "CreateDevice": "ssa{sv}"}.get(member, "")
    return Message(
        destination=names.BUS_NAME,
        path=path,
        interface=interface,
        member=member,
        signature=signature,
        body=list(args),
    )


def test_other_calls_are_answered_while_32_reads_of_10000_devices_are_served(
    stack: ClientStack,
) -> None:
    client = stack.client
    # The cache is built by the first read; the flood then costs what every later one does.
    assert len(client.managed_objects()) > DEFINITIONS
    with subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.daemon.read_flood_clients",
            stack.address,
            str(CONNECTIONS),
            str(CALLS),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    ) as flood:
        try:
            assert flood.stdout is not None
            assert flood.stdout.readline().strip() == "sent"
            # The flood's calls are in the bus (each connection had a round trip after them),
            # so they reach the daemon before these.
            ours = {
                "Ping": _with_serial(
                    client, _call(client, names.MANAGER_PATH, names.PEER_INTERFACE, "Ping")
                ),
                "GetDevice": _with_serial(
                    client,
                    _call(
                        client,
                        names.MANAGER_PATH,
                        names.MANAGER_INTERFACE,
                        "GetDevice",
                        _uuid(DEFINITIONS - 1),
                    ),
                ),
                "CreateDevice": _with_serial(
                    client,
                    _call(
                        client,
                        names.MANAGER_PATH,
                        names.MANAGER_INTERFACE,
                        "CreateDevice",
                        "par-a",
                        "par-a-1",
                        options(uuid=new_uuid()),
                    ),
                ),
            }
            replies = {name: future.result(CALL_TIMEOUT) for name, future in ours.items()}
            output, _ = flood.communicate(timeout=180)
        finally:
            if flood.poll() is None:
                flood.kill()
    assert flood.returncode == 0
    for name, reply in replies.items():
        assert reply.message_type is MessageType.METHOD_RETURN, (name, reply.body)
    flood_replies = [line.split() for line in output.splitlines()]
    assert [kind for kind, *_ in flood_replies] == ["reply"] * CONNECTIONS * CALLS
    assert all(int(objects) > DEFINITIONS for _, _, objects in flood_replies)
    serials = sorted(int(serial) for _, serial, _ in flood_replies)
    sent_before = {
        name: sum(serial < reply.serial for serial in serials) for name, reply in replies.items()
    }
    print(f"flood replies the daemon sent before each of ours: {sent_before}")
    # Ping and GetDevice are answered at once: at most the replies already on their way go
    # first. CreateDevice takes a few turns of the loop (the caller's uid, the kernel), while
    # the flood goes on; it must not wait for the flood to end.
    assert sent_before["Ping"] <= MAX_IN_FLIGHT + 1
    assert sent_before["GetDevice"] <= MAX_IN_FLIGHT + 1
    assert sent_before["CreateDevice"] <= len(serials) // 2


def test_a_caller_flooding_alone_is_answered_busy_beyond_its_share(stack: ClientStack) -> None:
    """One connection sends 20 reads at once: it gets its turns and the waiting ones it is
    allowed, the rest are Busy at once, and another caller is served meanwhile."""

    async def flood() -> tuple[list[str], Message]:
        bus = await MessageBus(bus_address=stack.address).connect()
        other = await MessageBus(bus_address=stack.address).connect()
        try:

            def read() -> Message:
                return Message(
                    destination=names.BUS_NAME,
                    path=names.MANAGER_PATH,
                    interface=names.MANAGER_INTERFACE,
                    member="ListDevices",
                    signature="a{sv}",
                    body=[{}],
                )

            calls = [asyncio.ensure_future(bus.call(read())) for _ in range(20)]
            await asyncio.sleep(0)
            others = await other.call(read())
            assert others is not None
            outcomes = []
            for reply in await asyncio.gather(*calls):
                assert reply is not None
                outcomes.append(reply.error_name or "reply")
            return outcomes, others
        finally:
            bus.disconnect()
            other.disconnect()

    started = time.monotonic()
    outcomes, others = stack.client.run(flood())
    assert others.message_type is MessageType.METHOD_RETURN
    assert len(others.body[0]) > DEFINITIONS
    busy = outcomes.count(names.error_name("Busy"))
    assert outcomes.count("reply") + busy == 20
    assert outcomes.count("reply") >= 1 + PER_CALLER_WAITING
    assert busy >= 1
    print(f"{busy} of 20 Busy, {time.monotonic() - started:.1f} s")
