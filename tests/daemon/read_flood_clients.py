# SPDX-License-Identifier: LGPL-2.1-or-later
"""The flood of tests/daemon/test_read_flood.py, in a process of its own.

Run as `python -m tests.daemon.read_flood_clients ADDRESS CONNECTIONS CALLS`. It connects
CONNECTIONS connections, and each sends CALLS GetManagedObjects at once (all written before it
prints `sent`). It prints one line per reply as it is read: `reply <serial> <objects>` or
`error <serial> <error name>`, the serial being the one the daemon gave its reply (the order in
which it sent it), and ends when every call has been answered. In a process of its own so that
reading these replies (megabytes each) does not hold up the test's own calls.
"""

from __future__ import annotations

import asyncio
import sys

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from mdevd.bus import names

CALL_TIMEOUT = 300.0


async def _flood(address: str, connections: int, calls: int) -> None:
    buses = [await MessageBus(bus_address=address).connect() for _ in range(connections)]

    async def one(bus: MessageBus) -> None:
        message = Message(
            destination=names.BUS_NAME,
            path=names.ROOT_PATH,
            interface=names.OBJECT_MANAGER_INTERFACE,
            member="GetManagedObjects",
        )
        reply = await bus.call(message)
        if reply is None:
            print("error 0 no-reply", flush=True)
        elif reply.message_type is MessageType.ERROR:
            print(f"error {reply.serial} {reply.error_name}", flush=True)
        else:
            print(f"reply {reply.serial} {len(reply.body[0])}", flush=True)

    # Each call's task writes its message before the next starts: all are sent before `sent`.
    tasks = [asyncio.create_task(one(bus)) for bus in buses for _ in range(calls)]
    await asyncio.sleep(0)
    for bus in buses:
        # A round trip to the bus daemon on each connection: our calls are all in it by then.
        await bus.call(
            Message(
                destination=names.DBUS_BUS_NAME,
                path=names.DBUS_PATH,
                interface=names.DBUS_INTERFACE,
                member="GetId",
            )
        )
    print("sent", flush=True)
    async with asyncio.timeout(CALL_TIMEOUT):
        await asyncio.gather(*tasks)
    for bus in buses:
        bus.disconnect()


if __name__ == "__main__":
    asyncio.run(_flood(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
