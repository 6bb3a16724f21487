# SPDX-License-Identifier: LGPL-2.1-or-later
"""A hostile local user's flood: many calls that need authorization, always in flight.

Run as `python -c SOURCE ADDRESS CONNECTIONS CALLS_PER_CONNECTION` (the source of this file,
so the user need not be able to read the repository), as the user whose flood it is. It needs
only the standard library and dbus_fast.

Each connection keeps CALLS_PER_CONNECTION `CreateDevice` calls waiting for their replies: a
worker sends the next call as soon as the previous one is answered, so the flood never lets up.
The number per connection stays below the bus's 128 pending replies per connection
(`max_replies_per_connection`), so the bus itself refuses none of them; more connections make
a bigger flood. The parent device does not exist, so even a wrongly allowed call changes
nothing, and it shows: its answer is `ParentNotFound`.

It prints `{"ready": true}` once every worker has had an answer (so that all of them were
waiting at once), then serves lines on stdin:

    progress -> {"replies": N}
    stop     -> the workers finish their current call; then
                {"replies": N, "outcomes": {error name or "ok": count}, "workers": W}
"""

from __future__ import annotations

import asyncio
import collections
import json
import sys

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

MISSING_PARENT = "mdevd-test-no-such-parent"
CALL_TIMEOUT = 60.0


async def _worker(
    bus: MessageBus, outcomes: collections.Counter[str], stopping: asyncio.Event
) -> None:
    while not stopping.is_set():
        message = Message(
            destination="org.mdevd.Mdevd1",
            path="/org/mdevd/Mdevd1/Manager",
            interface="org.mdevd.Mdevd1.Manager",
            member="CreateDevice",
            signature="ssa{sv}",
            body=[MISSING_PARENT, "mtty-1", {"auth.interactive": Variant("b", False)}],
        )
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                reply = await bus.call(message)
        except TimeoutError:
            outcomes["test.NoReply"] += 1
            continue
        if reply is None:
            outcomes["test.NoReply"] += 1
        elif reply.message_type is MessageType.ERROR:
            outcomes[reply.error_name or "test.Unnamed"] += 1
        else:
            outcomes["ok"] += 1


async def _flood(address: str, connections: int, per_connection: int) -> None:
    buses = [await MessageBus(bus_address=address).connect() for _ in range(connections)]
    outcomes: collections.Counter[str] = collections.Counter()
    stopping = asyncio.Event()
    workers = [
        asyncio.create_task(_worker(bus, outcomes, stopping))
        for bus in buses
        for _ in range(per_connection)
    ]
    while sum(outcomes.values()) < len(workers):
        await asyncio.sleep(0.01)
    print(json.dumps({"ready": True}), flush=True)
    loop = asyncio.get_running_loop()
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if line == "progress":
            print(json.dumps({"replies": sum(outcomes.values())}), flush=True)
            continue
        break
    stopping.set()
    await asyncio.gather(*workers)
    print(
        json.dumps(
            {"replies": sum(outcomes.values()), "outcomes": outcomes, "workers": len(workers)}
        ),
        flush=True,
    )
    for bus in buses:
        bus.disconnect()


if __name__ == "__main__":
    asyncio.run(_flood(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
