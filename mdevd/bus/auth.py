# SPDX-License-Identifier: LGPL-2.1-or-later
"""Every authorization decision of the D-Bus API: one table, default deny.

`METHOD_ACTIONS` maps each method to the polkit action it needs, or to `NO_CHECK` for reads.
A method missing from the table is denied, so a new method is unusable until someone decides
who may call it. Properties, `GetManagedObjects` and `Introspect` are served by dbus-fast
itself and never come here.

A check first learns the caller's uid from the bus daemon (remembered per connection,
`mdevd.bus.caller`). uid 0 is allowed without asking polkitd each time, as polkitd itself
allows root every action it knows (`PolkitAuthority.allows_root`). Anyone else is checked by
polkitd about the caller's unique bus name (`mdevd.bus.polkit`), and its answer mapped onto the
contract's errors: authorized -> allowed; the dialog dismissed -> `NotAuthorizedDismissed`;
authentication would help -> `NotAuthorizedCanObtain`; otherwise `NotAuthorized`. When polkitd
is not on the bus at all, only uid 0 (as the bus daemon authenticated the connection) is
allowed. Any other failure (a timeout, an error reply, an action polkitd does not know because
the .policy file is missing) denies, root included: a broken authority is never a reason to
allow.

Checks are limited per uid, so that one user's flood cannot keep polkitd from answering for
others (`mdevd.bus.polkit.FairLimiter`): beyond its share a caller gets `Busy` at once, which
is no decision about it. Refusals are logged per uid at most `LOG_BURST` times per
`LOG_PERIOD`, then counted in one line, so a flood does not flood the log too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from dbus_fast.aio import MessageBus

from mdevd.bus.caller import CallerTracker
from mdevd.bus.names import ACTION_CONFIGURE_DEVICES, ACTION_MANAGE_DEVICES, ACTION_USE_DEVICE
from mdevd.bus.polkit import (
    CallerOverloaded,
    PolkitAuthority,
    PolkitFailure,
    PolkitUnavailable,
)
from mdevd.errors import (
    Busy,
    MdevdError,
    NotAuthorized,
    NotAuthorizedCanObtain,
    NotAuthorizedDismissed,
)

log = logging.getLogger(__name__)

#: Refusals logged in full per caller (uid) in each period; the rest are only counted...
LOG_BURST: Final = 5
#: ...and their number logged in one line at the end of the period.
LOG_PERIOD: Final = 60.0
#: Callers whose log periods are remembered; beyond that, idle ones are forgotten early.
MAX_LOG_CALLERS: Final = 1024
#: Whom refusals are counted against when the bus cannot say who called.
UNIDENTIFIED: Final = "unidentified callers"

#: Table value for methods anyone may call.
NO_CHECK: Final = ""

#: `authorize(method_name, interactive)` for the caller of the method call being served:
#: returns when it is allowed, raises otherwise (`Authorizer.authorize_caller`).
Authorize = Callable[[str, bool], Awaitable[None]]
#: `authorize_for(what, action, interactive)`: the same for an explicit action
#: (`Authorizer.authorize_caller_for`).
AuthorizeFor = Callable[[str, str, bool], Awaitable[None]]

#: Method name (unique across the three interfaces) -> polkit action id, or NO_CHECK.
METHOD_ACTIONS: Final[Mapping[str, str]] = MappingProxyType(
    {
        # org.mdevd.Mdevd1.Manager
        "CreateDevice": ACTION_MANAGE_DEVICES,
        "DefineDevice": ACTION_CONFIGURE_DEVICES,
        "GetDevice": NO_CHECK,
        # Every device in one compact reply (issue 15: reads at scale); open like the properties.
        "ListDevices": NO_CHECK,
        # What `mdevctl list` shows of every device (issue 20): the same reads, fewer fields.
        "ListDeviceSummaries": NO_CHECK,
        "Reload": ACTION_CONFIGURE_DEVICES,
        # org.mdevd.Mdevd1.Device
        "Start": ACTION_MANAGE_DEVICES,
        "Stop": ACTION_MANAGE_DEVICES,
        "Define": ACTION_CONFIGURE_DEVICES,
        "Undefine": ACTION_CONFIGURE_DEVICES,
        "Update": ACTION_CONFIGURE_DEVICES,
        # Runs the device's callout script (as root), so not for everyone.
        "QueryAttributes": ACTION_MANAGE_DEVICES,
        # Hands the caller an open fd to the device's VFIO node: using the device, which
        # neither managing nor configuring devices implies by itself.
        "Open": ACTION_USE_DEVICE,
    }
)


def required_action(method_name: str) -> str:
    """The action `method_name` needs (`NO_CHECK` for none); `NotAuthorized` if not in the table."""
    action = METHOD_ACTIONS.get(method_name)
    if action is None:
        raise NotAuthorized(f"{method_name}: no authorization rule exists for this method")
    return action


@dataclass(slots=True)
class _LogPeriod:
    start: float
    logged: int = 0
    suppressed: int = 0
    level: int = logging.DEBUG
    flush: asyncio.TimerHandle | None = None


class ThrottledLog:
    """Log lines about callers: each caller's first `burst` lines in a `period` in full, then
    one line at the end of the period saying how many more there were.

    What it remembers is bounded: a caller's period is forgotten when it ends (or, beyond
    `max_callers` callers, as soon as nothing of it waits to be counted).
    """

    def __init__(
        self,
        logger: logging.Logger,
        burst: int = LOG_BURST,
        period: float = LOG_PERIOD,
        *,
        max_callers: int = MAX_LOG_CALLERS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.burst = burst
        self.period = period
        self.max_callers = max_callers
        self.clock = clock
        self._periods: dict[Hashable, _LogPeriod] = {}

    def log(self, caller: Hashable, level: int, message: str, *args: Any) -> None:
        """Log `message % args` at `level`, or count it against `caller`."""
        now = self.clock()
        period = self._periods.get(caller)
        if period is not None and now - period.start >= self.period:
            self._end(caller)
            period = None
        if period is None:
            if len(self._periods) >= self.max_callers:
                self._forget_quiet(now)
            period = self._periods[caller] = _LogPeriod(start=now)
        if period.logged < self.burst:
            period.logged += 1
            self.logger.log(level, message, *args)
            return
        period.suppressed += 1
        period.level = max(period.level, level)
        if period.flush is None:
            delay = max(0.0, period.start + self.period - now)
            period.flush = asyncio.get_running_loop().call_later(delay, self._end, caller)

    def _end(self, caller: Hashable) -> None:
        period = self._periods.pop(caller, None)
        if period is None:
            return
        if period.flush is not None:
            period.flush.cancel()
        if period.suppressed:
            who = f"uid {caller}" if isinstance(caller, int) else str(caller)
            self.logger.log(
                period.level,
                "%s: %d more refusals in %g s not logged one by one",
                who,
                period.suppressed,
                self.period,
            )

    def _forget_quiet(self, now: float) -> None:
        for caller, period in list(self._periods.items()):
            if not period.suppressed or now - period.start >= self.period:
                self._end(caller)


class Authorizer:
    """Decides whether a caller may invoke a method; returns if so, raises NotAuthorized* if
    not, or `Busy` if the caller has too many checks in progress to be decided now.

    Never blocks the event loop: the only I/O is async queries to polkitd and the bus daemon,
    each with a timeout.
    """

    def __init__(
        self,
        bus: MessageBus,
        callers: CallerTracker | None = None,
        authority: PolkitAuthority | None = None,
    ) -> None:
        self.bus = bus
        self.callers = callers if callers is not None else CallerTracker(bus)
        self.authority = authority if authority is not None else PolkitAuthority(bus)
        self.refusals = ThrottledLog(log)

    async def authorize(self, method_name: str, sender: str, interactive: bool) -> None:
        """Allow `sender` (a unique bus name) to call `method_name`, or raise.

        `interactive` is the caller's `auth.interactive` option: whether polkit may ask for a
        password.
        """
        action = required_action(method_name)
        if action == NO_CHECK:
            return
        await self.authorize_action(method_name, action, sender, interactive)

    async def authorize_caller_for(self, what: str, action: str, interactive: bool) -> None:
        """Allow the caller of the call being served `action` beyond its method's own (to
        change another owner's device: `mdevd.bus.owners`), or raise; `what` names the call."""
        await self.authorize_action(what, action, self.callers.current_sender(), interactive)

    async def authorize_action(
        self, method_name: str, action: str, sender: str, interactive: bool
    ) -> None:
        try:
            uid = await self.callers.uid(sender)
        except MdevdError as error:
            # Not knowing who calls is a reason to deny, never to allow.
            denial = NotAuthorized(f"{method_name}: {error.message}")
            self.refusals.log(UNIDENTIFIED, logging.INFO, "denied: %s", denial.message)
            raise denial from None
        try:
            await self._decide(method_name, action, sender, uid, interactive)
        except Busy as refusal:
            self.refusals.log(uid, logging.INFO, "refused: %s", refusal.message)
            raise
        except MdevdError as denial:
            self.refusals.log(uid, logging.INFO, "denied: %s", denial.message)
            raise

    async def authorize_caller(self, method_name: str, interactive: bool) -> None:
        """`authorize` for the caller of the method call being served (see `mdevd.bus.caller`)."""
        await self.authorize(method_name, self.callers.current_sender(), interactive)

    async def _decide(
        self, method_name: str, action: str, sender: str, uid: int, interactive: bool
    ) -> None:
        who = f"{method_name}: caller {sender}"
        if uid == 0 and await self.authority.allows_root(action):
            return
        try:
            result = await self.authority.check(sender, action, interactive, caller=uid)
        except PolkitUnavailable:
            # Without polkitd nobody can grant anything: uid 0 is allowed, everyone else denied.
            if uid == 0:
                return
            raise NotAuthorized(
                f"{who} (uid {uid}) is not allowed to {action}: "
                "polkit is not running, so only root is"
            ) from None
        except CallerOverloaded as overload:
            raise Busy(
                f"{who} (uid {uid}) already has {overload.pending} calls waiting for "
                "authorization: refused without asking polkit; retry once they are answered"
            ) from None
        except PolkitFailure as failure:
            self.refusals.log(uid, logging.WARNING, "polkit gave no decision, denying: %s", failure)
            raise NotAuthorized(f"{who} is not allowed to {action}: {failure}") from None
        if result.is_authorized:
            return
        if result.dismissed:
            raise NotAuthorizedDismissed(
                f"{who}: the authentication dialog for {action} was dismissed"
            )
        if result.is_challenge:
            if interactive:
                raise NotAuthorizedCanObtain(
                    f"{who} must authenticate for {action}, "
                    "but no authentication agent is there to ask"
                )
            raise NotAuthorizedCanObtain(
                f"{who} must authenticate for {action}: retry with auth.interactive=true"
            )
        raise NotAuthorized(f"{who} is not authorized for {action}")
