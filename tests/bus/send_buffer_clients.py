# SPDX-License-Identifier: LGPL-2.1-or-later
"""The clients of the send-buffer stress test, in their own process so they can be stalled.

Run as `python -m tests.bus.send_buffer_clients ADDRESS CLIENTS BACKLOG ROUNDS`. It connects
CLIENTS connections, and each sends BACKLOG calls of `Devices()` at once; when all are written
it prints `sent` and stops itself with SIGSTOP, like clients too busy to read. Once continued
(SIGCONT), it reads those replies, then each connection makes ROUNDS more calls one after the
other. Finally it prints one JSON line: {"replies": n, "errors": [...], "disconnects": n}.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from mdevd.bus import names
from tests.bus.send_buffer_service import SNAPSHOT_INTERFACE

#: Generous: a call waits behind at most a few hundred others of a few hundred KB each.
CALL_TIMEOUT = 60.0


def devices_call() -> Message:
    return Message(
        destination=names.BUS_NAME,
        path=names.ROOT_PATH,
        interface=SNAPSHOT_INTERFACE,
        member="Devices",
    )


class Client:
    def __init__(self, bus: MessageBus) -> None:
        self.bus = bus
        self.replies = 0
        self.errors: list[str] = []
        self.pending: dict[int, asyncio.Future[Message]] = {}
        bus.add_message_handler(self.on_message)

    def on_message(self, message: Message) -> bool:
        future = self.pending.pop(message.reply_serial, None)
        if future is None:
            return False
        future.set_result(message)
        return True

    async def send_call(self) -> asyncio.Future[Message]:
        """Send one call; return once it is written, with a future for its reply."""
        message = devices_call()
        message.serial = self.bus.next_serial()
        reply: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self.pending[message.serial] = reply
        await self.bus.send(message)
        return reply

    async def collect(self, reply: asyncio.Future[Message]) -> None:
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                message = await reply
        except TimeoutError:
            self.errors.append("timeout")
            return
        if message.message_type is MessageType.ERROR:
            self.errors.append(f"{message.error_name}: {message.body}")
        else:
            self.replies += 1

    async def rounds(self, count: int) -> None:
        for _ in range(count):
            await self.collect(await self.send_call())


async def run(address: str, clients: int, backlog: int, rounds: int) -> dict[str, object]:
    connections = [Client(await MessageBus(bus_address=address).connect()) for _ in range(clients)]
    replies = [await client.send_call() for client in connections for _ in range(backlog)]
    print("sent", flush=True)
    # Stop the whole process (every connection at once): the bus daemon queues the replies.
    os.kill(os.getpid(), signal.SIGSTOP)
    owners = [client for client in connections for _ in range(backlog)]
    await asyncio.gather(
        *(owner.collect(reply) for owner, reply in zip(owners, replies, strict=True))
    )
    await asyncio.gather(*(client.rounds(rounds) for client in connections))
    disconnects = sum(1 for client in connections if not client.bus.connected)
    for client in connections:
        client.bus.disconnect()
    return {
        "replies": sum(client.replies for client in connections),
        "errors": [error for client in connections for error in client.errors],
        "disconnects": disconnects,
    }


def main() -> None:
    address, clients, backlog, rounds = sys.argv[1], *map(int, sys.argv[2:5])
    print(json.dumps(asyncio.run(run(address, clients, backlog, rounds))), flush=True)


if __name__ == "__main__":
    main()
