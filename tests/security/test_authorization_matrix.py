# SPDX-License-Identifier: LGPL-2.1-or-later
"""Who may call what: every mutating method for root, a user the example polkit rule grants
and an unprivileged user, with a real polkitd and with none on the bus.

On every denial nothing changes: no file in the definitions directory, no device in the
(emulated) sysfs, no object on the bus, no signal. Reads work for everyone in both cases.
"""

from __future__ import annotations

import errno
import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import Variant

from mdevd.bus import auth, names
from tests.security.callers import Caller, Reply, device_path
from tests.security.conftest import OTHER_TYPE, PARENT, TYPE, World, new_uuid
from tests.support.daemon import name_has_owner
from tests.support.polkit import POLKIT_BUS_NAME
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(180)

MUTATING = {method for method, action in auth.METHOD_ACTIONS.items() if action != auth.NO_CHECK}

#: (caller, polkitd) -> the outcome of every mutating method.
EXPECTED = {
    ("root", "running"): "ok",
    ("granted", "running"): "ok",
    # auth_admin by default: authenticating would help, but the call was not interactive.
    ("unprivileged", "running"): "NotAuthorizedCanObtain",
    ("root", "absent"): "ok",
    ("granted", "absent"): "NotAuthorized",
    ("unprivileged", "absent"): "NotAuthorized",
}

Step = tuple[str, Callable[[Caller], Reply]]


def _create(uuid: str, type_id: str = TYPE) -> Callable[[Caller], Reply]:
    return lambda c: c.manager(
        "CreateDevice", "ssa{sv}", [PARENT, type_id, {"uuid": Variant("s", uuid)}]
    )


def _define(uuid: str, type_id: str = OTHER_TYPE) -> Callable[[Caller], Reply]:
    return lambda c: c.manager(
        "DefineDevice", "ssa{sv}", [PARENT, type_id, {"uuid": Variant("s", uuid)}]
    )


def _on_device(uuid: str, method: str) -> Callable[[Caller], Reply]:
    return lambda c: c.device(uuid, method, "a{sv}", [{}])


def _update(uuid: str) -> Callable[[Caller], Reply]:
    return lambda c: c.device(uuid, "Update", "a{sv}a{sv}", [{"autostart": Variant("b", True)}, {}])


def _reload() -> Callable[[Caller], Reply]:
    return lambda c: c.manager("Reload", "a{sv}", [{}])


def _write_definition(directory: Path, uuid: str) -> Path:
    """A definition file as an admin would drop it in; Reload picks it up."""
    path = directory / f"{uuid}.toml"
    path.write_text(f'[[device]]\nuuid = "{uuid}"\nparent = "{PARENT}"\ntype = "{TYPE}"\n')
    return path


def _device_events(signals: list[tuple[str, str, str, list[Any]]]) -> list[tuple[str, str]]:
    return [
        (body[1], body[2])
        for _path, interface, member, body in signals
        if interface == names.MANAGER_INTERFACE and member == "DeviceEvent"
    ]


def _snapshot(world: World) -> dict[str, object]:
    """Everything a mutation could change, as a user could see it."""
    directory = world.daemon.devices_dir
    objects = world.root.call(names.ROOT_PATH, names.OBJECT_MANAGER_INTERFACE, "GetManagedObjects")
    assert objects.ok, objects
    return {
        "definition files": {p.name: p.read_bytes() for p in sorted(directory.iterdir())},
        "sysfs devices": sorted(p.name for p in (world.sim.root / "bus/mdev/devices").iterdir()),
        "objects": objects.body,
    }


def _vfio_group(world: World, uuid: str) -> Path:
    group = os.readlink(world.sim.root / "bus/mdev/devices" / uuid / "iommu_group")
    return world.sim.control.vfio_group_path(int(os.path.basename(group)))


def _group_free(node: Path) -> bool:
    try:
        os.close(os.open(node, os.O_RDWR))
    except OSError as exc:
        assert exc.errno == errno.EBUSY, exc
        return False
    return True


@pytest.fixture(params=["running", "absent"])
def polkit_state(request: pytest.FixtureRequest, world: World) -> str:
    state: str = request.param
    if state == "running":
        request.getfixturevalue("polkitd")
    assert name_has_owner(world.address, POLKIT_BUS_NAME) == (state == "running")
    return state


@pytest.mark.parametrize("who", ["root", "granted", "unprivileged"])
def test_mutating_methods(world: World, who: str, polkit_state: str) -> None:
    expected = EXPECTED[who, polkit_state]
    if expected == "ok":
        _allowed(world, world.callers[who])
    else:
        _denied(world, world.callers[who], expected)


