# SPDX-License-Identifier: LGPL-2.1-or-later
"""A D-Bus caller that runs as another user (`nobody`), driven line by line over stdin.

Its source is handed to an unprivileged interpreter with `python -c` (see `tests/daemon/
nobody.py`), so it imports nothing but dbus-fast and the standard library. Argument 1 is the
bus address. It prints `ready` once connected. Each input line is a JSON request
`{"id": N, "path": ..., "interface": ..., "member": ..., "signature": ..., "body": [...]}`;
in `body`, an argument of type a{sv} is written as `{"key": ["signature", value]}`. Calls run
concurrently; each answer is one JSON line `{"id": N, "error": NAME or null, "message": ...,
"body": [...]}`, written when its reply arrives.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.signature import get_signature_tree


def _plain(value: Any) -> Any:
    if isinstance(value, Variant):
        return _plain(value.value)
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def _arguments(signature: str, body: list[Any]) -> list[Any]:
    arguments = []
    for kind, value in zip(get_signature_tree(signature).types, body, strict=True):
        if kind.signature == "a{sv}":
            value = {key: Variant(sig, item) for key, (sig, item) in value.items()}
        arguments.append(value)
    return arguments


async def _answer(bus: MessageBus, request: dict[str, Any]) -> None:
    message = Message(
        destination=request.get("destination", "org.mdevd.Mdevd1"),
        path=request["path"],
        interface=request["interface"],
        member=request["member"],
        signature=request.get("signature", ""),
        body=_arguments(request.get("signature", ""), request.get("body", [])),
    )
    answer: dict[str, Any] = {"id": request["id"], "error": None, "message": "", "body": []}
    try:
        async with asyncio.timeout(60):
            reply = await bus.call(message)
    except TimeoutError:
        answer["error"] = "timeout"
    else:
        assert reply is not None
        if reply.message_type is MessageType.ERROR:
            answer["error"] = reply.error_name
            answer["message"] = str(reply.body[0]) if reply.body else ""
        else:
            answer["body"] = _plain(reply.body)
    print(json.dumps(answer), flush=True)


async def main(address: str) -> None:
    bus = await MessageBus(bus_address=address).connect()
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    tasks = set()
    while line := await reader.readline():
        task = loop.create_task(_answer(bus, json.loads(line)))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks)
    bus.disconnect()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
