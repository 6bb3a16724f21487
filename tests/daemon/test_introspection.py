# SPDX-License-Identifier: LGPL-2.1-or-later
"""The live daemon's Introspect() of every kind of object is the contract's XML.

dbus/org.mdevd.Mdevd1.xml is the machine-readable contract (tests/bus/test_interface_xml.py
checks that it documents every member). Here the running daemon must say the same: for each of
our interfaces on each object, the same methods with the same named, typed, directed arguments,
the same read-only properties with the same annotations, the same signals; and the standard
interfaces every object carries, the ObjectManager at the root.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

from mdevd.bus import names
from tests.daemon.conftest import ClientStack
from tests.daemon.harness import BusClient, device_path, new_uuid, parent_path
from tests.support.paths import REPO

XML = REPO / "dbus" / "org.mdevd.Mdevd1.xml"
OUR_INTERFACES = (names.MANAGER_INTERFACE, names.PARENT_INTERFACE, names.DEVICE_INTERFACE)
STANDARD_INTERFACES = {
    names.PROPERTIES_INTERFACE,
    names.INTROSPECTABLE_INTERFACE,
    names.PEER_INTERFACE,
}


def _member(element: ET.Element) -> dict[str, Any]:
    """What a client can rely on about a method, signal or property (docs and order aside)."""
    description: dict[str, Any] = {"kind": element.tag, **element.attrib}
    description["args"] = [
        (
            arg.attrib.get("name"),
            arg.attrib["type"],
            arg.attrib.get("direction", "in" if element.tag == "method" else "out"),
        )
        for arg in element.findall("arg")
    ]
    description["annotations"] = sorted(
        (a.attrib["name"], a.attrib["value"]) for a in element.findall("annotation")
    )
    return description


def _interfaces(xml: str) -> dict[str, dict[str, dict[str, Any]]]:
    root = ET.fromstring(xml)  # noqa: S314 (our daemon's answer and our own file)
    return {
        interface.attrib["name"]: {
            f"{member.tag} {member.attrib['name']}": _member(member)
            for member in interface
            if member.tag in ("method", "signal", "property")
        }
        for interface in root.findall("interface")
    }


CONTRACT = _interfaces(XML.read_text())


def _check_object(client: BusClient, path: str, expected: set[str]) -> dict[str, Any]:
    live = _interfaces(client.introspect(path))
    ours = {name: live[name] for name in live if name in OUR_INTERFACES}
    assert set(ours) == expected, path
    for name in expected:
        for member in sorted(set(ours[name]) | set(CONTRACT[name])):
            assert ours[name].get(member) == CONTRACT[name].get(member), f"{path}: {member}"
    assert set(live) - set(OUR_INTERFACES) >= STANDARD_INTERFACES, path
    return live


def test_the_contract_file_has_our_three_interfaces() -> None:
    assert set(CONTRACT) == set(OUR_INTERFACES)


def test_the_manager_object(client: BusClient) -> None:
    _check_object(client, names.MANAGER_PATH, {names.MANAGER_INTERFACE})


def test_a_parent_object(client: BusClient) -> None:
    _check_object(client, parent_path("0000:65:00.0"), {names.PARENT_INTERFACE})


def test_a_device_object(client: BusClient) -> None:
    uuid = new_uuid()
    client.define_device("mtty", "mtty-1", uuid=uuid)
    _check_object(client, device_path(uuid), {names.DEVICE_INTERFACE})


def test_the_root_is_the_object_manager(client: BusClient) -> None:
    root = ET.fromstring(client.introspect(names.ROOT_PATH))  # noqa: S314
    interfaces = {i.attrib["name"]: i for i in root.findall("interface")}
    assert not set(interfaces) & set(OUR_INTERFACES)
    manager = interfaces[names.OBJECT_MANAGER_INTERFACE]
    members = {(m.tag, m.attrib["name"]) for m in manager}
    assert members >= {
        ("method", "GetManagedObjects"),
        ("signal", "InterfacesAdded"),
        ("signal", "InterfacesRemoved"),
    }
    children = {node.attrib["name"] for node in root.findall("node")}
    assert children >= {"Manager", "parents", "devices"}


def test_every_object_answers_ping(stack: ClientStack, client: BusClient) -> None:
    for path in (names.ROOT_PATH, names.MANAGER_PATH, parent_path("mtty")):
        assert client.call(path, names.PEER_INTERFACE, "Ping") == []
