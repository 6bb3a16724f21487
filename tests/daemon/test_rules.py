# SPDX-License-Identifier: LGPL-2.1-or-later
"""The contract's behaviour rules 1-7, against the real daemon and the emulated kernel.

Ordering and overlap are shown by the emulator's uevent log (one sequence, numbered as the
kernel numbers uevents) and by the order in which replies and signals arrive, never by how long
something took. Where a test needs an operation to stay in progress, the emulator delays the
kernel's attribute writes (`delay attribute`); a device that exists in sysfs while its
transaction still runs shows that the daemon is inside it.
"""

from __future__ import annotations

import os
from concurrent.futures import Future
from typing import Any

import pytest
from dbus_fast import Variant

from mdevd.bus import names
from mdevd.sim.control import UeventRecord
from tests.daemon.harness import (
    BusClient,
    DaemonError,
    device_path,
    device_uevents,
    in_sysfs,
    new_uuid,
)
from tests.daemon.nobody import UnprivilegedCaller
from tests.support.daemon import DaemonProcess
from tests.support.sim import RunningSim
from tests.support.waiting import wait_until

#: Long enough that a call sent meanwhile certainly reaches the daemon before it ends.
IN_PROGRESS = 2.0


def _error(future: Future[list[Any]]) -> DaemonError:
    with pytest.raises(DaemonError) as raised:
        future.result()
    return raised.value


# ---- 1. reply after the effect ----------------------------------------------------------------


def test_create_replies_once_the_device_exists_and_its_object_was_announced(
    client: BusClient, sim: RunningSim
) -> None:
    sim.control.delay("create", 0.5)
    uuid = new_uuid()
    mark = client.mark()
    client.create_device("mtty", "mtty-1", uuid=uuid)
    # No waiting: the kernel has it and the signals were already received with the reply.
    assert in_sysfs(sim, uuid)
    signals = client.signals(mark)
    assert any(s.is_added(device_path(uuid)) for s in signals)
    assert any(s.is_event(uuid, "started") for s in signals)


def test_start_and_stop_reply_once_done_and_signalled(client: BusClient, sim: RunningSim) -> None:
    uuid = new_uuid()
    client.define_device("mtty", "mtty-1", uuid=uuid)
    sim.control.delay("create", 0.5)
    mark = client.mark()
    client.start(uuid)
    assert in_sysfs(sim, uuid)
    assert any(
        (s.changed(device_path(uuid)) or {}).get("Active") is True for s in client.signals(mark)
    )
    sim.control.delay("remove", 0.5)
    mark = client.mark()
    client.stop(uuid)
    assert not in_sysfs(sim, uuid)
    assert any(
        (s.changed(device_path(uuid)) or {}).get("Active") is False for s in client.signals(mark)
    )


def test_stop_of_a_transient_device_replies_after_its_object_is_gone(
    client: BusClient, sim: RunningSim
) -> None:
    uuid = new_uuid()
    client.create_device("mtty", "mtty-1", uuid=uuid)
    mark = client.mark()
    client.stop(uuid)
    assert not in_sysfs(sim, uuid)
    assert any(s.is_removed(device_path(uuid)) for s in client.signals(mark))


# ---- 2. retry-safe -------------------------------------------------------------------------


def test_a_repeated_create_returns_the_same_device_without_creating_again(
    client: BusClient, sim: RunningSim
) -> None:
    uuid = new_uuid()
    attributes = [("setting", "4")]
    first = client.create_device("par-a", "par-a-1", uuid=uuid, attributes=attributes)
    second = client.create_device("par-a", "par-a-1", uuid=uuid, attributes=attributes)
    assert first == second == device_path(uuid)
    assert [r.action for r in device_uevents(sim, uuid)] == ["add", "bind"]
    # Anything different is a conflict, not a retry.
    error = _error(client.create_device_async("par-a", "par-a-1", uuid=uuid))
    assert error.short_name == "Exists"
    client.stop(uuid)


def test_a_repeated_define_returns_the_same_device_and_leaves_the_file_alone(
    client: BusClient, sim: RunningSim
) -> None:
    uuid = new_uuid()
    first = client.define_device("mtty", "mtty-2", uuid=uuid, autostart=True, start=True)
    config_file = client.device(uuid)["ConfigFile"]
    before = os.stat(config_file)
    mark = client.mark()
    second = client.define_device("mtty", "mtty-2", uuid=uuid, autostart=True, start=True)
    assert first == second
    after = os.stat(config_file)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert client.event_details(uuid, since=mark) == []
    assert [r.action for r in device_uevents(sim, uuid)] == ["add", "bind"]
    error = _error(
        client.manager_async(
            "DefineDevice", "ssa{sv}", "mtty", "mtty-2", {"uuid": Variant("s", uuid)}
        )
    )
    assert error.short_name == "Exists"  # autostart differs
    client.stop(uuid)


