# SPDX-License-Identifier: LGPL-2.1-or-later
"""Kernel events: a pyudev monitor read from the asyncio loop.

The monitor listens on udev's netlink group (events after udevd's rule processing, the way
every udev client receives them); `source="kernel"` is for machines without udevd. It is opened
before the daemon's first look at sysfs, so no change can fall between the two. The fd is
non-blocking and read from the loop: no thread, nothing blocks. It is not filtered: a parent's
registration arrives with the parent's own subsystem (`pci`, `css`, `mtty`...), never
`mdev_bus`, so a subsystem filter would lose it.

When the socket's receive buffer overflows the kernel drops events and marks the socket with
ENOBUFS; the caller is then told to rescan everything (`on_overflow`), since any event may be
among the lost ones. Only the event's own properties are passed on; what changed is read back
from the kernel layer, under its configurable root, by the engine.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass

import pyudev

from mdevd import defaults

log = logging.getLogger(__name__)

#: Events handled per wake-up of the loop, so that a storm cannot starve method calls.
_EVENTS_PER_WAKEUP = 256


@dataclass(frozen=True, slots=True)
class Uevent:
    action: str
    subsystem: str
    devpath: str
    properties: dict[str, str]


class UeventSource:
    def __init__(
        self,
        source: str = defaults.UEVENT_SOURCE,
        receive_buffer_bytes: int = defaults.UEVENT_RECEIVE_BUFFER,
    ) -> None:
        self._context = pyudev.Context()
        self._monitor = pyudev.Monitor.from_netlink(self._context, source=source)
        self._receive_buffer_bytes = receive_buffer_bytes
        self._loop: asyncio.AbstractEventLoop | None = None
        # The same socket, for SO_ERROR: pyudev reports an overflow only as "Error while
        # polling fd" (no errno) and never clears it, which would leave the fd readable forever.
        self._socket: socket.socket | None = None

    def open(self) -> None:
        """Start receiving (events queue in the socket until `attach`)."""
        try:
            self._monitor.set_receive_buffer_size(self._receive_buffer_bytes)
        except OSError as exc:  # needs CAP_NET_ADMIN beyond rmem_max; the default still works
            log.debug("could not set the uevent receive buffer: %s", exc)
        self._monitor.start()
        self._socket = socket.socket(fileno=os.dup(self._monitor.fileno()))

    def attach(
        self,
        loop: asyncio.AbstractEventLoop,
        on_event: Callable[[Uevent], None],
        on_overflow: Callable[[], None],
    ) -> None:
        """Deliver events to `on_event` from the loop; `on_overflow` when some were lost."""
        self._loop = loop
        loop.add_reader(self._monitor.fileno(), self._readable, on_event, on_overflow)

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._monitor.fileno())
            self._loop = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def _take_socket_error(self) -> int:
        """The socket's pending error (ENOBUFS after an overflow), clearing it; 0 if none."""
        if self._socket is None:
            return 0
        return self._socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)

    def _readable(
        self, on_event: Callable[[Uevent], None], on_overflow: Callable[[], None]
    ) -> None:
        for _ in range(_EVENTS_PER_WAKEUP):
            try:
                device = self._monitor.poll(timeout=0)
            except OSError as exc:
                code = exc.errno or self._take_socket_error()
                if code == errno.ENOBUFS:
                    log.warning("uevents were lost (receive buffer overflow): rescanning")
                    on_overflow()
                    continue
                log.warning("reading a uevent failed: %s", exc)
                return
            if device is None:
                return
            properties = dict(device.properties)
            on_event(
                Uevent(
                    action=device.action or properties.get("ACTION", ""),
                    subsystem=properties.get("SUBSYSTEM", ""),
                    devpath=properties.get("DEVPATH", ""),
                    properties=properties,
                )
            )
