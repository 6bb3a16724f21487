# SPDX-License-Identifier: LGPL-2.1-or-later
"""A service that answers with large replies, to load the send path of dbus-fast.

Run as `python -m tests.bus.send_buffer_service ADDRESS [--without-fix] [--devices N]
[--report-after CALLS]`. Its one method, `org.mdevd.Test.Snapshot.Devices()` on the root
object, answers what `GetManagedObjects` would for N devices with the contract's Device
properties: an `a{oa{sa{sv}}}` of about 720 bytes per device, the daemon's biggest reply.

It prints `ready` once it owns its name; when its bus connection drops it prints
`disconnected: <exception>` and exits with status 3; SIGTERM ends it with status 0 after
printing `connected`. With `--report-after N` it prints `answered N` once it has handed its
Nth reply to its connection.

The answer is computed once: dbus-fast's own `GetManagedObjects` calls every property getter
(~80 ms for 1,000 devices), which spaces replies out, while a daemon that caches its answer
produces them back to back. The devices are not exported as objects: exporting emits one
InterfacesAdded signal each, and without the fix that burst alone can disconnect the service
before the test starts (seen with 300 devices on a busy machine).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import signal
import sys
import uuid as uuid_module
from typing import Annotated

from dbus_fast.aio import MessageBus
from dbus_fast.service import ServiceInterface
from dbus_fast.signature import Variant

from mdevd.bus import names, paths, sendfix
from mdevd.bus.signatures import DBusSignature, dbus_method

EXIT_DISCONNECTED = 3

#: The test-only interface of the root object.
SNAPSHOT_INTERFACE = "org.mdevd.Test.Snapshot"

ManagedObjects = dict[str, dict[str, dict[str, Variant]]]
DBusManagedObjects = Annotated[ManagedObjects, DBusSignature("a{oa{sa{sv}}}")]


def device_properties(index: int) -> dict[str, Variant]:
    """Plausible values for the contract's Device properties."""
    uuid = str(uuid_module.UUID(int=index + 1))
    parent = f"0000:{index // 256 + 1:02x}:{index % 256 // 8:02x}.{index % 8}"
    return {
        "UUID": Variant("s", uuid),
        "Parent": Variant("s", parent),
        "ParentObject": Variant("o", paths.parent_path(parent)),
        "Type": Variant("s", "nvidia-558"),
        "Active": Variant("b", True),
        "Defined": Variant("b", True),
        "Autostart": Variant("b", False),
        "Attributes": Variant("a(ss)", [["assign_adapter", "5"], ["assign_domain", "4"]]),
        "SysfsPath": Variant("s", f"/sys/devices/pci0000:00/{parent}/{uuid}"),
        "IommuGroup": Variant("i", 42),
        "ConfigFile": Variant("s", f"/etc/mdevd/devices.d/{uuid}.toml"),
        "LastError": Variant("s", ""),
    }


class Snapshot(ServiceInterface):
    def __init__(self, devices: int, report_after: int) -> None:
        super().__init__(SNAPSHOT_INTERFACE)
        self.calls = 0
        self.report_after = report_after
        self.devices: ManagedObjects = {}
        for index in range(devices):
            properties = device_properties(index)
            path = paths.device_path(properties["UUID"].value)
            self.devices[path] = {names.DEVICE_INTERFACE: properties}

    @dbus_method(name="Devices")
    def devices_method(self) -> DBusManagedObjects:
        self.calls += 1
        if self.calls == self.report_after:
            # Runs once this reply has been handed to the connection (right after we return).
            report = functools.partial(print, f"answered {self.calls}", flush=True)
            asyncio.get_running_loop().call_soon(report)
        return self.devices


async def serve(address: str, devices: int, report_after: int, *, without_fix: bool) -> int:
    bus_class = MessageBus if without_fix else sendfix.PacedMessageBus
    bus = await bus_class(bus_address=address).connect()
    bus.export(names.ROOT_PATH, Snapshot(devices, report_after))
    await bus.request_name(names.BUS_NAME)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    # dbus-fast leaves wait_for_disconnect unannotated.
    disconnected = asyncio.ensure_future(bus.wait_for_disconnect())  # type: ignore[no-untyped-call]
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait([disconnected, stopped], return_when=asyncio.FIRST_COMPLETED)
    if disconnected.done():
        print(f"disconnected: {disconnected.exception()!r}", flush=True)
        return EXIT_DISCONNECTED
    print("connected", flush=True)
    return 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("address")
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--without-fix", action="store_true")
    parser.add_argument("--report-after", type=int, default=0, metavar="CALLS")
    options = parser.parse_args()
    sys.exit(
        asyncio.run(
            serve(
                options.address,
                options.devices,
                options.report_after,
                without_fix=options.without_fix,
            )
        )
    )


if __name__ == "__main__":
    main()
