# SPDX-License-Identifier: LGPL-2.1-or-later
"""Calls to the bus daemon itself (`org.freedesktop.DBus`), which several parts make."""

from __future__ import annotations

import asyncio
from typing import Any

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from mdevd.bus import names


def message(member: str, signature: str = "", body: list[Any] | None = None) -> Message:
    """A method call to the bus daemon."""
    return Message(
        destination=names.DBUS_BUS_NAME,
        path=names.DBUS_PATH,
        interface=names.DBUS_INTERFACE,
        member=member,
        signature=signature,
        body=body or [],
    )


async def add_match(bus: MessageBus, rule: str, timeout: float) -> str | None:
    """Subscribe `bus` to the signals `rule` matches; None, or why it did not work."""
    try:
        async with asyncio.timeout(timeout):
            reply = await bus.call(message("AddMatch", "s", [rule]))
    except Exception as error:  # a timeout, a closed connection
        return str(error) or type(error).__name__
    if reply is None:
        return "no reply"
    if reply.message_type is MessageType.ERROR:
        return str(reply.error_name)
    return None
