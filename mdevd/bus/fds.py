# SPDX-License-Identifier: LGPL-2.1-or-later
"""File descriptors on the daemon's bus connection: those it sends, and those sent to it.

The connection negotiates Unix fd passing so that `Device.Open` can answer with an open fd
(D-Bus type `h`). dbus-fast sends the fds a reply carries (SCM_RIGHTS, which gives the
receiver its own copy) but never closes them, and it keeps every fd a message brings without
closing it either. Both are the daemon's to close:

- An fd handed over as a method's result is registered here (`OutgoingFds.hand_over`). When
  the reply that carries it is given to the connection, `OutgoingFds.take` hands the fd to
  that send, and the connection closes it once the reply has been written, or could not be
  (`ManagedObjectBus.send`). An fd that no send takes (the caller asked for no reply, or the
  reply could not be built) is closed after `UNSENT_GRACE` seconds: the reply is sent on the
  loop's next turn after the method returns, so only an fd nothing will send is still there.
- No method of the contract takes an fd, so every fd a message brings is closed as it arrives
  (`close_received`, the connection's first message handler): a caller cannot make the daemon
  keep descriptors it sent, whatever it sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Iterable
from typing import Final

from dbus_fast import Message

log = logging.getLogger(__name__)

#: Seconds an fd handed over for a reply may wait for that reply to be sent before it is
#: closed unsent.
UNSENT_GRACE: Final = 30.0


def close_all(fds: Iterable[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def close_received(message: Message) -> None:
    """A message handler: close the fds `message` brought (none is ever used). Returns None,
    so dbus-fast goes on dispatching the message."""
    received = message.unix_fds
    if received:
        log.debug(
            "closing %d file descriptor(s) sent by %s (mdevd takes none)",
            len(received),
            message.sender or "the bus",
        )
        close_all(received)


class OutgoingFds:
    """fds handed over as replies' values, each closed once its reply is sent (`take`), or
    after `grace` seconds if no reply takes it."""

    def __init__(self, grace: float = UNSENT_GRACE) -> None:
        self.grace = grace
        self._waiting: dict[int, asyncio.TimerHandle] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def hand_over(self, fd: int) -> int:
        """Register `fd` (which the caller gives up) as the value of a reply; returns it."""
        previous = self._waiting.pop(fd, None)
        if previous is not None:
            previous.cancel()
        self._waiting[fd] = asyncio.get_running_loop().call_later(self.grace, self._unsent, fd)
        return fd

    def take(self, fds: Iterable[int] | None) -> list[int]:
        """The registered fds among `fds` (a message's `unix_fds`), no longer registered: the
        caller closes them once the message is sent."""
        taken: list[int] = []
        for fd in fds or ():
            timer = self._waiting.pop(fd, None)
            if timer is not None:
                timer.cancel()
                taken.append(fd)
        return taken

    def close(self) -> None:
        """Close every fd still waiting (the connection is gone)."""
        waiting, self._waiting = self._waiting, {}
        for timer in waiting.values():
            timer.cancel()
        close_all(waiting)

    def _unsent(self, fd: int) -> None:
        if self._waiting.pop(fd, None) is not None:
            log.debug("fd %d was handed over for a reply that was never sent: closed", fd)
            close_all([fd])
