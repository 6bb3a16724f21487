# SPDX-License-Identifier: LGPL-2.1-or-later
"""What the exported interfaces are given to serve their calls: `HandlerContext`.

The interface objects translate between the bus and the engine; this is everything they may
reach besides their own state. They never see the object tree that exports them, so the tree
depends on them and not the other way round.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from mdevd.bus.auth import Authorize
from mdevd.engine import Engine

#: `reload()`: an explicit reload of the definitions (the daemon's tells the service manager).
Reload = Callable[[], Awaitable[object]]
#: `list_devices()`: every device as ListDevices answers (`mdevd.bus.reads.ReadServer`).
ListDevices = Callable[[], Awaitable[list[list[Any]]]]
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
    #: The Manager's `Features`.
    features: tuple[str, ...]
    #: For methods that answer with an fd (Device.Open): the daemon's copy is closed once sent.
    hand_over: HandOver
