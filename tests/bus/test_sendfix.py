# SPDX-License-Identifier: LGPL-2.1-or-later
"""mdevd.bus.sendfix in isolation: a bus daemon that stops reading fills the send buffer for
certain, so the pacing is shown deterministically here (the end-to-end proof under real load
is test_send_buffer.py and tests/daemon/test_stress.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator

import pytest
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from mdevd.bus import sendfix
from tests.support.paths import REPO

INTERFACE = "org.mdevd.Test.Chunks"
#: Signals of this size, this many: far more than a socket's send buffer (~200 KB).
CHUNK = 100_000
CHUNKS = 20


@pytest.fixture
def full_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A non-blocking unix stream pair whose sending side's buffer is full."""
    sender, receiver = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    sender.setblocking(False)
    with sender, receiver:
        try:
            while True:
                sender.send(b"x" * 65536)
        except BlockingIOError:
            pass
        yield sender, receiver


def test_the_watch_sees_a_full_buffer_and_wakes_when_it_drains(
    full_pair: tuple[socket.socket, socket.socket],
) -> None:
    sender, receiver = full_pair

    async def scenario() -> bool:
        loop = asyncio.get_running_loop()
        watch = sendfix._SocketWatch(loop, sender.fileno())
        try:
            assert not watch.writable()
            woken = loop.create_future()
            watch.call_when_writable(lambda: woken.set_result(True))
            receiver.setblocking(False)
            with pytest.raises(BlockingIOError):
                while receiver.recv(1 << 20):
                    pass
            result: bool = await asyncio.wait_for(woken, 10)
            assert watch.writable()
            return result
        finally:
            watch.close()

    assert asyncio.run(scenario())


def _peer_pid(bus: MessageBus) -> int:
    sock = bus._sock
    assert sock is not None
    credentials = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid: int = struct.unpack("3i", credentials)[0]
    return pid


async def _burst_while_the_bus_is_stopped(
    address: str, bus_class: type[MessageBus]
) -> tuple[bool, int, list[int]]:
    """CHUNKS signals sent while the bus daemon is stopped (SIGSTOP), then let it go on.

    What: whether the sender was still connected after the burst, how many messages waited in
    its own queue then, and the chunk numbers a listener received, in order.
    """
    sender = await bus_class(bus_address=address).connect()
    listener = await MessageBus(bus_address=address).connect()
    received: list[int] = []
    all_received = asyncio.get_running_loop().create_future()

    def on_message(message: Message) -> None:
        if message.message_type is MessageType.SIGNAL and message.interface == INTERFACE:
            received.append(message.body[0])
            if len(received) == CHUNKS and not all_received.done():
                all_received.set_result(None)

    listener.add_message_handler(on_message)
    await listener.call(
        Message(
            destination="org.freedesktop.DBus",
            path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus",
            member="AddMatch",
            signature="s",
            body=[f"type='signal',interface='{INTERFACE}'"],
        )
    )
    bus_daemon = _peer_pid(sender)
    os.kill(bus_daemon, signal.SIGSTOP)
    try:
        sends: list[asyncio.Future[None]] = []
        for number in range(CHUNKS):
            chunk = Message.new_signal("/", INTERFACE, "Chunk", "is", [number, "x" * CHUNK])
            try:
                sends.append(sender.send(chunk))
            except OSError:
                # The bug, unfixed: the writer met EAGAIN, closed the connection, and then
                # registered the closed socket with the loop.
                break
        connected = sender.connected
        waiting = len(getattr(sender, "_waiting", ()))
    finally:
        os.kill(bus_daemon, signal.SIGCONT)
    if connected:
        await asyncio.wait_for(all_received, 60)
    for sent in sends:
        if sent.done() and not sent.cancelled():
            sent.exception()  # retrieved: the outcome is `connected`
    sender.disconnect()
    listener.disconnect()
    return connected, waiting, received


def _burst_in_a_child(address: str, *, paced: bool) -> tuple[bool, int, list[int]]:
    """The burst in a process of its own: dbus-fast's failure, unfixed, leaves Python 3.11.7's
    parser in a broken state ("AST constructor recursion depth mismatch" at the next import
    that pytest rewrites), which must not reach the test run."""
    bus_class = "sendfix.PacedMessageBus" if paced else "MessageBus"
    program = (
        "import asyncio, json, sys\n"
        "from dbus_fast.aio import MessageBus\n"
        "from mdevd.bus import sendfix\n"
        "from tests.bus.test_sendfix import _burst_while_the_bus_is_stopped as burst\n"
        f"print(json.dumps(asyncio.run(burst(sys.argv[1], {bus_class}))))\n"
    )
    child = subprocess.run(
        [sys.executable, "-c", program, address],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
        check=False,
    )
    assert child.returncode == 0, child.stderr
    connected, waiting, received = json.loads(child.stdout.splitlines()[-1])
    return connected, waiting, received


def test_a_full_buffer_waits_in_order_instead_of_disconnecting(bus_address: str) -> None:
    connected, waiting, received = _burst_in_a_child(bus_address, paced=True)
    assert connected
    assert waiting > 0, "the buffer never filled: the test proves nothing"
    assert received == list(range(CHUNKS))


def test_the_same_burst_disconnects_dbus_fast_without_the_fix(bus_address: str) -> None:
    """The control: if this ever passes no more, dbus-fast fixed the bug (see the report)."""
    connected, _, _ = _burst_in_a_child(bus_address, paced=False)
    assert not connected


def test_an_untested_dbus_fast_is_a_warning_not_a_refusal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger=sendfix.__name__):
        sendfix.warn_if_untested("9.1.0")
    assert "dbus-fast 9.1.0 is installed" in caplog.text


def test_the_tested_versions_log_nothing(caplog: pytest.LogCaptureFixture) -> None:
    for version in ("1.84.2", "2.44.5", "5.2.0"):
        with caplog.at_level(logging.WARNING, logger=sendfix.__name__):
            sendfix.warn_if_untested(version)
    assert caplog.text == ""
