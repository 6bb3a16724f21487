# SPDX-License-Identifier: LGPL-2.1-or-later
"""Asking polkitd: one `CheckAuthorization` for a caller, asynchronous and bounded in time.

The subject is always `system-bus-name` with the caller's unique name: polkitd resolves the
uid, pid and start time of the connection itself, so nothing the caller controls (and no pid
that could be recycled) enters the decision. The event loop never waits on polkitd: the call is
an awaited D-Bus message with a timeout, and on timeout it is cancelled in polkitd as well
(`CancelCheckAuthorization`), so an authentication dialog does not outlive the request.

This module only asks and reports; what an answer means for a method is `mdevd.bus.auth`'s
decision.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from mdevd.bus import names

log = logging.getLogger(__name__)

#: How long polkitd may take to decide without asking anyone. It answers in about a
#: millisecond; the bound sits above polkit's own 15 s limit for a runaway rule script and
#: below the 25 s a libdbus or GDBus client waits for our reply by default.
CHECK_TIMEOUT: Final = 20.0
#: How long a person may take to answer an authentication dialog (`auth.interactive`).
INTERACTIVE_CHECK_TIMEOUT: Final = 300.0
#: How long a cancellation after a timeout may take; it is best effort.
CANCEL_TIMEOUT: Final = 5.0

#: CheckAuthorization flag: polkitd may ask an authentication agent.
ALLOW_USER_INTERACTION: Final = 0x1

#: Errors from the bus daemon: nobody owns the polkit name and none can be activated.
_ABSENT_ERRORS: Final = frozenset(
    {
        "org.freedesktop.DBus.Error.ServiceUnknown",
        "org.freedesktop.DBus.Error.NameHasNoOwner",
    }
)


class PolkitUnavailable(Exception):
    """polkitd is not on the bus (no owner, not activatable)."""


class PolkitFailure(Exception):
    """polkitd did not give an answer: an error reply, a timeout or a malformed reply."""


@dataclass(frozen=True, slots=True)
class PolkitResult:
    """polkitd's `(is_authorized, is_challenge, details)`."""

    is_authorized: bool
    is_challenge: bool
    details: Mapping[str, str] = field(default_factory=dict)

    @property
    def dismissed(self) -> bool:
        """The user closed the authentication dialog instead of authenticating."""
        return self.details.get("polkit.dismissed") == "true"


class PolkitAuthority:
    """The `org.freedesktop.PolicyKit1.Authority` of the bus `bus` is connected to."""

    def __init__(
        self,
        bus: MessageBus,
        timeout: float = CHECK_TIMEOUT,
        interactive_timeout: float = INTERACTIVE_CHECK_TIMEOUT,
    ) -> None:
        self.bus = bus
        self.timeout = timeout
        self.interactive_timeout = interactive_timeout
        # polkitd wants cancellation ids unique per calling connection.
        self._cancellation_ids = (f"mdevd-{n}" for n in itertools.count(1))
        # Cancellations in flight; the loop itself keeps only weak references to tasks.
        self._cancels: set[asyncio.Task[None]] = set()

    async def check(self, sender: str, action_id: str, interactive: bool) -> PolkitResult:
        """Is the connection `sender` authorized for `action_id`?

        `interactive` lets polkitd ask an authentication agent. Raises `PolkitUnavailable`
        when polkitd is not on the bus and `PolkitFailure` when it gives no usable answer.
        """
        cancellation_id = next(self._cancellation_ids)
        timeout = self.interactive_timeout if interactive else self.timeout
        query = Message(
            destination=names.POLKIT_BUS_NAME,
            path=names.POLKIT_PATH,
            interface=names.POLKIT_INTERFACE,
            member="CheckAuthorization",
            signature="(sa{sv})sa{ss}us",
            body=[
                ["system-bus-name", {"name": Variant("s", sender)}],
                action_id,
                {},
                ALLOW_USER_INTERACTION if interactive else 0,
                cancellation_id,
            ],
        )
        try:
            async with asyncio.timeout(timeout):
                reply = await self.bus.call(query)
        except TimeoutError:
            self._cancel_later(cancellation_id)
            raise PolkitFailure(
                f"polkit did not decide on {action_id} for {sender} within {timeout:g} s"
            ) from None
        except Exception as error:  # a disconnected bus, say: no answer is a failure
            raise PolkitFailure(f"asking polkit failed: {error}") from None
        if reply is None:  # dbus-fast answers None only for NO_REPLY_EXPECTED calls
            raise PolkitFailure("polkit sent no reply")
        if reply.message_type is MessageType.ERROR:
            detail = reply.body[0] if reply.body and isinstance(reply.body[0], str) else ""
            # Only the bus itself can say that nobody owns the name: polkitd forwards the same
            # error names about the subject (a caller that has disconnected meanwhile).
            if reply.sender == names.DBUS_BUS_NAME and reply.error_name in _ABSENT_ERRORS:
                raise PolkitUnavailable(f"polkit is not on the bus ({reply.error_name})")
            raise PolkitFailure(f"polkit failed: {reply.error_name}: {detail}")
        return _parse_result(reply)

    def _cancel_later(self, cancellation_id: str) -> None:
        task = asyncio.get_running_loop().create_task(self._cancel(cancellation_id))
        self._cancels.add(task)
        task.add_done_callback(self._cancels.discard)

    async def _cancel(self, cancellation_id: str) -> None:
        """Ask polkitd to drop a check we stopped waiting for (and close its dialog)."""
        query = Message(
            destination=names.POLKIT_BUS_NAME,
            path=names.POLKIT_PATH,
            interface=names.POLKIT_INTERFACE,
            member="CancelCheckAuthorization",
            signature="s",
            body=[cancellation_id],
        )
        try:
            async with asyncio.timeout(CANCEL_TIMEOUT):
                reply = await self.bus.call(query)
        except Exception as error:  # best effort: the check already counts as failed
            log.debug("cancelling polkit check %s failed: %s", cancellation_id, error)
            return
        if reply is not None and reply.message_type is MessageType.ERROR:
            log.debug("cancelling polkit check %s: %s", cancellation_id, reply.error_name)


def _parse_result(reply: Message) -> PolkitResult:
    body: list[Any] = reply.body
    if reply.signature != "(bba{ss})" or len(body) != 1:
        raise PolkitFailure(f"polkit answered with signature {reply.signature!r}")
    is_authorized, is_challenge, details = body[0]
    if not (
        isinstance(is_authorized, bool)
        and isinstance(is_challenge, bool)
        and isinstance(details, dict)
    ):
        raise PolkitFailure("polkit answered with a malformed result")
    return PolkitResult(is_authorized, is_challenge, dict(details))
