# SPDX-License-Identifier: LGPL-2.1-or-later
"""Every contract error name a condition can produce, from the real daemon.

Each error must come with the contract's name (never a generic one for a condition that has a
name), a message naming the object it is about, no traceback, and no effect left behind.
Timeout, ReadOnly and the store's errors need a daemon configured differently:
test_store_and_timeouts.py.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import pytest
from dbus_fast import Variant

from mdevd.bus import names
from tests.daemon.harness import (
    BusClient,
    DaemonError,
    device_path,
    device_uevents,
    in_sysfs,
    new_uuid,
    parent_path,
)
from tests.daemon.nobody import UnprivilegedCaller
from tests.support.daemon import DaemonProcess
from tests.support.sim import RunningSim


def _error(action: Callable[[], Any]) -> DaemonError:
    with pytest.raises(DaemonError) as raised:
        action()
    error = raised.value
    assert error.name.startswith(names.ERROR_PREFIX), error.name
    assert "Traceback" not in error.message
    return error


# ---- InvalidArgument ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("member", "signature", "arguments"),
    [
        ("CreateDevice", "ssa{sv}", ["mtty", "mtty-1"]),
        ("DefineDevice", "ssa{sv}", ["mtty", "mtty-1"]),
        ("Reload", "a{sv}", []),
    ],
)
def test_an_unknown_manager_option_is_invalid_argument(
    client: BusClient, member: str, signature: str, arguments: list[Any]
) -> None:
    uuid = new_uuid()
    body = [*arguments, {"uuid": Variant("s", uuid), "autostrat": Variant("b", True)}]
    if member == "Reload":
        body = [{"autostrat": Variant("b", True)}]
    error = _error(lambda: client.manager_async(member, signature, *body).result())
    assert error.short_name == "InvalidArgument"
    assert "autostrat" in error.message
    if member != "Reload":
        assert _error(lambda: client.get_device(uuid)).short_name == "NotFound"


@pytest.mark.parametrize("member", ["Start", "Stop", "Define", "Undefine"])
def test_an_unknown_device_option_is_invalid_argument(client: BusClient, member: str) -> None:
    uuid = new_uuid()
    client.create_device("mtty", "mtty-1", uuid=uuid)
    # "forse": a typo of `force`, which became an option of every device method.
    error = _error(
        lambda: client.device_async(uuid, member, "a{sv}", {"forse": Variant("b", True)}).result()
    )
    assert (error.short_name, "forse" in error.message) == ("InvalidArgument", True)
    client.stop(uuid)


def test_unknown_update_changes_and_options_are_invalid_argument(client: BusClient) -> None:
    uuid = new_uuid()
    client.define_device("mtty", "mtty-1", uuid=uuid)
    error = _error(
        lambda: client.device_async(
            uuid, "Update", "a{sv}a{sv}", {"parent": Variant("s", "par-a")}, {}
        ).result()
    )
    assert (error.short_name, "parent" in error.message) == ("InvalidArgument", True)
    error = _error(
        lambda: client.device_async(
            uuid,
            "Update",
            "a{sv}a{sv}",
            {"autostart": Variant("b", True)},
            {"alive": Variant("b", True)},
        ).result()
    )
    assert (error.short_name, "alive" in error.message) == ("InvalidArgument", True)
    assert client.device(uuid)["Autostart"] is False


@pytest.mark.parametrize(
    ("key", "variant"),
    [
        ("uuid", Variant("u", 7)),
        ("autostart", Variant("s", "yes")),
        ("start", Variant("i", 1)),
        ("attributes", Variant("as", ["setting=1"])),
        ("attributes", Variant("a{ss}", {"setting": "1"})),
        ("auth.interactive", Variant("s", "true")),
    ],
)
def test_an_option_of_the_wrong_type_is_invalid_argument(
    client: BusClient, key: str, variant: Variant
) -> None:
    error = _error(
        lambda: client.manager_async(
            "DefineDevice", "ssa{sv}", "par-a", "par-a-1", {key: variant}
        ).result()
    )
    assert error.short_name == "InvalidArgument"
    assert key in error.message and variant.signature in error.message


def test_a_wrongly_typed_update_change_is_invalid_argument(client: BusClient) -> None:
    uuid = new_uuid()
    client.define_device("mtty", "mtty-1", uuid=uuid)
    error = _error(
        lambda: client.device_async(
            uuid, "Update", "a{sv}a{sv}", {"autostart": Variant("s", "true")}, {}
        ).result()
    )
    assert error.short_name == "InvalidArgument"


@pytest.mark.parametrize(
    ("parent", "type_id", "extra"),
    [
        ("../mtty", "mtty-1", {}),
        ("mtty", "mtty-1/../../x", {}),
        ("mtty", "mtty-1", {"uuid": "not-a-uuid"}),
        ("par-a", "par-a-1", {"attributes": [("../remove", "1")]}),
        ("par-a", "par-a-1", {"attributes": [("setting", "1" * 5000)]}),
        ("", "mtty-1", {}),
    ],
)
def test_a_malformed_name_is_invalid_argument(
    client: BusClient, sim: RunningSim, parent: str, type_id: str, extra: dict[str, Any]
) -> None:
    before = len(sim.control.uevents())
    error = _error(lambda: client.create_device(parent, type_id, **extra))
    assert error.short_name == "InvalidArgument"
    assert len(sim.control.uevents()) == before  # nothing reached the kernel


# ---- the kernel's conditions ------------------------------------------------------------------


def test_an_unknown_parent_is_parent_not_found(client: BusClient) -> None:
    uuid = new_uuid()
    error = _error(lambda: client.create_device("0000:99:00.0", "nvidia-556", uuid=uuid))
    assert error.short_name == "ParentNotFound"
    assert "0000:99:00.0" in error.message and uuid in error.message


def test_starting_a_definition_whose_parent_is_absent_is_parent_not_found(
    client: BusClient,
) -> None:
    uuid = new_uuid()
    client.define_device("0000:66:00.0", "nvidia-556", uuid=uuid)
    error = _error(lambda: client.start(uuid))
    assert error.short_name == "ParentNotFound"
    assert "0000:66:00.0" in error.message
    assert client.device(uuid)["LastError"].startswith("ParentNotFound")


def test_an_unknown_type_is_type_not_supported(client: BusClient) -> None:
    uuid = new_uuid()
    error = _error(lambda: client.create_device("mtty", "mtty-9", uuid=uuid))
    assert error.short_name == "TypeNotSupported"
    assert "mtty-9" in error.message and "mtty" in error.message


@pytest.mark.parametrize(
    ("parent", "type_id", "how"),
    [
        ("pool1", "pool1-a", "the driver's ENOSPC"),
        ("core1", "core1-a", "the core's EUSERS"),
        ("ap1", "vfio_ap-passthrough", "vfio-ap's EPERM"),
    ],
)
def test_a_full_type_is_no_instances_available(
    client: BusClient, sim: RunningSim, parent: str, type_id: str, how: str
) -> None:
    first, second = new_uuid(), new_uuid()
    client.create_device(parent, type_id, uuid=first)
    try:
        error = _error(lambda: client.create_device(parent, type_id, uuid=second))
        assert error.short_name == "NoInstancesAvailable", how
        assert second in error.message and type_id in error.message
        assert "available_instances 0" in error.message
        assert not in_sysfs(sim, second)
        assert _error(lambda: client.get_device(second)).short_name == "NotFound"
    finally:
        client.stop(first)


def test_a_conflicting_uuid_is_exists(client: BusClient) -> None:
    uuid = new_uuid()
    client.create_device("mtty", "mtty-1", uuid=uuid)
    for parent, type_id in (("mtty", "mtty-2"), ("par-a", "par-a-1")):
        error = _error(functools.partial(client.create_device, parent, type_id, uuid=uuid))
        assert error.short_name == "Exists"
        assert uuid in error.message
    error = _error(lambda: client.define_device("par-a", "par-a-1", uuid=uuid))
    assert error.short_name == "Exists"
    client.stop(uuid)


def test_a_uuid_the_kernel_already_has_is_exists(client: BusClient, sim: RunningSim) -> None:
    # Created by someone else on another parent a moment ago: the kernel says EEXIST.
    uuid = new_uuid()
    (sim.root / "class/mdev_bus/par-b/mdev_supported_types/par-b-1/create").write_text(uuid)
    error = _error(lambda: client.create_device("mtty", "mtty-1", uuid=uuid))
    assert error.short_name == "Exists"
    (sim.root / "bus/mdev/devices" / uuid / "remove").write_text("1")


def test_an_unknown_uuid_is_not_found(client: BusClient) -> None:
    uuid = new_uuid()
    error = _error(lambda: client.get_device(uuid))
    assert error.short_name == "NotFound"
    assert uuid in error.message


def test_starting_an_active_device_is_already_active(client: BusClient) -> None:
    defined, transient = new_uuid(), new_uuid()
    client.define_device("mtty", "mtty-1", uuid=defined, start=True)
    client.create_device("mtty", "mtty-1", uuid=transient)
    for uuid in (defined, transient):
        error = _error(functools.partial(client.start, uuid))
        assert (error.short_name, uuid in error.message) == ("AlreadyActive", True)
        client.stop(uuid)


def test_stopping_an_inactive_device_is_not_active(client: BusClient) -> None:
    uuid = new_uuid()
    client.define_device("mtty", "mtty-1", uuid=uuid)
    error = _error(lambda: client.stop(uuid))
    assert (error.short_name, uuid in error.message) == ("NotActive", True)


def test_undefine_and_update_of_a_transient_device_are_not_defined(client: BusClient) -> None:
    uuid = new_uuid()
    client.create_device("mtty", "mtty-1", uuid=uuid)
    error = _error(lambda: client.undefine(uuid))
    assert (error.short_name, uuid in error.message) == ("NotDefined", True)
    error = _error(lambda: client.update(uuid, {"autostart": True}))
    assert (error.short_name, uuid in error.message) == ("NotDefined", True)
    client.stop(uuid)


def test_define_of_a_defined_device_is_exists(client: BusClient) -> None:
    uuid = new_uuid()
    client.define_device("mtty", "mtty-1", uuid=uuid, start=True)
    error = _error(lambda: client.define(uuid))
    assert (error.short_name, uuid in error.message) == ("Exists", True)
    client.stop(uuid)


def test_stopping_a_device_a_vm_holds_is_busy(client: BusClient, sim: RunningSim) -> None:
    uuid = new_uuid()
    client.create_device("mtty", "mtty-1", uuid=uuid)
    sim.control.hold(uuid)
    try:
        error = _error(lambda: client.stop(uuid))
        assert error.short_name == "Busy"
        assert uuid in error.message
        assert in_sysfs(sim, uuid)
        assert client.device(uuid)["Active"] is True
    finally:
        sim.control.release(uuid)
    client.stop(uuid)
    assert not in_sysfs(sim, uuid)


@pytest.mark.parametrize(
    ("attribute", "reason"),
    [
        (("setting", "abc"), "the driver refuses the value (EINVAL)"),
        (("missing", "1"), "the type has no such attribute"),
        (("remove", "1"), "a driver-core file, not an attribute"),
    ],
)
def test_a_refused_attribute_is_attribute_rejected_and_rolled_back(
    client: BusClient, sim: RunningSim, attribute: tuple[str, str], reason: str
) -> None:
    uuid = new_uuid()
    error = _error(
        lambda: client.create_device(
            "par-a", "par-a-1", uuid=uuid, attributes=[("other", "1"), attribute]
        )
    )
    assert error.short_name == "AttributeRejected", reason
    assert uuid in error.message and attribute[0] in error.message
    assert not in_sysfs(sim, uuid)
    assert [r.action for r in device_uevents(sim, uuid)][-1] == "remove"
    assert _error(lambda: client.get_device(uuid)).short_name == "NotFound"


def test_an_invalid_entry_for_the_uuid_is_config_invalid(
    client: BusClient, daemon: DaemonProcess
) -> None:
    uuid = new_uuid()
    broken = daemon.devices_dir / f"broken-{uuid}.toml"
    broken.write_text(f'[[device]]\nuuid = "{uuid}"\nparent = "mtty"\n')  # no type
    try:
        client.reload()
        error = _error(lambda: client.define_device("mtty", "mtty-1", uuid=uuid))
        assert error.short_name == "ConfigInvalid"
        assert str(broken) in error.message
        assert not (daemon.devices_dir / f"{uuid}.toml").exists()
    finally:
        broken.unlink()
        client.reload()


def test_a_driver_error_without_a_name_is_failed(client: BusClient, sim: RunningSim) -> None:
    uuid = new_uuid()
    sim.control.fault_create("mtty", "mtty-2", "EIO")
    error = _error(lambda: client.create_device("mtty", "mtty-2", uuid=uuid))
    assert error.short_name == "Failed"
    assert uuid in error.message and "EIO" in error.message
    assert not in_sysfs(sim, uuid)


def test_a_driver_error_with_instances_left_is_not_hidden(
    client: BusClient, sim: RunningSim
) -> None:
    uuid = new_uuid()
    # vfio-ap's "full" errno, while ap1 still has its instance: the driver's error stands.
    sim.control.fault_create("ap1", "vfio_ap-passthrough", "EPERM")
    error = _error(lambda: client.create_device("ap1", "vfio_ap-passthrough", uuid=uuid))
    assert error.short_name == "Failed"
    assert uuid in error.message and "EPERM" in error.message
    assert not in_sysfs(sim, uuid)


# ---- NotAuthorized -----------------------------------------------------------------------------


def _as_nobody(nobody: UnprivilegedCaller, path: str, member: str, sig: str, *body: Any) -> str:
    interface = names.MANAGER_INTERFACE if path == names.MANAGER_PATH else names.DEVICE_INTERFACE
    answer = nobody.call(path, interface, member, sig, list(body))
    assert answer.error is not None, f"{member} was allowed for nobody"
    assert "Traceback" not in answer.message
    return answer.error


def test_a_caller_that_is_not_root_may_read_but_not_change(
    client: BusClient, sim: RunningSim, nobody: UnprivilegedCaller
) -> None:
    uuid = new_uuid()
    client.define_device("mtty", "mtty-1", uuid=uuid)
    path = device_path(uuid)
    denied = names.error_name("NotAuthorized")
    manager = names.MANAGER_PATH
    assert _as_nobody(nobody, manager, "CreateDevice", "ssa{sv}", "mtty", "mtty-1", {}) == denied
    assert _as_nobody(nobody, manager, "DefineDevice", "ssa{sv}", "mtty", "mtty-1", {}) == denied
    assert _as_nobody(nobody, manager, "Reload", "a{sv}", {}) == denied
    for member in ("Start", "Stop", "Define", "Undefine"):
        assert _as_nobody(nobody, path, member, "a{sv}", {}) == denied, member
    changes = {"autostart": ["b", True]}
    assert _as_nobody(nobody, path, "Update", "a{sv}a{sv}", changes, {}) == denied
    # Nothing happened.
    device = client.device(uuid)
    assert (device["Active"], device["Defined"], device["Autostart"]) == (False, True, False)
    # Reads need no authorization.
    answer = nobody.call(manager, names.MANAGER_INTERFACE, "GetDevice", "s", [uuid])
    assert (answer.error, answer.body) == (None, [path])
    answer = nobody.call(names.ROOT_PATH, names.OBJECT_MANAGER_INTERFACE, "GetManagedObjects")
    assert answer.error is None and path in answer.body[0]
    answer = nobody.call(
        parent_path("mtty"),
        names.PROPERTIES_INTERFACE,
        "Get",
        "ss",
        [names.PARENT_INTERFACE, "Name"],
    )
    assert (answer.error, answer.body) == (None, ["mtty"])
    answer = nobody.call(path, names.INTROSPECTABLE_INTERFACE, "Introspect")
    assert answer.error is None and names.DEVICE_INTERFACE in answer.body[0]


def test_not_authorized_names_the_method_and_the_caller(nobody: UnprivilegedCaller) -> None:
    answer = nobody.call(names.MANAGER_PATH, names.MANAGER_INTERFACE, "Reload", "a{sv}", [{}])
    assert answer.error == names.error_name("NotAuthorized")
    assert "Reload" in answer.message and "uid 65534" in answer.message