# ---- 3. transactions ---------------------------------------------------------------------------


def test_a_failed_attribute_rolls_the_device_back_and_reports_that_error(
    client: BusClient, sim: RunningSim
) -> None:
    uuid = new_uuid()
    sim.control.fault_attribute(uuid, "other", "EINVAL")
    error = _error(
        client.create_device_async(
            "par-a", "par-a-1", uuid=uuid, attributes=[("setting", "1"), ("other", "2")]
        )
    )
    assert error.short_name == "AttributeRejected"
    assert "'other'" in error.message
    assert not in_sysfs(sim, uuid)
    assert [r.action for r in device_uevents(sim, uuid)] == ["add", "bind", "unbind", "remove"]


def test_when_the_rollback_fails_too_the_first_error_is_reported_and_the_device_shown(
    client: BusClient, sim: RunningSim
) -> None:
    uuid = new_uuid()
    sim.control.fault_attribute(uuid, "setting", "EINVAL")
    sim.control.fault_remove(uuid, "EIO")
    mark = client.mark()
    error = _error(
        client.create_device_async("par-a", "par-a-1", uuid=uuid, attributes=[("setting", "1")])
    )
    # The attribute's error, not the rollback's (mdevctl reports the latter).
    assert error.short_name == "AttributeRejected"
    # The device could not be removed: it must not be hidden, or nobody could stop it.
    assert in_sysfs(sim, uuid)
    assert any(s.is_added(device_path(uuid)) for s in client.signals(mark))
    [(event, details)] = client.event_details(uuid, since=mark)
    assert (event, details["error_name"]) == ("start-failed", names.error_name("AttributeRejected"))
    device = client.device(uuid)
    assert (device["Active"], device["Defined"]) == (True, False)
    assert device["LastError"].startswith("AttributeRejected")
    assert "EIO" in device["LastError"]
    client.stop(uuid)
    assert not in_sysfs(sim, uuid)


def test_when_the_rollback_of_a_start_fails_the_device_is_shown_active(
    client: BusClient, sim: RunningSim
) -> None:
    uuid = new_uuid()
    client.define_device("par-a", "par-a-2", uuid=uuid, attributes=[("setting", "1")])
    sim.control.fault_attribute(uuid, "setting", "EINVAL")
    sim.control.fault_remove(uuid, "EIO")
    assert _error(client.device_async(uuid, "Start")).short_name == "AttributeRejected"
    assert in_sysfs(sim, uuid)
    device = client.device(uuid)
    assert (device["Active"], device["Defined"]) == (True, True)
    assert "EIO" in device["LastError"]
    client.stop(uuid)


def test_a_start_that_fails_leaves_the_definition_and_no_device(
    client: BusClient, sim: RunningSim
) -> None:
    uuid = new_uuid()
    client.define_device("par-b", "par-b-1", uuid=uuid, attributes=[("setting", "x")])
    error = _error(client.device_async(uuid, "Start"))
    assert error.short_name == "AttributeRejected"
    assert not in_sysfs(sim, uuid)
    device = client.device(uuid)
    assert (device["Active"], device["Defined"]) == (False, True)
    assert device["LastError"].startswith("AttributeRejected")


def test_a_definition_is_on_disk_when_define_replies(
    client: BusClient, daemon: DaemonProcess
) -> None:
    uuid = new_uuid()
    client.define_device("mtty", "mtty-1", uuid=uuid)
    path = daemon.devices_dir / f"{uuid}.toml"
    assert uuid in path.read_text()
    # Written through a temporary file and renamed: nothing else is left in the directory.
    assert not [p for p in daemon.devices_dir.iterdir() if p.name.startswith(".")]


# ---- 4. Busy instead of hanging ---------------------------------------------------------------


def test_a_held_device_answers_busy_and_the_parent_stays_usable(
    client: BusClient, sim: RunningSim
) -> None:
    held, other = new_uuid(), new_uuid()
    client.create_device("mtty", "mtty-1", uuid=held)
    sim.control.hold(held)
    try:
        assert _error(client.device_async(held, "Stop")).short_name == "Busy"
        # The parent's lock was not kept: the next operation on it goes ahead.
        client.create_device("mtty", "mtty-1", uuid=other)
        client.stop(other)
        assert _error(client.device_async(held, "Stop")).short_name == "Busy"
    finally:
        sim.control.release(held)
    client.stop(held)


def test_a_group_the_caller_holds_open_itself_is_not_a_vms(
    client: BusClient, sim: RunningSim
) -> None:
    """libvirt opens the device's vfio group (so no VM can take it) before it asks for the
    removal: with `caller_holds_group` the open group does not make Stop answer Busy."""
    uuid = new_uuid()
    client.create_device("mtty", "mtty-1", uuid=uuid)
    group = int(os.path.basename(os.readlink(sim.root / "bus/mdev/devices" / uuid / "iommu_group")))
    node = os.open(sim.control.vfio_group_path(group), os.O_RDONLY)
    try:
        assert _error(client.device_async(uuid, "Stop")).short_name == "Busy"
        client.device_async(
            uuid, "Stop", "a{sv}", {"caller_holds_group": Variant("b", True)}
        ).result(30)
    finally:
        os.close(node)
    assert not (sim.root / "bus/mdev/devices" / uuid).exists()


