# SPDX-License-Identifier: LGPL-2.1-or-later
"""Talking to the service manager: sd_notify(3) readiness, status, reload, stop and watchdog.

The protocol is one datagram of newline-separated `KEY=VALUE` assignments to the socket named
by `$NOTIFY_SOCKET` (abstract when it starts with `@`), so no libsystemd is needed. Without the
variable (a daemon started by hand or by a test) every call does nothing.

The watchdog keep-alive is an asyncio task: it runs only while the event loop runs, so a loop
wedged by a blocking call stops pinging and systemd (`WatchdogSec=`) restarts the daemon. A
blocked sysfs write does not count as wedged: those run in the engine's worker threads and a
VM holding a device may legitimately block one for a long time.

`STATUS=` follows the device counts: `StatusFollower`, one of the engine's subscribers,
schedules one status update per burst of changes.

`READY=1` waits for the startup autostart (a VM started right after mdevd needs its device),
which can outlast the start timeout (`TimeoutStartSec=`, 90 s by default) when many devices
are slow to create. `StartupExtender` then asks for more time (`EXTEND_TIMEOUT_USEC=`, with the
autostart's progress in `STATUS=`) while attempts keep finishing: an attempt that takes longer
than any one can (the engine's own timeouts bound each) stops the extensions, so a wedged
startup still meets the timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping, MutableMapping

from mdevd.engine import DeviceEvent, Event, NullListener
from mdevd.model import DeviceState

log = logging.getLogger(__name__)


class Notifier:
    """Sends sd_notify messages; does nothing when there is no notification socket."""

    def __init__(self, address: str | None) -> None:
        self.address = address
        self._socket: socket.socket | None = None
        self._last_status: str | None = None

    @classmethod
    def from_environment(cls, environ: MutableMapping[str, str] | None = None) -> Notifier:
        env = os.environ if environ is None else environ
        # Removed once read, so that child processes (mdevctl's callout scripts) cannot speak
        # for the daemon.
        return cls(env.pop("NOTIFY_SOCKET", None) or None)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: str) -> bool:
        """Send one message (`send(READY="1", STATUS="...")`); True if it was sent.

        Never blocks the event loop: the socket is non-blocking, and a service manager that
        does not read its socket loses the message (logged) rather than stalling the daemon.
        """
        if self.address is None:
            return False
        # One assignment per line: a value (an error message in STATUS=) must not add lines.
        fields = {key: " ".join(value.splitlines()) for key, value in fields.items()}
        message = "".join(f"{key}={value}\n" for key, value in fields.items()).encode()
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            if self._socket is None:
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
                )
            self._socket.sendto(message, target)
        except OSError as exc:
            reason = "its queue is full" if exc.errno == errno.EAGAIN else exc.strerror
            log.warning("could not notify the service manager at %s: %s", self.address, reason)
            return False
        if "STATUS" in fields:
            self._last_status = fields["STATUS"]
        return True

    def ready(self, status: str) -> None:
        self.send(READY="1", STATUS=status)

    def status(self, status: str) -> None:
        """Send `STATUS=` if it differs from the last one sent."""
        if status != self._last_status:
            self.send(STATUS=status)

    def reloading(self) -> None:
        # MONOTONIC_USEC lets systemd >= 253 (Type=notify-reload) tell this reload from an
        # earlier one; older versions ignore it.
        self.send(
            RELOADING="1",
            MONOTONIC_USEC=str(time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000),
            STATUS="Reloading definitions",
        )

    def extend_timeout(self, seconds: float, status: str) -> None:
        self.send(EXTEND_TIMEOUT_USEC=str(int(seconds * 1_000_000)), STATUS=status)

    def stopping(self) -> None:
        self.send(STOPPING="1", STATUS="Stopping; devices are left as they are")

    def watchdog(self) -> None:
        self.send(WATCHDOG="1")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def watchdog_interval(environ: MutableMapping[str, str] | None = None) -> float | None:
    """Seconds between keep-alives if the service manager wants them (sd_watchdog_enabled(3)).

    `WATCHDOG_USEC` is the timeout; pings go at half of it, as systemd recommends.
    `WATCHDOG_PID`, when set, must be this process: the variables may have been inherited.
    """
    env = os.environ if environ is None else environ
    # Removed once read, as NOTIFY_SOCKET is (`Notifier.from_environment`).
    usec_text = env.pop("WATCHDOG_USEC", None)
    pid_text = env.pop("WATCHDOG_PID", None)
    if not usec_text:
        return None
    try:
        usec = int(usec_text)
        if pid_text and int(pid_text) != os.getpid():
            return None
    except ValueError:
        log.warning("ignoring a malformed watchdog setting: WATCHDOG_USEC=%s", usec_text)
        return None
    if usec <= 0:
        return None
    return usec / 2_000_000


async def _cancel(task: asyncio.Task[None] | None) -> None:
    """Cancel a periodic task and wait until it has ended."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class Watchdog:
    """Pings the service manager from the event loop every `interval` seconds."""

    def __init__(self, notifier: Notifier, interval: float) -> None:
        self.notifier = notifier
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        log.debug("watchdog: pinging every %.3g s", self.interval)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="watchdog")

    async def _run(self) -> None:
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        await _cancel(self._task)
        self._task = None


