# SPDX-License-Identifier: LGPL-2.1-or-later
"""Owners and lifetimes on the client side (docs/dbus-api.md, "Owners and lifetimes"):
`mdevdctl create/define --owner`, `create --lifetime`, `--owner` on the commands that change a
device, `list --owner`, what `list`, `show` and `--schema 1` print of them (docs/json.md), and
`mdevd.client`'s `owner=`/`lifetime=` and its reading of `Owner`/`Lifetime`, also from a daemon
that predates them.

`create --lifetime connection` is refused by mdevdctl (exit 2): the lifetime would end with
mdevdctl's own bus connection, that is at once.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from mdevd import calls
from mdevd.bus import names
from mdevd.cli import mdevdctl
from mdevd.cli.mdevdctl_json import device_v0, device_v1
from mdevd.client import (
    LIFETIME_CONNECTION,
    LIFETIME_MANUAL,
    DeviceInfo,
    NotAuthorized,
    NotFound,
    SyncClient,
)
from tests.daemon.conftest import ClientStack
from tests.daemon.harness import BusClient, in_sysfs, new_uuid
from tests.daemon.test_ctl import fails, ok
from tests.support.daemon import DaemonProcess
from tests.support.sim import RunningSim

PARENT, TYPE = "mtty", "mtty-1"
#: An address nobody listens on: a command that got as far as connecting would exit 3.
NOWHERE = "unix:path=/nonexistent/mdevd-test-bus"


def _show(daemon: DaemonProcess, uuid: str) -> dict[str, str]:
    fields = {}
    for line in ok(daemon, "show", uuid).splitlines():
        key, sep, value = line.partition(":")
        if sep and not line.startswith(" "):
            fields[key] = value.strip()
    return fields


def _listed(daemon: DaemonProcess, *args: str) -> list[str]:
    return [line.split(" ", 1)[0] for line in ok(daemon, "list", *args).splitlines()]


def _line(daemon: DaemonProcess, uuid: str) -> str:
    (line,) = [li for li in ok(daemon, "list").splitlines() if li.startswith(uuid)]
    return line


def _ctl_nowhere(daemon: DaemonProcess, *args: str) -> subprocess.CompletedProcess[str]:
    """mdevdctl against an address nobody listens on: exit 2 there (not 3) proves it stopped
    before connecting, let alone calling."""
    return subprocess.run(
        [sys.executable, "-m", "mdevd.cli.mdevdctl", "--address", NOWHERE, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=daemon.env,
    )


# ---- mdevdctl against the daemon ----------------------------------------------------------------


def test_create_with_an_owner_then_list_show_and_json(
    daemon: DaemonProcess, sim: RunningSim
) -> None:
    uuid = new_uuid()
    printed = ok(daemon, "create", PARENT, TYPE, "-u", uuid, "--owner", "nova")
    assert printed.strip() == uuid
    try:
        assert uuid in _listed(daemon, "--owner", "nova")
        assert uuid not in _listed(daemon, "--owner", "other")
        assert _line(daemon, uuid) == f"{uuid} {PARENT} {TYPE} manual (active) owner=nova"

        fields = _show(daemon, uuid)
        assert (fields["Owner"], fields["Lifetime"]) == ("nova", "manual")

        (device,) = json.loads(ok(daemon, "list", "--owner", "nova", "--schema", "1"))["devices"]
        assert (device["uuid"], device["owner"], device["lifetime"]) == (uuid, "nova", "manual")
        assert json.loads(ok(daemon, "list", "--owner", "other", "--schema", "1")) == {
            "schema": 1,
            "devices": [],
        }
        shown = json.loads(ok(daemon, "show", uuid, "--schema", "1"))["device"]
        assert (shown["owner"], shown["lifetime"]) == ("nova", "manual")
        # Schema 0 is frozen: filtered the same way, and no new keys.
        (plain,) = json.loads(ok(daemon, "list", "--owner", "nova", "--json"))
        assert plain["uuid"] == uuid and "owner" not in plain and "lifetime" not in plain
        assert json.loads(ok(daemon, "list", "--owner", "other", "--json")) == []
        assert "owner" not in json.loads(ok(daemon, "show", uuid, "--json"))
    finally:
        ok(daemon, "stop", uuid, "--owner", "nova")
    assert not in_sysfs(sim, uuid)


def test_a_device_without_a_label_is_owned_by_the_callers_unit_or_uid(
    daemon: DaemonProcess,
) -> None:
    uuid = _uuid(ok(daemon, "create", PARENT, TYPE))
    try:
        owner = _show(daemon, uuid)["Owner"]
        assert owner.startswith(("unit:", "uid:"))
        # Worked out by mdevd, not given: `list` leaves it to `show` and the JSON.
        assert _line(daemon, uuid) == f"{uuid} {PARENT} {TYPE} manual (active)"
        assert uuid in _listed(daemon, "--owner", owner)
    finally:
        ok(daemon, "stop", uuid)


def test_stop_as_another_owner_is_refused_and_names_the_owner(daemon: DaemonProcess) -> None:
    uuid = _uuid(ok(daemon, "create", PARENT, TYPE, "--owner", "nova"))
    try:
        message = fails(daemon, mdevdctl.EXIT_NOT_AUTHORIZED, "stop", uuid, "--owner", "kubevirt")
        assert "belongs to nova" in message and "kubevirt" in message
        assert message.endswith("[NotAuthorized]")
        assert _show(daemon, uuid)["Active"] == "yes"
        # Naming nobody, an administrator (root here) may; so may its owner.
        message = fails(
            daemon, mdevdctl.EXIT_NOT_AUTHORIZED, "persist", uuid, "--owner", "kubevirt"
        )
        assert "belongs to nova" in message
        assert _show(daemon, uuid)["Defined"] == "no"
    finally:
        ok(daemon, "stop", uuid, "--owner", "nova")


def test_define_with_an_owner_and_the_commands_that_change_it(daemon: DaemonProcess) -> None:
    uuid = new_uuid()
    ok(daemon, "define", PARENT, TYPE, "-u", uuid, "--owner", "kubevirt")
    try:
        fields = _show(daemon, uuid)
        assert (fields["Owner"], fields["Lifetime"]) == ("kubevirt", "manual")
        assert uuid in _listed(daemon, "--owner", "kubevirt")
        for args in (
            ("start", uuid),
            ("modify", uuid, "--autostart"),
            ("undefine", uuid),
        ):
            message = fails(daemon, mdevdctl.EXIT_NOT_AUTHORIZED, *args, "--owner", "nova")
            assert "belongs to kubevirt" in message, args
        assert _show(daemon, uuid)["Autostart"] == "no"
        ok(daemon, "start", uuid, "--owner", "kubevirt")
        ok(daemon, "modify", uuid, "--autostart", "--owner", "kubevirt")
        assert _show(daemon, uuid)["Autostart"] == "yes"
        ok(daemon, "stop", uuid, "--owner", "kubevirt")
    finally:
        ok(daemon, "undefine", uuid, "--owner", "kubevirt")
    fails(daemon, mdevdctl.EXIT_NOT_FOUND, "show", uuid)


def test_a_unit_lifetime_is_sent(daemon: DaemonProcess) -> None:
    """No systemd answers on the tests' private bus: the daemon refuses a unit lifetime
    (NotSupported), which shows mdevdctl passed it on; nothing is made."""
    uuid = new_uuid()
    message = fails(
        daemon,
        mdevdctl.EXIT_FAILED,
        *("create", PARENT, TYPE, "-u", uuid, "--owner", "nova"),
        *("--lifetime", "unit:qemu-1.scope"),
    )
    assert message.endswith("[NotSupported]")
    fails(daemon, mdevdctl.EXIT_NOT_FOUND, "show", uuid)
    uuid = _uuid(ok(daemon, "create", PARENT, TYPE, "--lifetime", "manual"))
    assert _show(daemon, uuid)["Lifetime"] == "manual"
    ok(daemon, "stop", uuid)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--lifetime", "connection"), ("as soon as mdevdctl exits", "unit:NAME")),
        (("--lifetime", "bad"), ("lifetime must be",)),
        (("--lifetime", "unit:../../etc"), ("lifetime must be",)),
        (("--owner", "Nova Compute"), ("owner must be",)),
        (("--owner", "x" * 65), ("owner must be",)),
    ],
)
def test_bad_owners_and_lifetimes_are_usage_errors_before_any_call(
    daemon: DaemonProcess, sim: RunningSim, args: tuple[str, ...], words: tuple[str, ...]
) -> None:
    before = set(_listed(daemon))
    for run in (daemon.ctl, lambda *a: _ctl_nowhere(daemon, *a)):
        result = run("create", PARENT, TYPE, *args)
        assert result.returncode == mdevdctl.EXIT_USAGE, (args, result.stderr)
        assert result.stdout == "" and "Traceback" not in result.stderr
        message = result.stderr.strip().splitlines()[-1]
        assert message.startswith("mdevdctl create: error: argument --"), message
        for word in words:
            assert word in message, (word, message)
    assert set(_listed(daemon)) == before


def test_owner_options_of_other_commands_are_checked_too(daemon: DaemonProcess) -> None:
    for command in ("define", "start", "stop", "undefine", "persist", "modify"):
        operands = (PARENT, TYPE) if command == "define" else (new_uuid(),)
        result = _ctl_nowhere(daemon, command, *operands, "--owner", "NOVA")
        assert result.returncode == mdevdctl.EXIT_USAGE, (command, result.stderr)
        assert "owner must be" in result.stderr
    # `define` has no lifetime: a definition lives until undefined.
    result = _ctl_nowhere(daemon, "define", PARENT, TYPE, "--lifetime", "manual")
    assert result.returncode == mdevdctl.EXIT_USAGE


# ---- mdevd.client -------------------------------------------------------------------------------


def test_the_client_records_an_owner_and_a_connection_lifetime(stack: ClientStack) -> None:
    uuid = new_uuid()
    since = stack.client.mark()
    with SyncClient(stack.address) as nova:
        device = nova.create_device(
            PARENT, TYPE, uuid=uuid, owner="nova", lifetime=LIFETIME_CONNECTION
        )
        assert (device.owner, device.lifetime) == ("nova", LIFETIME_CONNECTION)
        (listed,) = [d for d in nova.devices() if d.uuid == uuid]
        assert (listed.owner, listed.lifetime) == ("nova", LIFETIME_CONNECTION)
        with pytest.raises(NotAuthorized) as refused:
            nova.stop(uuid, owner="kubevirt")
        assert "belongs to nova" in refused.value.message
        assert nova.device(uuid).active
    # Nova's connection closed: the daemon removes the device.
    stack.client.wait_for_events(1, uuid, "stopped", "owner-gone", since=since)
    with SyncClient(stack.address) as client, pytest.raises(NotFound):
        client.device(uuid)


def test_the_client_passes_owner_to_define_and_the_device_methods(stack: ClientStack) -> None:
    uuid = new_uuid()
    with SyncClient(stack.address) as client:
        client.define_device(PARENT, TYPE, uuid=uuid, owner="kubevirt")
        try:
            device = client.device(uuid)
            assert (device.owner, device.lifetime) == ("kubevirt", LIFETIME_MANUAL)
            for method, kwargs in (
                (client.start, {}),
                (client.update, {"autostart": True}),
                (client.undefine, {}),
            ):
                with pytest.raises(NotAuthorized):
                    method(uuid, owner="nova", **kwargs)
            client.start(uuid, owner="kubevirt")
            client.update(uuid, autostart=True, owner="kubevirt")
            assert client.device(uuid).autostart
            client.stop(uuid, owner="kubevirt")
        finally:
            client.undefine(uuid, owner="kubevirt")
        # Define (persist) of a transient device, and its stop.
        transient = client.create_device(PARENT, TYPE, owner="kubevirt").uuid
        with pytest.raises(NotAuthorized):
            client.define(transient, owner="nova")
        client.define(transient, owner="kubevirt")
        assert client.device(transient).defined
        with pytest.raises(NotAuthorized):
            client.stop(transient, owner="nova")
        client.stop(transient, owner="kubevirt")
        client.undefine(transient, owner="kubevirt")


def test_owner_and_lifetime_are_sent_only_when_given() -> None:
    def options_of(request: Any) -> dict[str, Any]:
        call = next(request)
        request.close()
        return dict(call.body[-1])

    plain = options_of(calls.create_device_path(PARENT, TYPE))
    assert "owner" not in plain and "lifetime" not in plain
    given = options_of(calls.create_device_path(PARENT, TYPE, owner="nova", lifetime="manual"))
    assert (given["owner"].value, given["lifetime"].value) == ("nova", "manual")
    assert "owner" not in options_of(calls.define_device(PARENT, TYPE))
    assert options_of(calls.define_device(PARENT, TYPE, owner="nova"))["owner"].value == "nova"
    # The device methods look the device up first; their own call is the second.
    for request in (
        calls.start("u", owner="nova"),
        calls.stop("u", owner="nova"),
        calls.define("u", owner="nova"),
        calls.undefine("u", owner="nova"),
        calls.update("u", autostart=True, owner="nova"),
    ):
        next(request)
        call = request.send(["/org/mdevd/Mdevd1/devices/u"])
        assert call.body[-1]["owner"].value == "nova", call.member
        request.close()
    request = calls.stop("u")
    next(request)
    assert "owner" not in request.send(["/p"]).body[-1]
    request.close()


def test_a_daemon_without_the_properties_means_no_owner(
    stack: ClientStack, client: BusClient
) -> None:
    uuid = new_uuid()
    client.create_device(PARENT, TYPE, uuid=uuid, owner="nova")
    try:
        (structs,) = client.call(
            names.MANAGER_PATH, names.MANAGER_INTERFACE, "ListDevices", "a{sv}", [{}]
        )
        (struct,) = [s for s in structs if s[1] == uuid]
        assert (DeviceInfo.from_struct(struct).owner, DeviceInfo.from_struct(struct).lifetime) == (
            "nova",
            LIFETIME_MANUAL,
        )
        props = client.managed_objects()[struct[0]][names.DEVICE_INTERFACE]
        assert DeviceInfo.from_properties(struct[0], props).owner == "nova"
        older = {k: v for k, v in props.items() if k not in ("Owner", "Lifetime")}
        for device in (
            DeviceInfo.from_struct([*struct[:13], {}]),
            DeviceInfo.from_properties(struct[0], older),
        ):
            assert (device.owner, device.lifetime) == ("", "")
    finally:
        client.stop(uuid)


def test_what_list_and_json_print_of_owners_and_lifetimes() -> None:
    """What no daemon of the tests gives: a unit lifetime, and a device nobody owns."""
    base = ("/p", "u", "mtty", "mtty-1", True, False, False, (), "/sys/x", 7, "", "")
    unit = DeviceInfo(*base, owner="nova", lifetime="unit:qemu-1.scope")
    assert mdevdctl._device_line(unit) == (
        "u mtty mtty-1 manual (active) owner=nova lifetime=unit:qemu-1.scope"
    )
    worked_out = DeviceInfo(*base, owner="unit:virtqemud.service", lifetime="connection")
    assert mdevdctl._device_line(worked_out) == "u mtty mtty-1 manual (active) lifetime=connection"
    nobodys = DeviceInfo(*base)
    assert mdevdctl._device_line(nobodys) == "u mtty mtty-1 manual (active)"
    assert (device_v1(nobodys)["owner"], device_v1(nobodys)["lifetime"]) == ("", "")
    assert device_v1(unit)["lifetime"] == "unit:qemu-1.scope"
    assert "owner" not in device_v0(unit) and "lifetime" not in device_v0(unit)


def _uuid(output: str) -> str:
    return output.strip()