# ---- 5. one definition per UUID ---------------------------------------------------------------


def test_a_uuid_has_one_definition(client: BusClient, daemon: DaemonProcess) -> None:
    uuid = new_uuid()
    client.define_device("mtty", "mtty-1", uuid=uuid)
    error = _error(
        client.manager_async(
            "DefineDevice", "ssa{sv}", "par-b", "par-b-1", {"uuid": Variant("s", uuid)}
        )
    )
    assert error.short_name == "Exists"
    assert "mtty" in error.message
    # A second definition written by hand loses to the first and is reported, not merged.
    second = daemon.devices_dir / f"zz-{uuid}.toml"
    second.write_text(f'[[device]]\nuuid = "{uuid}"\nparent = "par-b"\ntype = "par-b-1"\n')
    try:
        client.reload()
        device = client.device(uuid)
        assert (device["Parent"], device["Type"]) == ("mtty", "mtty-1")
        wait_until(lambda: f"{second}:1" in daemon.log(), what="the conflict in the log")
    finally:
        second.unlink()
        client.reload()


# ---- 6. one parent serialized, parents in parallel -----------------------------------------------


def _transaction(records: list[UeventRecord], uuid: str) -> tuple[int, int]:
    """First and last sequence number of one device's create-and-rollback in the kernel."""
    numbers = [r.seqnum for r in records if r.subsystem == "mdev" and r.devpath.endswith(uuid)]
    assert len(numbers) == 4, numbers  # add, bind, unbind, remove
    return numbers[0], numbers[-1]


def _two_transactions(
    client: BusClient, sim: RunningSim, first: tuple[str, str], second: tuple[str, str]
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Run two create-then-attribute transactions at once; each attribute write is slow and
    then fails, so each transaction ends with a rollback: its last uevent."""
    sim.control.delay("attribute", IN_PROGRESS)
    uuids = [new_uuid(), new_uuid()]
    for uuid in uuids:
        sim.control.fault_attribute(uuid, "setting", "EINVAL")
    futures = [
        client.create_device_async(parent, type_id, uuid=uuid, attributes=[("setting", "1")])
        for uuid, (parent, type_id) in zip(uuids, (first, second), strict=True)
    ]
    for future in futures:
        assert _error(future).short_name == "AttributeRejected"
    records = sim.control.uevents()
    spans = sorted(_transaction(records, uuid) for uuid in uuids)
    return spans[0], spans[1]


def test_transactions_on_one_parent_do_not_overlap(client: BusClient, sim: RunningSim) -> None:
    earlier, later = _two_transactions(client, sim, ("par-a", "par-a-1"), ("par-a", "par-a-2"))
    assert earlier[1] < later[0], "the second began before the first was rolled back"


def test_transactions_on_different_parents_overlap(client: BusClient, sim: RunningSim) -> None:
    earlier, later = _two_transactions(client, sim, ("par-a", "par-a-1"), ("par-b", "par-b-1"))
    assert later[0] < earlier[1], "the second waited for the first"


# ---- 7. authorization before any lock ---------------------------------------------------------


def test_authorization_happens_before_the_parent_lock(
    client: BusClient, sim: RunningSim, nobody: UnprivilegedCaller
) -> None:
    sim.control.delay("attribute", IN_PROGRESS)
    busy, queued = new_uuid(), new_uuid()
    in_progress = client.create_device_async(
        "par-b", "par-b-1", uuid=busy, attributes=[("setting", "1")]
    )
    wait_until(lambda: in_sysfs(sim, busy), what="the transaction to be under way")
    behind = client.create_device_async("par-b", "par-b-1", uuid=queued)
    # An unprivileged caller is refused at once, while the parent is still locked ...
    denied = nobody.call(
        names.MANAGER_PATH,
        names.MANAGER_INTERFACE,
        "CreateDevice",
        "ssa{sv}",
        ["par-b", "par-b-1", {}],
    )
    assert denied.error == names.error_name("NotAuthorized")
    assert not in_progress.done()
    # ... and reads are answered meanwhile: nothing blocks the event loop.
    assert client.get_property(names.MANAGER_PATH, names.MANAGER_INTERFACE, "Features")
    assert not in_progress.done()
    # The lock was real: the root caller behind it waited for the transaction.
    in_progress.result()
    behind.result()
    busy_span = [r.seqnum for r in device_uevents(sim, busy)]
    queued_span = [r.seqnum for r in device_uevents(sim, queued)]
    assert busy_span[-1] < queued_span[0]
    client.stop(busy)
    client.stop(queued)
