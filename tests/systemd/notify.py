# SPDX-License-Identifier: LGPL-2.1-or-later
"""A stand-in for systemd's notification socket: a datagram socket the test reads.

    with NotifySocket() as notify:
        start mdevd with NOTIFY_SOCKET=notify.address
        ready = notify.wait_for(lambda m: m.get("READY") == "1")

Each datagram is parsed as sd_notify(3) defines it (newline-separated `KEY=VALUE`); every
message received is kept in `messages`, in order. `systemd-notify` (systemd's own client) is
used by a test to show that this socket receives what systemd would.
"""

from __future__ import annotations

import select
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

Message = dict[str, str]


def parse(datagram: bytes) -> Message:
    message: Message = {}
    for line in datagram.decode().split("\n"):
        if line:
            key, _, value = line.partition("=")
            message[key] = value
    return message


class NotifySocket:
    def __init__(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="mdevd-notify-", dir="/tmp"))
        self.address = str(self._dir / "notify")
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(self.address)
        self.messages: list[Message] = []

    def __enter__(self) -> NotifySocket:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._socket.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def receive(self, timeout: float) -> Message | None:
        """The next message, or None if none came within `timeout` seconds."""
        readable, _, _ = select.select([self._socket], [], [], timeout)
        if not readable:
            return None
        message = parse(self._socket.recv(65536))
        self.messages.append(message)
        return message

    def drain(self) -> list[Message]:
        """Every message already queued, without waiting."""
        drained = []
        while (message := self.receive(0)) is not None:
            drained.append(message)
        return drained

    def wait_for(
        self, predicate: Callable[[Message], bool], timeout: float = 30, what: str = ""
    ) -> Message:
        """Read until a message satisfies `predicate`; fail (listing what came) after timeout."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            message = self.receive(remaining)
            if message is not None and predicate(message):
                return message
        raise AssertionError(
            f"no sd_notify message {what} within {timeout} s; received: {self.messages}"
        )

    def statuses(self) -> list[str]:
        return [m["STATUS"] for m in self.messages if "STATUS" in m]
