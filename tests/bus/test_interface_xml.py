# SPDX-License-Identifier: LGPL-2.1-or-later
"""dbus/org.mdevd.Mdevd1.xml covers the contract (dbus-api.md), member by member, documented.

The expected members are written out here, so the check runs without the shared notes; when
the notes are beside the repository, they are parsed too and must agree. (That the live
daemon's Introspect() matches the file is the daemon's test.)
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from dbus_fast.errors import InvalidSignatureError
from dbus_fast.introspection import Node
from dbus_fast.signature import get_signature_tree

from mdevd.bus import names
from mdevd.errors import CONTRACT_ERROR_NAMES
from tests.support.paths import REPO

XML = REPO / "dbus" / "org.mdevd.Mdevd1.xml"
#: The project's copy of the contract (the shared notes' text, with its additions).
CONTRACT = REPO / "docs" / "dbus-api.md"

# interface -> method -> (in signature, out signature)
METHODS = {
    names.MANAGER_INTERFACE: {
        "CreateDevice": ("ssa{sv}", "o"),
        "DefineDevice": ("ssa{sv}", "o"),
        "GetDevice": ("s", "o"),
        "ListDevices": ("a{sv}", "a(ossosbbba(ss)sissa{sv})"),
        "ListDeviceSummaries": ("a{sv}", "a(sssbbba(ss))"),
        "Reload": ("a{sv}", ""),
    },
    names.PARENT_INTERFACE: {},
    names.DEVICE_INTERFACE: {
        "Start": ("a{sv}", ""),
        "Stop": ("a{sv}", ""),
        "Define": ("a{sv}", ""),
        "Undefine": ("a{sv}", ""),
        "Update": ("a{sv}a{sv}", ""),
        "QueryAttributes": ("a{sv}", "a(ss)"),
        "Open": ("a{sv}", "h"),
    },
}
PROPERTIES = {
    names.MANAGER_INTERFACE: {"Version": "s", "Features": "as"},
    names.PARENT_INTERFACE: {
        "Name": "s",
        "SysfsPath": "s",
        "Subsystem": "s",
        "Types": "a{sa{sv}}",
        "Backend": "s",
    },
    names.DEVICE_INTERFACE: {
        "UUID": "s",
        "Parent": "s",
        "ParentObject": "o",
        "Type": "s",
        "Active": "b",
        "Defined": "b",
        "Autostart": "b",
        "Attributes": "a(ss)",
        "SysfsPath": "s",
        "IommuGroup": "i",
        "ConfigFile": "s",
        "LastError": "s",
        "Status": "s",
        "PendingChanges": "a{sv}",
        "Backend": "s",
        "Placement": "s",
        "Owner": "s",
        "Lifetime": "s",
    },
}
SIGNALS = {
    names.MANAGER_INTERFACE: {"DeviceEvent": "ossa{sv}"},
    names.PARENT_INTERFACE: {},
    names.DEVICE_INTERFACE: {},
}


def _tree() -> ET.Element:
    """The document with its comments (the docs) kept as elements."""
    parser = ET.XMLParser(target=ET.TreeBuilder(insert_comments=True))  # noqa: S314 (our file)
    return ET.fromstring(XML.read_text(), parser=parser)  # noqa: S314


def _interfaces() -> dict[str, ET.Element]:
    return {i.attrib["name"]: i for i in _tree().iter("interface")}


def _signature(element: ET.Element, direction: str) -> str:
    return "".join(
        arg.attrib["type"]
        for arg in element.iter("arg")
        if arg.attrib.get("direction", "in" if element.tag == "method" else "out") == direction
    )


def test_it_is_valid_introspection_data() -> None:
    node = Node.parse(XML.read_text())
    assert [i.name for i in node.interfaces] == list(METHODS)


def test_methods_signatures_and_no_others() -> None:
    for name, interface in _interfaces().items():
        found = {
            m.attrib["name"]: (_signature(m, "in"), _signature(m, "out"))
            for m in interface.iter("method")
        }
        assert found == METHODS[name], name


def test_every_method_takes_options_last_except_get_device() -> None:
    for interface in _interfaces().values():
        for method in interface.iter("method"):
            in_args = [a for a in method.iter("arg") if a.attrib.get("direction") == "in"]
            if method.attrib["name"] != "GetDevice":
                assert in_args[-1].attrib == {"name": "options", "type": "a{sv}", "direction": "in"}


def test_properties_are_read_only_with_their_types() -> None:
    for name, interface in _interfaces().items():
        properties = list(interface.iter("property"))
        assert {p.attrib["name"]: p.attrib["type"] for p in properties} == PROPERTIES[name]
        assert {p.attrib["access"] for p in properties} <= {"read"}


def test_properties_say_whether_they_signal_changes() -> None:
    for interface in _interfaces().values():
        for prop in interface.iter("property"):
            [annotation] = prop.iter("annotation")
            assert annotation.attrib["name"] == "org.freedesktop.DBus.Property.EmitsChangedSignal"
            assert annotation.attrib["value"] in ("true", "const")
    types = _interfaces()[names.PARENT_INTERFACE].find("property[@name='Types']")
    assert types is not None
    assert types.find("annotation[@value='true']") is not None


def test_signals() -> None:
    for name, interface in _interfaces().items():
        found = {s.attrib["name"]: _signature(s, "out") for s in interface.iter("signal")}
        assert found == SIGNALS[name]


def _is_comment(element: ET.Element) -> bool:
    # ElementTree tags comments with the Comment factory function itself.
    tag: object = element.tag
    return tag is ET.Comment


def test_every_interface_and_member_has_a_doc_comment() -> None:
    def documented(parent: ET.Element) -> None:
        children = list(parent)
        for index, child in enumerate(children):
            if child.tag in ("interface", "method", "property", "signal"):
                before = children[index - 1] if index else None
                assert before is not None and _is_comment(before), child.attrib["name"]
                assert child.attrib["name"] in (before.text or ""), child.attrib["name"]
            if child.tag == "interface":
                documented(child)

    documented(_tree())


def test_arguments_are_named_and_documented() -> None:
    tree = _tree()
    for interface in tree.iter("interface"):
        children = list(interface)
        for index, member in enumerate(children):
            if member.tag not in ("method", "signal"):
                continue
            doc = children[index - 1].text or ""
            for arg in member.iter("arg"):
                assert f"@{arg.attrib['name']}:" in doc, (member.attrib["name"], arg.attrib)


def _error_comment() -> str:
    # Outside the root element, so ElementTree drops it: read it from the text.
    [comment] = re.findall(r"<!-- errors\n(.*?)-->", XML.read_text(), re.S)
    return str(comment)


def test_error_names_are_listed() -> None:
    listed = re.findall(r"^\s*org\.mdevd\.Mdevd1\.Error\.(\w+)\s", _error_comment(), re.M)
    assert tuple(listed) == CONTRACT_ERROR_NAMES


def _is_single_type(signature: str) -> bool:
    try:
        return len(get_signature_tree(signature).types) == 1
    except InvalidSignatureError:
        return False


def test_the_expectations_here_are_the_contract() -> None:
    text = CONTRACT.read_text()
    manager = text.split("## Manager", 1)[1].split("\n## ", 1)[0]
    # An out signature is a word, "()" for none, or a container such as ListDevices' a(...).
    rows = re.findall(r"^\| `(\w+)` \| \(([^)]*)\) -> (\(\)|[^ |]*) \|", manager, re.M)
    contract_methods = {
        name: ("".join(a.split()[0] for a in args.split(", ") if a), "" if out == "()" else out)
        for name, args, out in rows
    }
    # The Reload row reads "(a{sv} options) -> ()".
    assert contract_methods == METHODS[names.MANAGER_INTERFACE]
    manager_props = dict(re.findall(r"^\| prop `(\w+)` \| ([^ |]+) \|", manager, re.M))
    assert manager_props == PROPERTIES[names.MANAGER_INTERFACE]
    signal = re.search(r"^\| signal `(\w+)` \| \(([^)]*)\)", manager, re.M)
    assert signal is not None
    signature = "".join(a.split()[0] for a in signal.group(2).split(", "))
    assert {signal.group(1): signature} == SIGNALS[names.MANAGER_INTERFACE]

    for section, interface in (
        ("## Parent", names.PARENT_INTERFACE),
        ("## Device", names.DEVICE_INTERFACE),
    ):
        body = text.split(section, 1)[1].split("\n## ", 1)[0]
        properties = body.split("Properties:", 1)[1].split("Methods", 1)[0]
        # Property names are capitalised and followed by their type; `Types` a{sa{sv}}
        # (type id -> `name` s, ...) and "when `Types` changes" must not count.
        found: dict[str, str] = {}
        for prop, signature in re.findall(r"`([A-Z]\w+)` ([a-z{}()]+)", properties):
            if _is_single_type(signature):
                found.setdefault(prop, signature)
        assert found == PROPERTIES[interface], interface

    device = text.split("## Device", 1)[1].split("\n## ", 1)[0]
    device_methods = re.findall(r"^- `(\w+)(?:\(([^)]*)\))?(?: -> ([^`]+))?`", device, re.M)
    assert {m for m, _, _ in device_methods} == set(METHODS[names.DEVICE_INTERFACE])
    for method, args, out in device_methods:
        if args:
            signature = "".join(a.split()[0] for a in args.split(", "))
            assert METHODS[names.DEVICE_INTERFACE][method] == (signature, out)

    errors = text.split("## Errors", 1)[1].split("One name per condition", 1)[0]
    assert tuple(re.findall(r"`(\w+)`", errors)) == CONTRACT_ERROR_NAMES
