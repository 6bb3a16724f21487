# SPDX-License-Identifier: LGPL-2.1-or-later
"""Keep a dbus-fast connection alive when its socket's send buffer is full.

The bug (dbus-next #153, present in every dbus-fast from 1.x to 5.2; docs/dbus-fast-send-buffer.md
is the report for upstream): the asyncio writer sends on a non-blocking socket and takes every
exception for a broken connection. When a message is still partly unsent and another one is
sent, the writer first retries the unsent rest at once, without waiting for the socket to be
writable; if the kernel's send buffer is still full, `send()` raises `BlockingIOError` (EAGAIN)
and the bus disconnects: the daemon loses its name and every client its objects. A few clients
reading large replies slowly are enough.

The fix owns the order of sends instead of patching the writer. `PacedMessageBus` overrides the
public `MessageBus.send()` (every outgoing message of dbus-fast's own, replies and signals
included, goes through it, in every version) and hands dbus-fast one message at a time, and only
when

- dbus-fast has written the previous one completely (the future `send()` returns is done), and
- the socket is writable now (a zero-timeout poll of the connection's socket).

The writer then never meets a full buffer: its first attempt finds room, and it writes any rest
only when the event loop says the socket is writable. Messages that must wait stay in this
class's queue, in order (which also keeps dbus-fast 1.x's writer, whose queue is last-in
first-out, from reordering them). Waiting for writability uses a duplicate of the socket's
descriptor, so dbus-fast's own writer registration on the original is never disturbed.

What this relies on in dbus-fast: the public `send()` and its future, and the connection's
socket (`_sock`, a public attribute of the compiled class in every version). Without a socket
to watch, the bus works unpaced and says so in the log.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import select
from collections import deque
from typing import Any

from dbus_fast.aio import MessageBus
from dbus_fast.message import Message

from mdevd.bus import marshalfix

try:
    from dbus_fast.__version__ import __version__ as DBUS_FAST_VERSION
except ImportError:  # pragma: no cover - every version so far has the module
    DBUS_FAST_VERSION = "unknown"

_log = logging.getLogger(__name__)

#: dbus-fast versions (major.minor) the stress tests ran against (README, "Tested with").
#: Another version gets a warning in the log, never a refusal to start.
TESTED_VERSIONS = ("1.84", "2.44", "5.2")

_POLL_READY = select.POLLOUT | select.POLLERR | select.POLLHUP


def tested_version(version: str = DBUS_FAST_VERSION) -> bool:
    return ".".join(version.split(".")[:2]) in TESTED_VERSIONS


def warn_if_untested(version: str = DBUS_FAST_VERSION) -> None:
    """Log a warning when the installed dbus-fast is not one the stress tests ran against."""
    if not tested_version(version):
        _log.warning(
            "dbus-fast %s is installed; mdevd was tested with %s: it should work, "
            "but if the bus connection drops under load, report it with this version",
            version,
            ", ".join(f"{v}.x" for v in TESTED_VERSIONS),
        )


class _SocketWatch:
    """Whether a socket can take data now, and a callback for when it can."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        self._loop = loop
        # A duplicate, so that registering it with the loop leaves dbus-fast's registration
        # of the original descriptor alone (the loop keeps one writer per descriptor).
        self._fd = os.dup(fd)
        self._poll = select.poll()
        self._poll.register(self._fd, select.POLLOUT)

    def writable(self) -> bool:
        # An error or hang-up counts as "go": dbus-fast's writer then meets it and disconnects
        # as it should.
        return any(events & _POLL_READY for _, events in self._poll.poll(0))

    def call_when_writable(self, callback: Any) -> None:
        def fire() -> None:
            self._loop.remove_writer(self._fd)
            callback()

        self._loop.add_writer(self._fd, fire)

    def close(self) -> None:
        if self._fd >= 0:
            self._loop.remove_writer(self._fd)
            os.close(self._fd)
            self._fd = -1


