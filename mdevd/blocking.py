# SPDX-License-Identifier: LGPL-2.1-or-later
"""The reads of the command-line programs, blocking, without asyncio or dbus-fast.

`mdevdctl list`, `show`, `types` and `status` make two or three calls and exit; importing
asyncio and dbus-fast alone took longer than all of `mdevctl list` (docs/performance.md). These
reads go through `mdevd.wire` instead and give the same `DeviceInfo`, `ParentInfo` and error
classes as `mdevd.client`, from the same parsing (`mdevd.replies`). Everything that waits for
events or changes a device stays with `mdevd.client`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mdevd import wire
from mdevd.bus.names import (
    BUS_NAME,
    DEVICE_INTERFACE,
    MANAGER_INTERFACE,
    MANAGER_PATH,
    OBJECT_MANAGER_INTERFACE,
    PROPERTIES_INTERFACE,
    ROOT_PATH,
)
from mdevd.replies import (
    DEFAULT_TIMEOUT,
    CallTimeout,
    ClientError,
    DaemonError,
    DeviceInfo,
    ManagedObjects,
    ParentInfo,
    devices_from_objects,
    error_for,
    older_than_list_devices,
    parents_from_objects,
    sorted_devices,
    unwrap,
)


class BlockingClient:
    """One connection to the bus; each method is one or two calls to mdevd."""

    def __init__(self, connection: wire.Connection) -> None:
        self.connection = connection

    @classmethod
    def connect(
        cls, address: str | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> BlockingClient:
        """Connect to the system bus (or `address`; `DBUS_SYSTEM_BUS_ADDRESS` is honoured)."""
        try:
            return cls(wire.Connection(address, timeout))
        except wire.WireError as exc:
            raise ClientError(str(exc)) from exc

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> BlockingClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def call(
        self, path: str, interface: str, member: str, signature: str = "", body: Sequence[Any] = ()
    ) -> list[Any]:
        """As `Client.call`: the daemon's errors as their classes, the timeout as CallTimeout."""
        try:
            return self.connection.call(BUS_NAME, path, interface, member, signature, body)
        except wire.CallError as exc:
            raise error_for(exc.name, exc.message) from exc
        except wire.WireError as exc:
            if isinstance(exc.__cause__, TimeoutError):
                raise CallTimeout(member, self.connection.timeout) from exc
            raise ClientError(str(exc)) from exc

    def managed_objects(self) -> ManagedObjects:
        (objects,) = self.call(ROOT_PATH, OBJECT_MANAGER_INTERFACE, "GetManagedObjects")
        result: ManagedObjects = unwrap(objects)
        return result

    def devices(self) -> list[DeviceInfo]:
        """Every device, sorted by parent and UUID."""
        try:
            (structs,) = self.call(MANAGER_PATH, MANAGER_INTERFACE, "ListDevices", "a{sv}", [{}])
            return sorted_devices([DeviceInfo.from_struct(struct) for struct in structs])
        except DaemonError as error:
            if not older_than_list_devices(error):
                raise
        return devices_from_objects(self.managed_objects())

    def parents(self) -> list[ParentInfo]:
        return parents_from_objects(self.managed_objects())

    def device(self, uuid: str) -> DeviceInfo:
        (path,) = self.call(MANAGER_PATH, MANAGER_INTERFACE, "GetDevice", "s", [uuid])
        (props,) = self.call(path, PROPERTIES_INTERFACE, "GetAll", "s", [DEVICE_INTERFACE])
        return DeviceInfo.from_properties(str(path), unwrap(props))

    def manager_properties(self) -> dict[str, Any]:
        (props,) = self.call(MANAGER_PATH, PROPERTIES_INTERFACE, "GetAll", "s", [MANAGER_INTERFACE])
        result: dict[str, Any] = unwrap(props)
        return result
