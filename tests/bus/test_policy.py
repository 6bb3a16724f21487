# SPDX-License-Identifier: LGPL-2.1-or-later
"""dbus/org.mdevd.Mdevd1.conf on a real dbus-daemon with the system bus's default policy.

Only root may own org.mdevd.Mdevd1; everyone may call mdevd's interfaces and the standard
ones it serves, and nothing else on it.
"""

from __future__ import annotations

import asyncio
import configparser
import json
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from dbus_fast import Message, RequestNameReply
from dbus_fast.aio import MessageBus
from dbus_fast.service import ServiceInterface

from mdevd.bus import names
from mdevd.bus.signatures import DBusStr, dbus_method
from tests.support.bus import PROJECT_POLICY, private_bus
from tests.support.paths import REPO

pytestmark = pytest.mark.timeout(60)

ALLOWED_INTERFACES = (
    names.MANAGER_INTERFACE,
    names.PARENT_INTERFACE,
    names.DEVICE_INTERFACE,
)
HIDDEN_INTERFACE = "org.mdevd.Mdevd1.Debug"
PATH = "/org/mdevd/Mdevd1/Probe"


class Probe(ServiceInterface):
    @dbus_method(name="Probe")
    def probe(self) -> DBusStr:
        return "ok"


# A policy file that allows everyone everything, included before the project's.
_PERMISSIVE = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <policy context="default">
    <allow own="*"/>
    <allow send_destination="*"/>
  </policy>
</busconfig>
"""


@pytest.fixture(params=["system default", "permissive"])
def policy_bus(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    policies = [PROJECT_POLICY]
    if request.param == "permissive":
        permissive = tmp_path / "permissive.conf"
        permissive.write_text(_PERMISSIVE)
        permissive.chmod(0o644)
        policies.insert(0, permissive)
    with private_bus(policies) as address:
        yield address


# Runs as nobody. argv: address, then JSON [[label, destination, path, interface, member,
# signature, body], ...] ("own" as member means RequestName). Prints {label: result}.
_NOBODY_CALLS = textwrap.dedent(
    """
    import asyncio, json, sys
    from dbus_fast import DBusError, Message, MessageType
    from dbus_fast.aio import MessageBus

    async def main(address, calls):
        bus = await MessageBus(bus_address=address).connect()
        results = {}
        for label, destination, path, interface, member, signature, body in calls:
            if member == "own":
                try:
                    reply = await bus.request_name(destination)
                    results[label] = f"owner: {reply.name}"
                except DBusError as error:
                    results[label] = error.type
                continue
            reply = await bus.call(Message(destination=destination, path=path,
                                           interface=interface, member=member,
                                           signature=signature, body=body))
            ok = reply.message_type is MessageType.METHOD_RETURN
            results[label] = "ok" if ok else reply.error_name
        print(json.dumps(results))

    asyncio.run(main(sys.argv[1], json.loads(sys.argv[2])))
    """
)


async def _as_nobody(nobody_python: list[str], address: str, calls: list[list[object]]) -> object:
    process = await asyncio.create_subprocess_exec(
        *nobody_python,
        "-c",
        _NOBODY_CALLS,
        address,
        json.dumps(calls),
        stdout=asyncio.subprocess.PIPE,
        cwd="/",
    )
    output, _ = await process.communicate()
    assert process.returncode == 0
    return json.loads(output)


def test_nobody_cannot_own_the_name(policy_bus: str, nobody_python: list[str]) -> None:
    calls: list[list[object]] = [["own", names.BUS_NAME, "", "", "own", "", []]]
    result = asyncio.run(_as_nobody(nobody_python, policy_bus, calls))
    assert result == {"own": "org.freedesktop.DBus.Error.AccessDenied"}


async def _serve_and_probe(address: str, nobody_python: list[str]) -> tuple[object, object]:
    service = await MessageBus(bus_address=address).connect()
    for interface in (*ALLOWED_INTERFACES, HIDDEN_INTERFACE):
        service.export(PATH, Probe(interface))
    owned = await service.request_name(names.BUS_NAME)
    calls: list[list[object]] = [
        [interface, names.BUS_NAME, PATH, interface, "Probe", "", []]
        for interface in (*ALLOWED_INTERFACES, HIDDEN_INTERFACE)
    ]
    calls += [
        [
            "Properties",
            names.BUS_NAME,
            PATH,
            names.PROPERTIES_INTERFACE,
            "GetAll",
            "s",
            [names.DEVICE_INTERFACE],
        ],
        [
            "Introspectable",
            names.BUS_NAME,
            PATH,
            names.INTROSPECTABLE_INTERFACE,
            "Introspect",
            "",
            [],
        ],
        ["Peer", names.BUS_NAME, PATH, names.PEER_INTERFACE, "Ping", "", []],
        # No interface field: dbus-fast would dispatch it by member alone; the bus refuses it.
        ["no interface", names.BUS_NAME, PATH, None, "Probe", "", []],
        # The unique name reaches the same connection: the same rules apply.
        ["unique name", service.unique_name, PATH, names.MANAGER_INTERFACE, "Probe", "", []],
        ["unique name hidden", service.unique_name, PATH, HIDDEN_INTERFACE, "Probe", "", []],
        [
            "ObjectManager",
            names.BUS_NAME,
            names.ROOT_PATH,
            names.OBJECT_MANAGER_INTERFACE,
            "GetManagedObjects",
            "",
            [],
        ],
        ["own while owned", names.BUS_NAME, "", "", "own", "", []],
    ]
    try:
        nobody = await _as_nobody(nobody_python, address, calls)
        root_client = await MessageBus(bus_address=address).connect()
        hidden = await root_client.call(
            Message(
                destination=names.BUS_NAME, path=PATH, interface=HIDDEN_INTERFACE, member="Probe"
            )
        )
        no_interface = await root_client.call(
            Message(destination=names.BUS_NAME, path=PATH, member="Probe")
        )
        root_client.disconnect()
    finally:
        service.disconnect()
    root = {
        "owned": owned.name,
        "root calls hidden": hidden.error_name or "ok",
        "root calls without interface": no_interface.error_name or "ok",
    }
    return root, nobody


def test_root_owns_and_everyone_calls_only_the_listed_interfaces(
    policy_bus: str, nobody_python: list[str]
) -> None:
    root, nobody = asyncio.run(_serve_and_probe(policy_bus, nobody_python))
    assert root == {
        "owned": RequestNameReply.PRIMARY_OWNER.name,
        # The policy lists interfaces for everyone, root included.
        "root calls hidden": "org.freedesktop.DBus.Error.AccessDenied",
        "root calls without interface": "org.freedesktop.DBus.Error.AccessDenied",
    }
    denied = "org.freedesktop.DBus.Error.AccessDenied"
    assert nobody == {
        names.MANAGER_INTERFACE: "ok",
        names.PARENT_INTERFACE: "ok",
        names.DEVICE_INTERFACE: "ok",
        HIDDEN_INTERFACE: denied,
        "Properties": "ok",
        "Introspectable": "ok",
        "Peer": "ok",
        "no interface": denied,
        "unique name": "ok",
        "unique name hidden": denied,
        "ObjectManager": "ok",
        "own while owned": denied,
    }


def test_activation_file_names_the_systemd_unit() -> None:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(REPO / "dbus" / "org.mdevd.Mdevd1.service")
    assert dict(parser["D-BUS Service"]) == {
        "Name": names.BUS_NAME,
        "Exec": "/bin/false",
        "User": "root",
        "SystemdService": "mdevd.service",
    }