class StartupExtender:
    """Asks for more start time every `interval` seconds once startup has run `grace`
    seconds, while the last sign of progress (`progressed()`) is less than `stall_limit`
    seconds old. Each extension covers three intervals: one lost datagram costs nothing."""

    def __init__(
        self,
        notifier: Notifier,
        status: Callable[[], str],
        *,
        grace: float = 5.0,
        interval: float = 5.0,
        stall_limit: float = 60.0,
    ) -> None:
        self.notifier = notifier
        self.status = status
        self.grace = grace
        self.interval = interval
        self.stall_limit = stall_limit
        self._last_progress = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    def progressed(self) -> None:
        self._last_progress = time.monotonic()

    def start(self) -> None:
        if self.notifier.enabled:
            self._last_progress = time.monotonic()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="extender")

    async def _run(self) -> None:
        await asyncio.sleep(self.grace)
        stalled_before = False
        while True:
            stalled = time.monotonic() - self._last_progress
            if stalled < self.stall_limit:
                self.notifier.extend_timeout(3 * self.interval, self.status())
            elif not stalled_before:
                log.warning(
                    "startup has made no progress for %.0f s: not asking for more time", stalled
                )
            stalled_before = stalled >= self.stall_limit
            await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        await _cancel(self._task)
        self._task = None


class AutostartProgress(NullListener):
    """An engine subscriber for the startup, when only autostart changes devices: each attempt
    that ends (started or failed) is progress."""

    def __init__(self, on_progress: Callable[[], None]) -> None:
        self.on_progress = on_progress
        self.attempted: set[str] = set()

    def device_event(self, state: DeviceState, event: DeviceEvent) -> None:
        # Autostart's (or, for a device adopted, the kernel's).
        if event.kind in (Event.STARTED, Event.START_FAILED):
            self.attempted.add(state.uuid)
            self.on_progress()


def device_status(devices: Mapping[str, DeviceState], problems: int = 0) -> str:
    """The one-line summary `systemctl status` shows: `3 defined, 2 active`."""
    defined = sum(state.defined for state in devices.values())
    active = sum(state.active for state in devices.values())
    text = f"{defined} defined, {active} active"
    if problems:
        text += f"; {problems} problem{'s' * (problems != 1)} in the definitions"
    return text


class StatusFollower(NullListener):
    """An engine subscriber that keeps `STATUS=` current with the device counts.

    Changes come in bursts (a driver reload, a reload of many files); one status message is
    sent per burst, from the loop, after the burst's callbacks ran.
    """

    def __init__(self, describe: Callable[[], str], notifier: Notifier) -> None:
        self.describe = describe
        self.notifier = notifier
        self.paused = False
        self._scheduled = False

    def refresh(self) -> None:
        """Send the current status now (unless paused, e.g. while reloading)."""
        self._scheduled = False
        if not self.paused:
            self.notifier.status(f"Ready: {self.describe()}")

    def _changed(self) -> None:
        if not self._scheduled and self.notifier.enabled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.refresh)

    def device_changed(self, state: DeviceState) -> None:
        self._changed()

    def device_removed(self, uuid: str) -> None:
        self._changed()
