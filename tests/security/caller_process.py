# SPDX-License-Identifier: LGPL-2.1-or-later
"""A D-Bus client process that runs as some user and makes the calls its parent asks for.

Run as `python -c SOURCE ADDRESS` (the source of this file, so the user need not be able to
read the repository). It needs only the standard library and dbus_fast. It prints one line,
`{"unique_name": ..., "pid": ...}`, then serves JSON lines on stdin, one answer line each:

    {"op": "call", "destination", "path", "interface", "member", "signature", "body"}
        -> {"error": null | error name, "body": [...], "fds": [what each fd of the reply is]}
    {"op": "watch", "sender": NAME}          collect the signals NAME sends -> {}
    {"op": "signals", "barrier": NAME}       the signals collected so far, after a Ping to NAME
        -> {"signals": [[path, interface, member, body], ...]}

A Ping's reply leaves NAME's connection after every signal NAME sent before it, so the answer
to "signals" holds every signal emitted before the barrier. Bodies are encoded by `encode`:
variants, dictionaries and bytes become tagged objects, so JSON carries D-Bus values exactly.
The connection negotiates fd passing (Device.Open): a reply's fds are reported by what they
are (`readlink /proc/self/fd/N`) and closed.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

CALL_TIMEOUT = 60.0
#: Error "names" for calls that got no reply at all.
NO_REPLY = "test.NoReply"
CLIENT_ERROR = "test.ClientError"
DISCONNECTED = "test.Disconnected"


def encode(value: Any) -> Any:
    if isinstance(value, Variant):
        return {"variant": [value.signature, encode(value.value)]}
    if isinstance(value, dict):
        return {"dict": [[encode(k), encode(v)] for k, v in value.items()]}
    if isinstance(value, bytes | bytearray):
        return {"bytes": bytes(value).hex()}
    if isinstance(value, list | tuple):
        return [encode(item) for item in value]
    return value


def decode(value: Any) -> Any:
    if isinstance(value, dict):
        if "variant" in value:
            signature, inner = value["variant"]
            return Variant(signature, decode(inner))
        if "dict" in value:
            return {decode(k): decode(v) for k, v in value["dict"]}
        if "bytes" in value:
            return bytes.fromhex(value["bytes"])
        raise ValueError(f"unknown tagged value {value!r}")
    if isinstance(value, list):
        return [decode(item) for item in value]
    return value


class _Client:
    def __init__(self, address: str) -> None:
        self.address = address
        self.bus: MessageBus | None = None
        self.signals: list[list[Any]] = []
        self.watched: set[str] = set()

    async def connect(self) -> MessageBus:
        bus = await MessageBus(bus_address=self.address, negotiate_unix_fd=True).connect()
        bus.add_message_handler(self._on_message)
        self.bus = bus
        return bus

    def _on_message(self, message: Message) -> None:
        if message.message_type is MessageType.SIGNAL and message.sender in self.watched:
            self.signals.append(
                [message.path, message.interface, message.member, encode(message.body)]
            )

    async def call(self, request: dict[str, Any]) -> dict[str, Any]:
        bus = self.bus
        if bus is None or not bus.connected:
            return {"error": DISCONNECTED, "body": ["the bus closed this connection"]}
        try:
            message = Message(
                destination=request["destination"],
                path=request["path"],
                interface=request.get("interface"),
                member=request["member"],
                signature=request.get("signature", ""),
                body=decode(request.get("body", [])),
            )
        except Exception as error:  # the message cannot even be built: the client refuses
            return {"error": CLIENT_ERROR, "body": [f"{type(error).__name__}: {error}"]}
        try:
            async with asyncio.timeout(request.get("timeout", CALL_TIMEOUT)):
                reply = await bus.call(message)
        except TimeoutError:
            return {"error": NO_REPLY, "body": ["no reply in time"]}
        except Exception as error:
            if not bus.connected:
                return {"error": DISCONNECTED, "body": [f"{type(error).__name__}: {error}"]}
            return {"error": CLIENT_ERROR, "body": [f"{type(error).__name__}: {error}"]}
        if reply is None:
            return {"error": NO_REPLY, "body": []}
        fds = []
        for fd in reply.unix_fds or ():
            fds.append(os.readlink(f"/proc/self/fd/{fd}"))
            os.close(fd)
        error_name = reply.error_name if reply.message_type is MessageType.ERROR else None
        return {"error": error_name, "body": encode(reply.body), "fds": fds}

    async def watch(self, sender: str) -> dict[str, Any]:
        assert self.bus is not None
        owner = await self.bus.call(
            Message(
                destination="org.freedesktop.DBus",
                path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus",
                member="GetNameOwner",
                signature="s",
                body=[sender],
            )
        )
        unique = owner.body[0] if owner.message_type is MessageType.METHOD_RETURN else sender
        self.watched.add(unique)
        await self.bus.call(
            Message(
                destination="org.freedesktop.DBus",
                path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus",
                member="AddMatch",
                signature="s",
                body=[f"type='signal',sender='{sender}'"],
            )
        )
        return {}

    async def collected(self, barrier: str) -> dict[str, Any]:
        assert self.bus is not None
        await self.bus.call(
            Message(
                destination=barrier,
                path="/",
                interface="org.freedesktop.DBus.Peer",
                member="Ping",
            )
        )
        signals, self.signals = self.signals, []
        return {"signals": signals}


async def _serve(address: str) -> None:
    client = _Client(address)
    bus = await client.connect()
    print(json.dumps({"unique_name": bus.unique_name, "pid": os.getpid()}), flush=True)
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        request = json.loads(line)
        op = request.get("op")
        if op == "call":
            answer = await client.call(request)
        elif op == "watch":
            answer = await client.watch(request["sender"])
        elif op == "signals":
            answer = await client.collected(request["barrier"])
        else:
            answer = {"error": CLIENT_ERROR, "body": [f"unknown op {op!r}"]}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    asyncio.run(_serve(sys.argv[1]))
