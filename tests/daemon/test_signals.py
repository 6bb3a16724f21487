# SPDX-License-Identifier: LGPL-2.1-or-later
"""PropertiesChanged, DeviceEvent and InterfacesAdded/Removed for every change, whoever made it.

Changes made through the API are signalled before the reply (the harness records signals on
the loop that resolves replies, so they are simply there when the call returns). Changes made
behind the daemon's back, by another tool writing sysfs or by a driver going away, arrive as
uevents and are signalled shortly after: those tests wait for the signal.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

import pytest

from mdevd.bus import names
from tests.daemon.harness import (
    BusClient,
    DaemonError,
    create_behind_the_daemons_back,
    device_path,
    in_sysfs,
    new_uuid,
    parent_path,
    remove_behind_the_daemons_back,
)
from tests.support.signals import Signal
from tests.support.sim import RunningSim
from tests.support.waiting import wait_until


def _changes(client: BusClient, path: str, since: int) -> dict[str, Any]:
    """Every property PropertiesChanged reported for `path` since `since`, latest value wins."""
    merged: dict[str, Any] = {}
    for signal in client.signals(since):
        changed = signal.changed(path)
        if changed is not None:
            assert signal.body[0] == names.DEVICE_INTERFACE or path.startswith(names.PARENTS_PATH)
            merged.update(changed)
    return merged


def _assert_changes_are_the_new_state(
    client: BusClient, uuid: str, since: int, expected: set[str]
) -> None:
    changes = _changes(client, device_path(uuid), since)
    assert set(changes) == expected
    current = client.device(uuid)
    assert {name: current[name] for name in changes} == changes


# ---- changes made through the API --------------------------------------------------------------


def test_create_and_stop_of_a_transient_device(client: BusClient) -> None:
    uuid = new_uuid()
    path = device_path(uuid)
    mark = client.mark()
    client.create_device("mtty", "mtty-1", uuid=uuid)
    [added] = [s for s in client.signals(mark) if s.is_added(path)]
    assert added.path == names.ROOT_PATH
    assert added.interface == names.OBJECT_MANAGER_INTERFACE
    assert added.body[1] == {names.DEVICE_INTERFACE: client.device(uuid)}
    assert client.event_details(uuid, since=mark) == [("started", {"reason": "api"})]
    [event] = [s for s in client.signals(mark) if s.is_event(uuid)]
    assert (event.path, event.interface, event.body[0]) == (
        names.MANAGER_PATH,
        names.MANAGER_INTERFACE,
        path,
    )

    mark = client.mark()
    client.stop(uuid)
    assert client.event_details(uuid, since=mark) == [("stopped", {"reason": "api"})]
    [removed] = [s for s in client.signals(mark) if s.is_removed(path)]
    assert removed.path == names.ROOT_PATH
    assert removed.body[1] == [names.DEVICE_INTERFACE]


def test_the_lifecycle_of_a_defined_device(client: BusClient) -> None:
    uuid = new_uuid()
    mark = client.mark()
    client.define_device("mtty", "mtty-1", uuid=uuid)
    assert any(s.is_added(device_path(uuid)) for s in client.signals(mark))
    assert client.event_details(uuid, since=mark) == [("defined", {"reason": "api"})]

    mark = client.mark()
    client.start(uuid)
    assert client.event_details(uuid, since=mark) == [("started", {"reason": "api"})]
    _assert_changes_are_the_new_state(
        client, uuid, mark, {"Active", "SysfsPath", "IommuGroup", "Status"}
    )

    mark = client.mark()
    client.update(uuid, {"autostart": True, "attributes": []})
    assert client.event_details(uuid, since=mark) == [("updated", {"reason": "api"})]
    _assert_changes_are_the_new_state(client, uuid, mark, {"Autostart"})

    mark = client.mark()
    client.stop(uuid)
    assert client.event_details(uuid, since=mark) == [("stopped", {"reason": "api"})]
    _assert_changes_are_the_new_state(
        client, uuid, mark, {"Active", "SysfsPath", "IommuGroup", "Status"}
    )

    mark = client.mark()
    client.undefine(uuid)
    assert client.event_details(uuid, since=mark) == [("undefined", {"reason": "api"})]
    assert any(s.is_removed(device_path(uuid)) for s in client.signals(mark))


def test_define_and_undefine_of_a_running_device(client: BusClient) -> None:
    uuid = new_uuid()
    client.create_device("par-a", "par-a-1", uuid=uuid, attributes=[("setting", "1")])
    mark = client.mark()
    client.define(uuid, autostart=True)
    assert client.event_details(uuid, since=mark) == [("defined", {"reason": "api"})]
    _assert_changes_are_the_new_state(client, uuid, mark, {"Defined", "Autostart", "ConfigFile"})

    mark = client.mark()
    client.undefine(uuid)
    assert client.event_details(uuid, since=mark) == [("undefined", {"reason": "api"})]
    _assert_changes_are_the_new_state(client, uuid, mark, {"Defined", "Autostart", "ConfigFile"})
    assert not any(s.is_removed(device_path(uuid)) for s in client.signals(mark))
    client.stop(uuid)


def test_a_failed_start_is_an_event_and_the_last_error(client: BusClient, sim: RunningSim) -> None:
    uuid = new_uuid()
    client.define_device("par-b", "par-b-1", uuid=uuid)
    sim.control.fault_create("par-b", "par-b-1", "EIO")
    mark = client.mark()
    with pytest.raises(DaemonError) as raised:
        client.start(uuid)
    assert raised.value.short_name == "Failed"
    [(event, details)] = client.event_details(uuid, since=mark)
    assert event == "start-failed"
    assert details == {
        "reason": "api",
        "error_name": "org.mdevd.Mdevd1.Error.Failed",
        "error_message": raised.value.message,
    }
    _assert_changes_are_the_new_state(client, uuid, mark, {"LastError", "Status"})
    assert raised.value.message in client.device(uuid)["LastError"]

    mark = client.mark()
    client.start(uuid)
    _assert_changes_are_the_new_state(
        client, uuid, mark, {"Active", "SysfsPath", "IommuGroup", "LastError", "Status"}
    )
    assert client.device(uuid)["LastError"] == ""
    client.stop(uuid)


# ---- changes made by others ----------------------------------------------------------------------


def test_a_device_created_and_removed_by_another_tool(client: BusClient, sim: RunningSim) -> None:
    uuid = new_uuid()
    path = device_path(uuid)
    mark = client.mark()
    create_behind_the_daemons_back(sim, "mtty", "mtty-2", uuid)
    client.wait_signal(lambda s: s.is_event(uuid, "started"), since=mark)
    added = [s for s in client.signals(mark) if s.is_added(path)]
    assert len(added) == 1
    assert added[0].body[1][names.DEVICE_INTERFACE]["Type"] == "mtty-2"
    assert client.event_details(uuid, since=mark) == [("started", {"reason": "kernel"})]
    assert client.device(uuid)["Active"] is True

    mark = client.mark()
    remove_behind_the_daemons_back(sim, uuid)
    client.wait_signal(lambda s: s.is_removed(path), since=mark)
    assert client.event_details(uuid, since=mark) == [("stopped", {"reason": "kernel"})]


def test_a_defined_device_started_and_stopped_by_another_tool(
    client: BusClient, sim: RunningSim
) -> None:
    uuid = new_uuid()
    client.define_device("mtty", "mtty-1", uuid=uuid)
    mark = client.mark()
    create_behind_the_daemons_back(sim, "mtty", "mtty-1", uuid)
    client.wait_signal(lambda s: s.is_event(uuid, "started"), since=mark)
    assert client.event_details(uuid, since=mark) == [("started", {"reason": "kernel"})]
    _assert_changes_are_the_new_state(
        client, uuid, mark, {"Active", "SysfsPath", "IommuGroup", "Status"}
    )

    mark = client.mark()
    remove_behind_the_daemons_back(sim, uuid)
    client.wait_signal(lambda s: s.is_event(uuid, "stopped"), since=mark)
    assert client.event_details(uuid, since=mark) == [("stopped", {"reason": "kernel"})]
    _assert_changes_are_the_new_state(
        client, uuid, mark, {"Active", "SysfsPath", "IommuGroup", "Status"}
    )
    assert client.device(uuid)["Defined"] is True


def test_a_parent_going_and_coming_back(client: BusClient, sim: RunningSim) -> None:
    uuid, transient = new_uuid(), new_uuid()
    client.define_device("0000:66:00.0", "nvidia-556", uuid=uuid)
    parent = parent_path("0000:66:00.0")
    mark = client.mark()
    sim.control.register("0000:66:00.0")
    try:
        client.wait_signal(lambda s: s.is_added(parent), since=mark)
        added = next(s for s in client.signals(mark) if s.is_added(parent))
        assert added.body[1][names.PARENT_INTERFACE]["Name"] == "0000:66:00.0"
        # Its parent's object, and its backend: an inactive device's is its parent's.
        wait_until(
            lambda: (
                _changes(client, device_path(uuid), mark)
                == {"ParentObject": parent, "Backend": "mdev"}
            ),
            what="PropertiesChanged of ParentObject and Backend",
        )
        client.create_device("0000:66:00.0", "nvidia-556", uuid=transient)
    finally:
        mark = client.mark()
        sim.control.unregister("0000:66:00.0")
    client.wait_signal(lambda s: s.is_removed(parent), since=mark)
    client.wait_signal(lambda s: s.changed(device_path(uuid)) == {"ParentObject": "/"}, mark)
    client.wait_signal(lambda s: s.is_removed(device_path(transient)), since=mark)
    assert client.event_details(transient, since=mark) == [("stopped", {"reason": "kernel"})]


# ---- nothing but what happened -----------------------------------------------------------------


def _signals_about(signals: list[Signal], uuids: set[str]) -> list[Signal]:
    paths = {device_path(uuid) for uuid in uuids}
    return [s for s in signals if s.object_path in paths]


def test_concurrent_operations_signal_only_their_own_effects(
    client: BusClient, sim: RunningSim
) -> None:
    """Each device appears once and starts once, however many operations run at a time.

    The kernel events of each create make the daemon re-read sysfs while other creates are
    under way; a view read before a create finished must not be mistaken for the device having
    gone again (nor a parent's instance count for having gone back up).
    """
    targets = [
        ("mtty", "mtty-1"),
        ("par-a", "par-a-2"),
        ("par-b", "par-b-1"),
        ("0000:65:00.0", "nvidia-556"),
    ]
    rounds = 6
    mark = client.mark()
    created: dict[str, Future[list[Any]]] = {}
    for _ in range(rounds):
        for parent, type_id in targets:
            uuid = new_uuid()
            created[uuid] = client.create_device_async(parent, type_id, uuid=uuid)
    for future in created.values():
        future.result()
    stopped = {uuid: client.device_async(uuid, "Stop") for uuid in created}
    for future in stopped.values():
        future.result()
    for uuid in created:
        assert not in_sysfs(sim, uuid)
        assert client.event_details(uuid, since=mark) == [
            ("started", {"reason": "api"}),
            ("stopped", {"reason": "api"}),
        ]
        about = [s.member for s in _signals_about(client.signals(mark), {uuid})]
        assert about.count("InterfacesAdded") == 1
        assert about.count("InterfacesRemoved") == 1
    for parent, _ in targets:
        types = client.get_property(parent_path(parent), names.PARENT_INTERFACE, "Types")
        for type_id, info in types.items():
            type_dir = sim.root / "class/mdev_bus" / parent / "mdev_supported_types" / type_id
            expected = int((type_dir / "available_instances").read_text())
            assert info["available_instances"] == expected, (parent, type_id)


def test_a_failed_autostart_is_an_event_and_the_last_error(
    client: BusClient, sim: RunningSim
) -> None:
    uuid = new_uuid()
    client.define_device("0000:66:00.0", "nvidia-556", uuid=uuid, autostart=True)
    mark = client.mark()
    sim.control.fault_create("0000:66:00.0", "nvidia-556", "EIO")
    sim.control.register("0000:66:00.0")
    try:
        client.wait_signal(lambda s: s.is_event(uuid, "start-failed"), since=mark)
        [(event, details)] = client.event_details(uuid, since=mark)
        assert (event, details["reason"], details["error_name"]) == (
            "start-failed",
            "autostart",
            "org.mdevd.Mdevd1.Error.Failed",
        )
        device = client.device(uuid)
        assert (device["Active"], device["LastError"].startswith("Failed: ")) == (False, True)
        assert "LastError" in _changes(client, device_path(uuid), mark)
    finally:
        sim.control.unregister("0000:66:00.0")
