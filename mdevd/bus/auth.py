"""Every authorization decision of the D-Bus API: one table, default deny.

`METHOD_ACTIONS` maps each method to the polkit action it needs, or to `NO_CHECK` for reads.
A method missing from the table is denied, so a new method is unusable until someone decides
who may call it. Properties, `GetManagedObjects` and `Introspect` are served by dbus-fast
itself and never come here.

For now only uid 0 is allowed. The polkit issue replaces `Authorizer._decide` with a
`CheckAuthorization` call for a `system-bus-name` subject (the caller's unique name: polkitd
resolves uid and pid itself, where a `unix-process` subject built from a pid is racy), keeping
uid 0 only when polkitd is not on the bus, and denying on any other failure.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from dbus_fast.aio import MessageBus

from mdevd.bus.caller import CallerTracker
from mdevd.bus.names import ACTION_CONFIGURE_DEVICES, ACTION_MANAGE_DEVICES
from mdevd.errors import MdevdError, NotAuthorized

#: Table value for methods anyone may call.
NO_CHECK: Final = ""

#: Method name (unique across the three interfaces) -> polkit action id, or NO_CHECK.
METHOD_ACTIONS: Final[Mapping[str, str]] = MappingProxyType(
    {
        # org.mdevd.Mdevd1.Manager
        "CreateDevice": ACTION_MANAGE_DEVICES,
        "DefineDevice": ACTION_CONFIGURE_DEVICES,
        "GetDevice": NO_CHECK,
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

    Never blocks the event loop: the only I/O is an async query to the bus daemon.
    """

    def __init__(self, bus: MessageBus, callers: CallerTracker | None = None) -> None:
        self.bus = bus
        self.callers = callers if callers is not None else CallerTracker(bus)

    async def authorize(self, method_name: str, sender: str, interactive: bool) -> None:
        """Allow `sender` (a unique bus name) to call `method_name`, or raise.

        `interactive` is the caller's `auth.interactive` option: whether polkit may ask for a
        password. Root-only authorization never asks, so it has no effect yet.
        """
        action = required_action(method_name)
        if action == NO_CHECK:
            return
        await self._decide(method_name, action, sender, interactive)

    async def authorize_caller(self, method_name: str, interactive: bool) -> None:
        """`authorize` for the caller of the method call being served (see `mdevd.bus.caller`)."""
        await self.authorize(method_name, self.callers.current_sender(), interactive)

    async def _decide(self, method_name: str, action: str, sender: str, interactive: bool) -> None:
        try:
            uid = await self.callers.uid(sender)
        except MdevdError as error:
            # Not knowing who calls is a reason to deny, never to allow.
            raise NotAuthorized(f"{method_name}: {error.message}") from None
        if uid != 0:
            raise NotAuthorized(
                f"{method_name}: caller {sender} (uid {uid}) is not allowed to {action}: "
                "only root is"
            )