def _copy_outcome(source: asyncio.Future[None], target: asyncio.Future[None]) -> None:
    if target.done():
        return
    if source.cancelled():
        target.cancel()
    elif (error := source.exception()) is not None:
        target.set_exception(error)
    else:
        target.set_result(None)


class PacedMessageBus(MessageBus):
    """A dbus-fast asyncio MessageBus that never makes its writer send into a full buffer."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._waiting: deque[tuple[Message, asyncio.Future[None]]] = deque()
        #: The future of the message dbus-fast is writing (done once it has all been written).
        self._in_library: asyncio.Future[None] | None = None
        self._watch: _SocketWatch | None = None

    async def connect(self) -> PacedMessageBus:
        await super().connect()
        if marshalfix.needed():
            _log.info(
                "dbus-fast %s writes non-ASCII strings with a wrong length; mdevd writes "
                "messages that carry them itself (mdevd.bus.marshalfix)",
                DBUS_FAST_VERSION,
            )
        loop = asyncio.get_running_loop()
        sock = getattr(self, "_sock", None)
        fileno = getattr(sock, "fileno", None)
        if fileno is None:
            _log.warning(
                "dbus-fast %s: no socket to watch; sending unpaced (a full send buffer may "
                "drop the connection)",
                DBUS_FAST_VERSION,
            )
            return self
        self._watch = _SocketWatch(loop, fileno())
        # dbus-fast leaves wait_for_disconnect unannotated (every version).
        ended = loop.create_task(self.wait_for_disconnect())  # type: ignore[no-untyped-call]
        ended.add_done_callback(self._disconnected_now)
        return self

    # dbus-fast's asyncio bus returns a future; its synchronous base class says None.
    def send(self, msg: Message) -> asyncio.Future[None]:  # type: ignore[override]
        watch = self._watch
        if watch is None or self._disconnected:
            # Connecting (the Hello exchange), unpaced, or gone: dbus-fast decides.
            sent: asyncio.Future[None] = super().send(marshalfix.fixed(msg))
            return sent
        if not msg.serial:
            # Numbered when sent, as dbus-fast would, even if it waits here.
            msg.serial = self.next_serial()
        if not self._waiting and self._library_idle() and watch.writable():
            return self._hand_over(msg)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((msg, future))
        if len(self._waiting) == 1:
            # Otherwise a wake-up is already armed for the head of the queue.
            self._pump()
        return future

    def _library_idle(self) -> bool:
        return self._in_library is None or self._in_library.done()

    def _hand_over(self, msg: Message) -> asyncio.Future[None]:
        sent: asyncio.Future[None] = super().send(marshalfix.fixed(msg))
        self._in_library = sent
        return sent

    def _pump(self, *_: object) -> None:
        """Hand waiting messages over while it is safe; else arm exactly one wake-up."""
        watch = self._watch
        while self._waiting:
            if watch is None or self._disconnected:
                self._fail_waiting()
                return
            in_library = self._in_library
            if in_library is not None and not in_library.done():
                in_library.add_done_callback(self._pump)
                return
            if not watch.writable():
                watch.call_when_writable(self._pump)
                return
            msg, future = self._waiting.popleft()
            sent = self._hand_over(msg)
            if sent.done():
                _copy_outcome(sent, future)
            else:
                sent.add_done_callback(functools.partial(_copy_outcome, target=future))

    def _fail_waiting(self) -> None:
        while self._waiting:
            _, future = self._waiting.popleft()
            if not future.done():
                future.set_exception(ConnectionError("the bus connection is closed"))

    def _disconnected_now(self, ended: asyncio.Future[None]) -> None:
        if not ended.cancelled():
            ended.exception()  # retrieved: the bus's owner learns it from wait_for_disconnect
        self._fail_waiting()
        if self._watch is not None:
            self._watch.close()
            self._watch = None
