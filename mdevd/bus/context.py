# SPDX-License-Identifier: LGPL-2.1-or-later
"""What the exported interfaces are given to serve their calls: `HandlerContext`.

The interface objects translate between the bus and the engine; this is everything they may
reach besides their own state. They never see the object tree that exports them, so the tree
depends on them and not the other way round.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mdevd.bus import options as opts
from mdevd.bus.auth import Authorize, AuthorizeFor
from mdevd.bus.names import ACTION_CONFIGURE_DEVICES
from mdevd.bus.owners import CallerOwners, LifetimeWatcher
from mdevd.engine import Engine
from mdevd.owners import LIFETIME_MANUAL, Owner

#: `reload()`: an explicit reload of the definitions (the daemon's tells the service manager).
Reload = Callable[[], Awaitable[object]]
#: `list_devices()`: every device as ListDevices answers (`mdevd.bus.reads.ReadServer`).
ListDevices = Callable[[], Awaitable[list[list[Any]]]]
#: `list_device_summaries()`: every device as ListDeviceSummaries answers (the same server).
ListDeviceSummaries = Callable[[], Awaitable[list[list[Any]]]]
#: `hand_over(fd)`: `fd` becomes a reply's value; the connection closes it once the reply is
#: sent (`mdevd.bus.fds.OutgoingFds.hand_over`). Returns `fd`.
HandOver = Callable[[int], int]


@dataclass(frozen=True, slots=True)
class HandlerContext:
    """The daemon as the handlers of D-Bus calls see it."""

    #: Decides and acts; every change a call asks for goes through it.
    engine: Engine
    #: Used by `mdevd.bus.exported` only, before a method's work runs: handlers never call it.
    authorize: Authorize
    reload: Reload
    list_devices: ListDevices
    list_device_summaries: ListDeviceSummaries
    #: The Manager's `Features`.
    features: tuple[str, ...]
    #: For methods that answer with an fd (Device.Open): the daemon's copy is closed once sent.
    hand_over: HandOver
    #: Who callers are as owners, and the lifetimes that end with them; None where the tree
    #: runs without them (tests of the bus layer alone): nothing then records an owner.
    owners: CallerOwners | None = None
    lifetimes: LifetimeWatcher | None = None
    #: Authorizes the caller for an action beyond its method's own.
    authorize_for: AuthorizeFor | None = None

    async def owner(
        self, values: Mapping[str, Any], lifetime: str = LIFETIME_MANUAL
    ) -> Owner | None:
        """The owner a Create or Define call records (None without owners)."""
        if self.owners is None:
            return None
        return await self.owners.identify(opts.owner_label(values), lifetime)

    async def check_owner(
        self, uuid: str, values: Mapping[str, Any], what: str, interactive: bool
    ) -> None:
        """Let the caller change device `uuid` only if it owns it, or may configure devices
        (`mdevd.bus.owners.CallerOwners.check`)."""
        if self.owners is None or self.authorize_for is None:
            return
        authorize_for = self.authorize_for

        async def configure() -> None:
            await authorize_for(what, ACTION_CONFIGURE_DEVICES, interactive)

        await self.owners.check(
            self.engine.ownership.get(uuid), opts.owner_label(values), uuid, configure
        )
