# SPDX-License-Identifier: LGPL-2.1-or-later
"""What the admin at 3 a.m. needs to see on each device: `Status` (active, waiting, failed,
inactive) and `PendingChanges` (a definition the running device does not follow yet, and the
call that converges them), the same in the properties, GetManagedObjects and ListDevices, and
announced with PropertiesChanged before the reply of the call that changed them."""

from __future__ import annotations

from typing import Any

import pytest
from dbus_fast import Variant

from mdevd.bus import names
from tests.daemon.conftest import ClientStack
from tests.daemon.harness import BusClient, DaemonError, device_path, new_uuid
from tests.support.waiting import wait_until

#: The GPU of the daemon tests' scenario that is not registered at mount time.
ABSENT_PARENT = "0000:66:00.0"


def _listed(client: BusClient, uuid: str) -> dict[str, Any]:
    """The trailing dictionary of the device's ListDevices entry."""
    (entries,) = client.manager_async("ListDevices", "a{sv}", {}).result()
    (entry,) = [e for e in entries if e[1] == uuid]
    later: dict[str, Any] = entry[-1]
    return later


def _seen(client: BusClient, uuid: str) -> tuple[str, dict[str, Any]]:
    """Status and PendingChanges, checked to agree in every read a client can make."""
    properties = client.device(uuid)
    status, pending = properties["Status"], properties["PendingChanges"]
    path = device_path(uuid)
    assert client.get_property(path, names.DEVICE_INTERFACE, "Status") == status
    assert client.get_property(path, names.DEVICE_INTERFACE, "PendingChanges") == pending
    managed = client.managed_objects()[path][names.DEVICE_INTERFACE]
    assert (managed["Status"], managed["PendingChanges"]) == (status, pending)
    listed = _listed(client, uuid)
    assert (listed["Status"], listed["PendingChanges"]) == (status, pending)
    return status, pending


def _changed(client: BusClient, uuid: str, since: int) -> dict[str, Any]:
    """The properties PropertiesChanged announced for the device since `since`, merged."""
    merged: dict[str, Any] = {}
    for signal in client.signals(since):
        changed = signal.changed(device_path(uuid))
        if changed is not None:
            merged.update(changed)
    return merged


def test_the_feature_words(client: BusClient) -> None:
    features = client.get_property(names.MANAGER_PATH, names.MANAGER_INTERFACE, "Features")
    assert {"status", "pending-changes", "replayed-events"} <= set(features)


def test_a_type_change_without_live_is_pending_until_a_restart(client: BusClient) -> None:
    uuid = new_uuid()
    client.define_device("mtty", "mtty-1", uuid=uuid, start=True)
    assert _seen(client, uuid) == ("active", {})

    mark = client.mark()
    client.update(uuid, {"type": "mtty-2"})

    properties = client.device(uuid)
    assert properties["Type"] == "mtty-1"  # the running device's
    assert _seen(client, uuid) == ("active", {"type": "mtty-2", "apply": "restart"})
    # Announced before the reply.
    assert _changed(client, uuid, mark)["PendingChanges"] == {"type": "mtty-2", "apply": "restart"}

    client.stop(uuid)
    assert _seen(client, uuid) == ("inactive", {})  # not running: nothing is pending
    client.start(uuid)
    assert client.device(uuid)["Type"] == "mtty-2"
    assert _seen(client, uuid) == ("active", {})
    client.stop(uuid)


def test_defined_attributes_the_device_lacks_are_pending_until_a_live_update(
    client: BusClient,
) -> None:
    uuid = new_uuid()
    client.define_device("par-a", "par-a-1", uuid=uuid, start=True, attributes=[("setting", "1")])
    assert _seen(client, uuid) == ("active", {})

    client.update(uuid, {"attributes": [("setting", "2")]})

    assert _seen(client, uuid) == (
        "active",
        {"attributes": [["setting", "2"]], "apply": "update-live"},
    )
    # What `apply` says converges them: Update with the defined attributes, live.
    mark = client.mark()
    client.update(uuid, {"attributes": [("setting", "2")]}, live=True)
    assert _seen(client, uuid) == ("active", {})
    assert _changed(client, uuid, mark)["PendingChanges"] == {}
    client.stop(uuid)


def test_a_running_device_changed_only_live_differs_from_its_definition(
    client: BusClient,
) -> None:
    """persist=false writes the running device only: its definition is now the pending one."""
    uuid = new_uuid()
    client.define_device("par-a", "par-a-1", uuid=uuid, start=True, attributes=[("setting", "1")])
    client.device_async(
        uuid,
        "Update",
        "a{sv}a{sv}",
        {"attributes": Variant("a(ss)", [["setting", "5"]])},
        {"live": Variant("b", True), "persist": Variant("b", False)},
    ).result()
    assert _seen(client, uuid) == (
        "active",
        {"attributes": [["setting", "1"]], "apply": "update-live"},
    )
    client.stop(uuid)


def test_a_failed_start_is_failed_until_a_start_succeeds(
    client: BusClient, stack: ClientStack
) -> None:
    uuid = new_uuid()
    client.define_device("par-b", "par-b-1", uuid=uuid)
    assert _seen(client, uuid) == ("inactive", {})
    stack.sim.control.fault_create("par-b", "par-b-1", "EIO")

    mark = client.mark()
    with pytest.raises(DaemonError):
        client.start(uuid)

    assert _seen(client, uuid) == ("failed", {})
    assert client.device(uuid)["LastError"].startswith("Failed: ")
    assert _changed(client, uuid, mark)["Status"] == "failed"
    client.start(uuid)
    assert _seen(client, uuid) == ("active", {})
    client.stop(uuid)
    assert _seen(client, uuid) == ("inactive", {})


def test_an_autostart_device_waits_for_its_parent(client: BusClient, stack: ClientStack) -> None:
    waiting, manual = new_uuid(), new_uuid()
    client.define_device(ABSENT_PARENT, "nvidia-556", uuid=waiting, autostart=True)
    client.define_device(ABSENT_PARENT, "nvidia-556", uuid=manual)
    assert _seen(client, waiting) == ("waiting", {})
    assert _seen(client, manual) == ("inactive", {})
    # A start that fails because the parent is absent: failed, unless autostart will retry.
    for uuid in (waiting, manual):
        with pytest.raises(DaemonError):
            client.start(uuid)
    assert _seen(client, waiting) == ("waiting", {})
    assert _seen(client, manual) == ("failed", {})

    stack.sim.control.register(ABSENT_PARENT)
    wait_until(lambda: client.device(waiting)["Status"] == "active", what="autostart")
    assert _seen(client, manual) == ("failed", {})
    mark = client.mark()
    stack.sim.control.unregister(ABSENT_PARENT)
    # Its device went with the parent: it waits again, and says so by signal.
    wait_until(
        lambda: _changed(client, waiting, mark).get("Status") == "waiting",
        what="PropertiesChanged of Status",
    )
    assert _seen(client, waiting) == ("waiting", {})
