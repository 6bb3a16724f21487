# SPDX-License-Identifier: LGPL-2.1-or-later
"""Clients nobody here wrote: systemd's busctl and GLib's gdbus and GDBusObjectManagerClient.

They parse the introspection data, marshal the arguments and read the signals their own way,
so they catch what a test written with the same library as the daemon would not: a signal
sent from the wrong path, a missing annotation, a reply that overtakes its signals.
"""

from __future__ import annotations

import json
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

import pytest

from mdevd.bus import names
from tests.daemon.conftest import ClientStack
from tests.daemon.harness import BusClient, device_path, in_sysfs, new_uuid, parent_path
from tests.support.sim import RunningSim

TIMEOUT = 60


def busctl(stack: ClientStack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["busctl", f"--address={stack.address}", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def gdbus(stack: ClientStack, command: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["gdbus", command, "--address", stack.address, "--dest", names.BUS_NAME, *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


class Watcher:
    """A monitoring tool's output, line by line, started before the test acts."""

    def __init__(self, argv: list[str], ready: str) -> None:
        self.program = argv[0]
        self.process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.seen: list[str] = []
        while ready not in self._line():
            pass

    def _line(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise AssertionError(f"{self.program} ended: {self.seen}")
        self.seen.append(line.rstrip("\n"))
        return line

    def until(self, text: str) -> list[str]:
        """Lines read until (and with) the first one containing `text`."""
        start = len(self.seen)
        while text not in self._line():
            pass
        return self.seen[start:]

    def stop(self) -> None:
        self.process.terminate()
        self.process.communicate(timeout=TIMEOUT)


@pytest.fixture
def watch() -> Iterator[list[Watcher]]:
    watchers: list[Watcher] = []
    yield watchers
    for watcher in watchers:
        watcher.stop()


# ---- busctl --------------------------------------------------------------------------------------


def test_busctl_introspects_the_manager(stack: ClientStack) -> None:
    result = busctl(stack, "introspect", names.BUS_NAME, names.MANAGER_PATH)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines() if line}
    assert rows[".CreateDevice"][:3] == ["method", "ssa{sv}", "o"]
    assert rows[".DefineDevice"][:3] == ["method", "ssa{sv}", "o"]
    assert rows[".GetDevice"][:3] == ["method", "s", "o"]
    assert rows[".Reload"][:3] == ["method", "a{sv}", "-"]
    assert rows[".DeviceEvent"][:2] == ["signal", "ossa{sv}"]
    assert rows[".Version"][:2] == ["property", "s"] and rows[".Version"][-1] == "const"
    assert rows[".Features"][-1] == "const"


def test_busctl_introspects_a_device_and_a_parent(stack: ClientStack, client: BusClient) -> None:
    uuid = new_uuid()
    client.define_device("mtty", "mtty-1", uuid=uuid)
    result = busctl(stack, "introspect", names.BUS_NAME, device_path(uuid), names.DEVICE_INTERFACE)
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()[1:] if line}
    assert rows[".Update"][:2] == ["method", "a{sv}a{sv}"]
    assert rows[".UUID"] == ["property", "s", f'"{uuid}"', "const"]
    assert rows[".Active"] == ["property", "b", "false", "emits-change"]
    assert rows[".IommuGroup"] == ["property", "i", "-1", "emits-change"]
    assert rows[".Backend"] == ["property", "s", '"mdev"', "emits-change"]
    assert rows[".Placement"] == ["property", "s", '""', "emits-change"]
    assert rows[".Owner"][:2] == ["property", "s"] and rows[".Lifetime"] == [
        "property",
        "s",
        '"manual"',
        "emits-change",
    ]
    result = busctl(
        stack, "introspect", names.BUS_NAME, parent_path("mtty"), names.PARENT_INTERFACE
    )
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()[1:] if line}
    assert rows[".Name"] == ["property", "s", '"mtty"', "const"]
    assert rows[".Backend"] == ["property", "s", '"mdev"', "emits-change"]
    assert rows[".Types"][:2] == ["property", "a{sa{sv}}"] and rows[".Types"][-1] == "emits-change"


def test_busctl_tree(stack: ClientStack, client: BusClient) -> None:
    uuid = new_uuid()
    client.define_device("mtty", "mtty-1", uuid=uuid)
    result = busctl(stack, "tree", "--list", names.BUS_NAME)
    paths = set(result.stdout.split())
    assert {names.ROOT_PATH, names.MANAGER_PATH, parent_path("mtty"), device_path(uuid)} <= paths


def test_busctl_creates_a_device_and_reads_it_back(
    stack: ClientStack, sim: RunningSim, client: BusClient
) -> None:
    uuid = new_uuid()
    result = busctl(
        stack,
        "call",
        names.BUS_NAME,
        names.MANAGER_PATH,
        names.MANAGER_INTERFACE,
        "CreateDevice",
        "ssa{sv}",
        "mtty",
        "mtty-1",
        "2",
        "uuid",
        "s",
        uuid,
        "attributes",
        "a(ss)",
        "0",
    )
    assert (result.returncode, result.stdout.strip()) == (0, f'o "{device_path(uuid)}"')
    assert in_sysfs(sim, uuid)
    result = busctl(
        stack, "get-property", names.BUS_NAME, device_path(uuid), names.DEVICE_INTERFACE, "Active"
    )
    assert result.stdout.strip() == "b true"
    result = busctl(
        stack,
        "--json=short",
        "call",
        names.BUS_NAME,
        names.ROOT_PATH,
        names.OBJECT_MANAGER_INTERFACE,
        "GetManagedObjects",
    )
    reply = json.loads(result.stdout)
    assert reply["type"] == "a{oa{sa{sv}}}"
    [objects] = reply["data"]
    device = objects[device_path(uuid)][names.DEVICE_INTERFACE]
    assert device["UUID"] == {"type": "s", "data": uuid}
    assert device["ParentObject"] == {"type": "o", "data": parent_path("mtty")}
    assert names.MANAGER_INTERFACE in objects[names.MANAGER_PATH]
    client.stop(uuid)


def test_busctl_shows_the_error_message(stack: ClientStack) -> None:
    result = busctl(
        stack,
        "call",
        names.BUS_NAME,
        names.MANAGER_PATH,
        names.MANAGER_INTERFACE,
        "CreateDevice",
        "ssa{sv}",
        "mtty",
        "mtty-9",
        "0",
    )
    assert result.returncode == 1
    assert "parent mtty does not support type mtty-9" in result.stderr


def test_busctl_monitor_sees_the_signals_before_the_reply(
    stack: ClientStack, client: BusClient, watch: list[Watcher]
) -> None:
    watcher = Watcher(
        ["busctl", f"--address={stack.address}", "monitor", names.BUS_NAME, "--json=short"],
        ready="Monitoring bus message stream.",
    )
    watch.append(watcher)
    uuid = new_uuid()
    client.create_device("mtty", "mtty-2", uuid=uuid)
    messages: list[dict[str, Any]] = []
    create_cookie = None
    while True:
        message = json.loads(watcher.until("{")[-1])
        messages.append(message)
        if message.get("member") == "CreateDevice":
            create_cookie = message["cookie"]
        elif create_cookie is not None and message.get("reply_cookie") == create_cookie:
            break
    # The last message is CreateDevice's reply; the signals went out on the bus before it.
    assert messages[-1]["type"] == "method_return"
    signals = [m["member"] for m in messages[:-1] if m["type"] == "signal"]
    assert "InterfacesAdded" in signals and "DeviceEvent" in signals
    added = next(m for m in messages if m.get("member") == "InterfacesAdded")
    assert (added["path"], added["interface"]) == (names.ROOT_PATH, names.OBJECT_MANAGER_INTERFACE)
    client.stop(uuid)


# ---- gdbus ---------------------------------------------------------------------------------------


def test_gdbus_introspects_a_device(stack: ClientStack, client: BusClient) -> None:
    uuid = new_uuid()
    client.define_device("mtty", "mtty-1", uuid=uuid)
    result = gdbus(stack, "introspect", "--object-path", device_path(uuid), "--xml")
    node = ET.fromstring(result.stdout)  # noqa: S314 (gdbus's answer)
    [interface] = [i for i in node.findall("interface") if i.get("name") == names.DEVICE_INTERFACE]
    methods = {m.get("name") for m in interface.findall("method")}
    assert methods == {"Start", "Stop", "Define", "Undefine", "Update", "QueryAttributes", "Open"}
    assert len(interface.findall("property")) == 18  # Owner and Lifetime added


def test_gdbus_creates_a_device_and_gets_the_error_name_of_a_failure(
    stack: ClientStack, sim: RunningSim, client: BusClient
) -> None:
    uuid = new_uuid()
    result = gdbus(
        stack,
        "call",
        "--object-path",
        names.MANAGER_PATH,
        "--method",
        f"{names.MANAGER_INTERFACE}.CreateDevice",
        "par-a",
        "par-a-1",
        f"{{'uuid': <'{uuid}'>, 'attributes': <[('setting', '8')]>}}",
    )
    assert (result.returncode, result.stdout.strip()) == (
        0,
        f"(objectpath '{device_path(uuid)}',)",
    )
    assert in_sysfs(sim, uuid)
    assert client.device(uuid)["Attributes"] == [["setting", "8"]]
    result = gdbus(
        stack,
        "call",
        "--object-path",
        names.MANAGER_PATH,
        "--method",
        f"{names.MANAGER_INTERFACE}.CreateDevice",
        "par-a",
        "par-a-1",
        f"{{'uuid': <'{uuid}'>}}",
    )
    assert result.returncode == 1
    assert "GDBus.Error:org.mdevd.Mdevd1.Error.Exists:" in result.stderr
    result = gdbus(
        stack,
        "call",
        "--object-path",
        names.MANAGER_PATH,
        "--method",
        f"{names.MANAGER_INTERFACE}.CreateDevice",
        "par-a",
        "par-a-1",
        "{'uuid': <42>}",
    )
    assert "GDBus.Error:org.mdevd.Mdevd1.Error.InvalidArgument:" in result.stderr
    client.stop(uuid)


def test_gdbus_get_managed_objects(stack: ClientStack, client: BusClient) -> None:
    uuid = new_uuid()
    client.define_device("mtty", "mtty-1", uuid=uuid)
    result = gdbus(
        stack,
        "call",
        "--object-path",
        names.ROOT_PATH,
        "--method",
        f"{names.OBJECT_MANAGER_INTERFACE}.GetManagedObjects",
    )
    assert result.returncode == 0
    assert f"objectpath '{device_path(uuid)}'" in result.stdout or (
        f"'{device_path(uuid)}'" in result.stdout
    )
    assert f"'UUID': <'{uuid}'>" in result.stdout


def test_gdbus_monitor_sees_every_kind_of_signal(
    stack: ClientStack, client: BusClient, watch: list[Watcher]
) -> None:
    watcher = Watcher(
        ["gdbus", "monitor", "--address", stack.address, "--dest", names.BUS_NAME],
        ready="is owned by",
    )
    watch.append(watcher)
    uuid = new_uuid()
    path = device_path(uuid)
    client.define_device("mtty", "mtty-1", uuid=uuid)
    lines = watcher.until(f"'{uuid}', 'defined'")
    assert any(
        line.startswith(f"{names.ROOT_PATH}: {names.OBJECT_MANAGER_INTERFACE}.InterfacesAdded")
        and path in line
        for line in lines
    )
    client.start(uuid)
    lines = watcher.until(f"'{uuid}', 'started'")
    assert any(
        line.startswith(f"{path}: org.freedesktop.DBus.Properties.PropertiesChanged")
        and "'Active': <true>" in line
        for line in lines
    )
    assert lines[-1].startswith(f"{names.MANAGER_PATH}: {names.MANAGER_INTERFACE}.DeviceEvent")
    client.stop(uuid)
    client.undefine(uuid)
    lines = watcher.until(f"{names.OBJECT_MANAGER_INTERFACE}.InterfacesRemoved")
    assert path in lines[-1]


# ---- GDBusObjectManagerClient --------------------------------------------------------------------

#: Run with the system's Python (python3-gi). Prints the objects it manages, then one line per
#: object added or removed and per property change, as GLib's object manager reports them.
OBJECT_MANAGER_CLIENT = r"""
import sys
import gi
gi.require_version("Gio", "2.0")
from gi.repository import Gio, GLib

flags = (Gio.DBusConnectionFlags.AUTHENTICATION_CLIENT
         | Gio.DBusConnectionFlags.MESSAGE_BUS_CONNECTION)
connection = Gio.DBusConnection.new_for_address_sync(sys.argv[1], flags, None, None)
manager = Gio.DBusObjectManagerClient.new_sync(
    connection, Gio.DBusObjectManagerClientFlags.NONE, "org.mdevd.Mdevd1",
    "/org/mdevd/Mdevd1", None, None, None)

def say(*words):
    print(*words, flush=True)

def on_properties(manager, object_proxy, interface_proxy, changed, invalidated):
    say("changed", object_proxy.get_object_path(), " ".join(sorted(changed.keys())))

manager.connect("object-added", lambda m, o: say("added", o.get_object_path()))
manager.connect("object-removed", lambda m, o: say("removed", o.get_object_path()))
manager.connect("interface-proxy-properties-changed", on_properties)
for managed in manager.get_objects():
    say("object", managed.get_object_path(),
        ",".join(sorted(i.get_interface_name() for i in managed.get_interfaces())))
say("ready")
GLib.MainLoop().run()
"""


def test_glibs_object_manager_client_follows_the_tree(
    stack: ClientStack, client: BusClient, watch: list[Watcher]
) -> None:
    uuid = new_uuid()
    client.define_device("mtty", "mtty-1", uuid=uuid)
    watcher = Watcher(["/usr/bin/python3", "-c", OBJECT_MANAGER_CLIENT, stack.address], "ready")
    watch.append(watcher)
    objects = {
        line.split()[1]: line.split()[2] for line in watcher.seen if line.startswith("object ")
    }
    assert objects[names.MANAGER_PATH] == names.MANAGER_INTERFACE
    assert objects[parent_path("mtty")] == names.PARENT_INTERFACE
    assert objects[device_path(uuid)] == names.DEVICE_INTERFACE

    fresh = new_uuid()
    client.create_device("mtty", "mtty-1", uuid=fresh)
    assert watcher.until(f"added {device_path(fresh)}")
    client.start(uuid)
    lines = watcher.until(f"changed {device_path(uuid)}")
    assert "Active" in lines[-1].split()
    client.stop(fresh)
    assert watcher.until(f"removed {device_path(fresh)}")
    client.stop(uuid)