def _allowed(world: World, caller: Caller) -> None:
    """Each method succeeds, in an order in which each one's precondition holds."""
    first, second, third = new_uuid(), new_uuid(), new_uuid()
    # QueryAttributes changes nothing (it needs authorization because it runs callout
    # scripts as root): no event.
    steps: list[tuple[Step, tuple[str, str] | None]] = [
        (("CreateDevice", _create(first)), (first, "started")),
        (("QueryAttributes", _on_device(first, "QueryAttributes")), None),
        # Open changes nothing either: the caller gets an fd to the group, and closes it.
        (("Open", _on_device(first, "Open")), None),
        (("Define", _on_device(first, "Define")), (first, "defined")),
        (("Update", _update(first)), (first, "updated")),
        (("Stop", _on_device(first, "Stop")), (first, "stopped")),
        (("Start", _on_device(first, "Start")), (first, "started")),
        (("Undefine", _on_device(first, "Undefine")), (first, "undefined")),
        (("Stop", _on_device(first, "Stop")), (first, "stopped")),
        (("DefineDevice", _define(second)), (second, "defined")),
        (("Reload", _reload()), (third, "defined")),
    ]
    assert {method for (method, _), _ in steps} == MUTATING
    world.root.watch()
    world.root.signals()
    try:
        for (method, call), event in steps:
            if method == "Reload":
                _write_definition(world.daemon.devices_dir, third)
            reply = call(caller)
            assert reply.ok, f"{caller.label} {method}: {reply}"
            if method == "Open":
                node = _vfio_group(world, first)
                assert reply.fds == (str(node),), reply
                # The caller closed it; the emulation lets go of the group a moment later.
                wait_until(functools.partial(_group_free, node), timeout=10)
            if event is not None:
                assert event in _device_events(world.root.signals()), method
        assert first not in {p.name for p in (world.sim.root / "bus/mdev/devices").iterdir()}
    finally:
        for uuid in (second, third):
            world.root.device(uuid, "Undefine", "a{sv}", [{}])


def _denied(world: World, caller: Caller, expected: str) -> None:
    """Each method fails with `expected` on a target it would change if it were allowed."""
    targets = world.targets
    pending = _write_definition(world.daemon.devices_dir, new_uuid())
    steps: list[Step] = [
        ("CreateDevice", _create(new_uuid())),
        ("DefineDevice", _define(new_uuid())),
        ("Reload", _reload()),
        ("Start", _on_device(targets.defined, "Start")),
        ("Stop", _on_device(targets.running, "Stop")),
        ("QueryAttributes", _on_device(targets.running, "QueryAttributes")),
        ("Open", _on_device(targets.running, "Open")),
        ("Define", _on_device(targets.transient, "Define")),
        ("Undefine", _on_device(targets.defined, "Undefine")),
        ("Update", _update(targets.defined)),
    ]
    assert {method for method, _ in steps} == MUTATING
    world.root.watch()
    world.root.signals()
    try:
        before = _snapshot(world)
        for method, call in steps:
            reply = call(caller)
            assert reply.outcome == expected, f"{caller.label} {method}: {reply}"
            assert reply.message.startswith(f"{method}: "), reply.message
            assert world.root.signals() == [], f"{caller.label} {method} emitted signals"
            assert reply.fds == ()
        assert _snapshot(world) == before
        assert _group_free(_vfio_group(world, targets.running))
    finally:
        pending.unlink()


@pytest.mark.parametrize("who", ["root", "granted", "unprivileged"])
def test_reads_work_for_everyone(world: World, who: str, polkit_state: str) -> None:
    caller = world.callers[who]
    targets = world.targets
    parent_path = f"{names.PARENTS_PATH}/{PARENT}"
    reads = {
        "GetManagedObjects": caller.call(
            names.ROOT_PATH, names.OBJECT_MANAGER_INTERFACE, "GetManagedObjects"
        ),
        "Manager properties": caller.call(
            names.MANAGER_PATH, names.PROPERTIES_INTERFACE, "GetAll", "s", [names.MANAGER_INTERFACE]
        ),
        "Device property": caller.call(
            device_path(targets.running),
            names.PROPERTIES_INTERFACE,
            "Get",
            "ss",
            [names.DEVICE_INTERFACE, "Active"],
        ),
        "Parent properties": caller.call(
            parent_path, names.PROPERTIES_INTERFACE, "GetAll", "s", [names.PARENT_INTERFACE]
        ),
        "GetDevice": caller.manager("GetDevice", "s", [targets.defined]),
        "ListDevices": caller.manager("ListDevices", "a{sv}", [{}]),
        "ListDeviceSummaries": caller.manager("ListDeviceSummaries", "a{sv}", [{}]),
        "Introspect": caller.call(
            device_path(targets.defined), names.INTROSPECTABLE_INTERFACE, "Introspect"
        ),
    }
    assert {name: reply.outcome for name, reply in reads.items()} == dict.fromkeys(reads, "ok")
    assert reads["Device property"].body[0].value is True
    assert reads["GetDevice"].body == [device_path(targets.defined)]
    assert targets.defined in {entry[0] for entry in reads["ListDeviceSummaries"].body[0]}
