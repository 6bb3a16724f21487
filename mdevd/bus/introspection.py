# SPDX-License-Identifier: LGPL-2.1-or-later
"""What dbus-fast's decorators cannot say about our interfaces, added to their introspection.

dbus-fast derives a member's introspection from the Python signature: argument types, and the
names of in-arguments. Out-arguments and signal arguments get no names, and properties no
`org.freedesktop.DBus.Property.EmitsChangedSignal` annotation. The contract
(dbus/org.mdevd.Mdevd1.xml) has both, and clients rely on them: code generators name
results after out-arguments, and GDBus/sd-bus proxies cache only properties that signal their
changes. `describe()` adds them to an interface class once, at import;
tests/daemon/test_introspection.py checks the live result against the XML.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from dbus_fast.service import ServiceInterface

from mdevd.bus.names import EMITS_CHANGED_SIGNAL


def _member(cls: type[ServiceInterface], name: str, marker: str) -> Any:
    function = cls.__dict__.get(name)
    member = getattr(function, "__dict__", {}).get(marker)
    if member is None:
        raise TypeError(f"{cls.__name__}.{name} is not a D-Bus {marker.strip('_').lower()}")
    return member


def _name_arguments(arguments: Sequence[Any], names: Sequence[str], what: str) -> None:
    if len(arguments) != len(names):
        raise TypeError(f"{what} has {len(arguments)} arguments, not {len(names)}")
    for argument, name in zip(arguments, names, strict=True):
        argument.name = name


def describe(
    cls: type[ServiceInterface],
    *,
    out_args: Mapping[str, Sequence[str]] = {},
    signal_args: Mapping[str, Sequence[str]] = {},
    const_properties: Collection[str] = (),
) -> None:
    """Name methods' out-arguments and signals' arguments; annotate every property.

    A property in `const_properties` never changes while its object exists
    (`EmitsChangedSignal=const`); every other one emits PropertiesChanged (`true`).
    """
    for method, names in out_args.items():
        introspection = _member(cls, method, "__DBUS_METHOD").introspection
        _name_arguments(introspection.out_args, names, f"{cls.__name__}.{method}")
    for signal, names in signal_args.items():
        introspection = _member(cls, signal, "__DBUS_SIGNAL").introspection
        _name_arguments(introspection.args, names, f"{cls.__name__}.{signal}")
    properties = {
        name: value
        for name, value in vars(cls).items()
        if getattr(value, "__dict__", {}).get("__DBUS_PROPERTY")
    }
    unknown = set(const_properties) - set(properties)
    if unknown:
        raise TypeError(f"{cls.__name__} has no properties {sorted(unknown)}")
    for name, prop in properties.items():
        value = "const" if name in const_properties else "true"
        prop.introspection.annotations = {EMITS_CHANGED_SIGNAL: value}
        _serialize_annotations(prop.introspection)


def _serialize_annotations(introspection: Any) -> None:
    """Make a property's XML carry its annotations also where dbus-fast leaves them out.

    dbus-fast before 2.x has no annotations on properties: its `to_xml()` writes none. The
    element it builds gets them added here; where dbus-fast writes them itself, nothing is
    added twice.
    """
    library_to_xml = introspection.to_xml

    def to_xml() -> ET.Element:
        element: ET.Element = library_to_xml()
        if element.find("annotation") is None:
            for key, value in introspection.annotations.items():
                ET.SubElement(element, "annotation", {"name": key, "value": value})
        return element

    introspection.to_xml = to_xml
