# SPDX-License-Identifier: LGPL-2.1-or-later
"""The clients of the daemon-level stress test, in a process of their own.

Run as `python -m tests.daemon.stress_clients ADDRESS CLIENTS SECONDS DEVICES`. It connects
CLIENTS connections. The first one sends one GetManagedObjects call; once it is written the
process prints `sent` and stops itself with SIGSTOP, like a client too busy to read, so that
the reply stays in the bus (the test then makes the daemon send more). Once continued
(SIGCONT) it reads that reply, and then each connection calls GetManagedObjects, one call
after the other, until SECONDS have passed. Each reply must hold DEVICES device objects.
Finally it prints one JSON line:
{"replies": n, "errors": [...], "disconnects": n, "per_client": [n, ...]}.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from mdevd.bus import names

#: A reply may wait behind every other client's reply of ~0.7 MB.
CALL_TIMEOUT = 120.0


def _call() -> Message:
    return Message(
        destination=names.BUS_NAME,
        path=names.ROOT_PATH,
        interface=names.OBJECT_MANAGER_INTERFACE,
        member="GetManagedObjects",
    )


class Client:
    def __init__(self, bus: MessageBus, devices: int) -> None:
        self.bus = bus
        self.devices = devices
        self.replies = 0
        self.errors: list[str] = []
        self.gone = False
        self._pending: dict[int, asyncio.Future[Message]] = {}
        bus.add_message_handler(self._on_message)

    def _on_message(self, message: Message) -> bool:
        future = self._pending.pop(message.reply_serial, None)
        if future is None:
            return False
        future.set_result(message)
        return True

    async def send(self) -> asyncio.Future[Message]:
        """Send one call; return once it is written, with a future for its reply."""
        message = _call()
        message.serial = self.bus.next_serial()
        reply: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[message.serial] = reply
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
            self.errors.append(f"{message.error_name}: {message.body[0] if message.body else ''}")
            # The daemon is gone: asking again only piles up the same error.
            self.gone = message.error_name in (
                "org.freedesktop.DBus.Error.ServiceUnknown",
                "org.freedesktop.DBus.Error.NoReply",
            )
            return
        found = sum(1 for path in message.body[0] if path.startswith(names.DEVICES_PATH + "/"))
        if found != self.devices:
            self.errors.append(f"a reply with {found} devices instead of {self.devices}")
        self.replies += 1

    async def loop(self, deadline: float) -> None:
        while time.monotonic() < deadline and self.bus.connected and not self.gone:
            try:
                reply = await self.send()
            except Exception as exc:  # the connection broke
                self.errors.append(repr(exc))
                return
            await self.collect(reply)


async def run(address: str, clients: int, seconds: float, devices: int) -> dict[str, object]:
    connections = [
        Client(await MessageBus(bus_address=address).connect(), devices) for _ in range(clients)
    ]
    unread = await connections[0].send()
    print("sent", flush=True)
    os.kill(os.getpid(), signal.SIGSTOP)
    await connections[0].collect(unread)
    deadline = time.monotonic() + seconds
    await asyncio.gather(*(client.loop(deadline) for client in connections))
    disconnects = sum(1 for client in connections if not client.bus.connected)
    for client in connections:
        client.bus.disconnect()
    return {
        "replies": sum(client.replies for client in connections),
        "errors": [error for client in connections for error in client.errors],
        "disconnects": disconnects,
        "per_client": [client.replies for client in connections],
    }


def main() -> None:
    address, clients, seconds, devices = sys.argv[1:5]
    result = asyncio.run(run(address, int(clients), float(seconds), int(devices)))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
