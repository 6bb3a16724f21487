# SPDX-License-Identifier: LGPL-2.1-or-later
"""The engine: the one place that decides what happens to a device.

Its rooms, each one concept:

- `core`: the `Engine`, which decides: the operations (create, define, start, stop, update,
  undefine), reconciling definitions and the kernel (rescans, reloads, kernel events), and
  the create-then-attributes transactions with their rollback.
- `view`: what clients see of a device (`DeviceState`), made from what the engine knows.
- `ports`: what the engine needs from its surroundings (`Kernel`, `DefinitionStore`,
  `OperationHooks`) and what it tells them (`Listener`, `DeviceEvent` with its `Event` and
  `Reason`), with the null objects (`NoHooks`, `NullListener`).
- `ledger`: the bookkeeping of the engine's own operations, so that a kernel event or a
  rescan never takes their effect for someone else's; pure decisions, no I/O.
- `autostart`: autostart runs per parent registration, with retries; handed plain functions.
- `runner`: the worker pool for blocking I/O with its timeout, keyed locks, and the one
  "run again if asked meanwhile" helper (`Coalescer`).

Another kernel backend implements `ports.Kernel` and is handed to `Engine` where the daemon
builds it (`mdevd.daemon.Daemon`); a new device field goes into `mdevd.model` (`Definition`,
`DeviceState`), the store's format (`mdevd.definitions`) and `view.device_state`.
"""

from mdevd.engine.core import Engine, EngineSettings, KernelSnapshot
from mdevd.engine.ports import (
    DefinitionStore,
    DeviceEvent,
    Event,
    HookAction,
    Kernel,
    Listener,
    LoadedDefinitions,
    NoHooks,
    NullListener,
    OperationHooks,
    Reason,
    RegistrationId,
)

__all__ = [
    "DefinitionStore",
    "DeviceEvent",
    "Engine",
    "EngineSettings",
    "Event",
    "HookAction",
    "Kernel",
    "KernelSnapshot",
    "Listener",
    "LoadedDefinitions",
    "NoHooks",
    "NullListener",
    "OperationHooks",
    "Reason",
    "RegistrationId",
]
