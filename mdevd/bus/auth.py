# SPDX-License-Identifier: LGPL-2.1-or-later
"""Every authorization decision of the D-Bus API: one table, default deny.

`METHOD_ACTIONS` maps each method to the polkit action it needs, or to `NO_CHECK` for reads.
A method missing from the table is denied, so a new method is unusable until someone decides
who may call it. Properties, `GetManagedObjects` and `Introspect` are served by dbus-fast
itself and never come here.

A check asks polkitd about the caller's unique bus name (`mdevd.bus.polkit`) and maps its
answer onto the contract's errors: authorized -> allowed; the dialog dismissed ->
`NotAuthorizedDismissed`; authentication would help -> `NotAuthorizedCanObtain`; otherwise
`NotAuthorized`. When polkitd is not on the bus at all, only uid 0 (as the bus daemon
authenticated the connection) is allowed. Any other failure (a timeout, an error reply, an
action polkitd does not know because the .policy file is missing) denies, root included:
a broken authority is never a reason to allow.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from dbus_fast.aio import MessageBus

from mdevd.bus.caller import CallerTracker
from mdevd.bus.names import ACTION_CONFIGURE_DEVICES, ACTION_MANAGE_DEVICES
from mdevd.bus.polkit import PolkitAuthority, PolkitFailure, PolkitUnavailable
from mdevd.errors import (
    MdevdError,
    NotAuthorized,
    NotAuthorizedCanObtain,
    NotAuthorizedDismissed,
)

log = logging.getLogger(__name__)

#: Table value for methods anyone may call.
NO_CHECK: Final = ""

#: Method name (unique across the three interfaces) -> polkit action id, or NO_CHECK.
METHOD_ACTIONS: Final[Mapping[str, str]] = MappingProxyType(
    {
        # org.mdevd.Mdevd1.Manager
        "CreateDevice": ACTION_MANAGE_DEVICES,
        "DefineDevice": ACTION_CONFIGURE_DEVICES,
        "GetDevice": NO_CHECK,
        # Every device in one compact reply (issue 15: reads at scale); open like the properties.
        "ListDevices": NO_CHECK,
        "Reload": ACTION_CONFIGURE_DEVICES,
        # org.mdevd.Mdevd1.Device
        "Start": ACTION_MANAGE_DEVICES,
        "Stop": ACTION_MANAGE_DEVICES,
        "Define": ACTION_CONFIGURE_DEVICES,
        "Undefine": ACTION_CONFIGURE_DEVICES,
        "Update": ACTION_CONFIGURE_DEVICES,
        # Runs the device's callout script (as root), so not for everyone.
        "QueryAttributes": ACTION_MANAGE_DEVICES,
    }
)


def required_action(method_name: str) -> str:
    """The action `method_name` needs (`NO_CHECK` for none); `NotAuthorized` if not in the table."""
    action = METHOD_ACTIONS.get(method_name)
    if action is None:
        raise NotAuthorized(f"{method_name}: no authorization rule exists for this method")
    return action


class Authorizer:
    """Decides whether a caller may invoke a method; returns if so, raises NotAuthorized* if not.

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

    async def authorize(self, method_name: str, sender: str, interactive: bool) -> None:
        """Allow `sender` (a unique bus name) to call `method_name`, or raise.

        `interactive` is the caller's `auth.interactive` option: whether polkit may ask for a
        password.
        """
        action = required_action(method_name)
        if action == NO_CHECK:
            return
        try:
            await self._decide(method_name, action, sender, interactive)
        except MdevdError as denial:
            log.info("denied: %s", denial.message)
            raise

    async def authorize_caller(self, method_name: str, interactive: bool) -> None:
        """`authorize` for the caller of the method call being served (see `mdevd.bus.caller`)."""
        await self.authorize(method_name, self.callers.current_sender(), interactive)

    async def _decide(self, method_name: str, action: str, sender: str, interactive: bool) -> None:
        who = f"{method_name}: caller {sender}"
        try:
            result = await self.authority.check(sender, action, interactive)
        except PolkitUnavailable:
            await self._root_only(method_name, action, sender)
            return
        except PolkitFailure as failure:
            log.warning("polkit gave no decision, denying: %s", failure)
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

    async def _root_only(self, method_name: str, action: str, sender: str) -> None:
        """Without polkitd nobody can grant anything: uid 0 is allowed, everyone else denied."""
        try:
            uid = await self.callers.uid(sender)
        except MdevdError as error:
            # Not knowing who calls is a reason to deny, never to allow.
            raise NotAuthorized(f"{method_name}: {error.message}") from None
        if uid != 0:
            raise NotAuthorized(
                f"{method_name}: caller {sender} (uid {uid}) is not allowed to {action}: "
                "polkit is not running, so only root is"
            )
