"""Kernel events: a pyudev monitor read from the asyncio loop.

The monitor listens on udev's netlink group (events after udevd's rule processing, the way
every udev client receives them); `source="kernel"` is for machines without udevd. It is opened
before the daemon's first look at sysfs, so no change can fall between the two. The fd is
non-blocking and read from the loop: no thread, nothing blocks.

Only the event's own properties are used; what changed is read back from the kernel layer,
under its configurable root, by the engine.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Callable
from dataclasses import dataclass

import pyudev

log = logging.getLogger(__name__)

#: Big enough for a driver reload with hundreds of devices; on overflow we rescan anyway.
RECEIVE_BUFFER_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Uevent:
    action: str
    subsystem: str
    devpath: str
    properties: dict[str, str]


class UeventSource:
    def __init__(self, source: str = "udev") -> None:
        self._context = pyudev.Context()
        self._monitor = pyudev.Monitor.from_netlink(self._context, source=source)
        self._loop: asyncio.AbstractEventLoop | None = None

    def open(self) -> None:
        """Start receiving (events queue in the socket until `attach`)."""
        try:
            self._monitor.set_receive_buffer_size(RECEIVE_BUFFER_BYTES)
        except OSError as exc:  # needs CAP_NET_ADMIN beyond rmem_max; the default still works
            log.debug("could not enlarge the uevent receive buffer: %s", exc)
        self._monitor.start()

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

    def _readable(
        self, on_event: Callable[[Uevent], None], on_overflow: Callable[[], None]
    ) -> None:
        # Drain what is queued now, but bounded, so a storm cannot starve method calls.
        for _ in range(256):
            try:
                device = self._monitor.poll(timeout=0)
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
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
