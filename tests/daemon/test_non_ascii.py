# SPDX-License-Identifier: LGPL-2.1-or-later
"""Non-ASCII strings in what the daemon sends: replies, errors, properties, signals.

Debian 12's dbus-fast (1.84.2) writes a string's character count as its length, so any
message with a non-ASCII string is malformed and the bus drops the daemon that sent it
(mdevd.bus.marshalfix). An attribute value may be any text, and error messages quote what
the caller sent, so anyone could have disconnected the daemon. tests/versions runs this file
with Debian's dbus-fast too. The calls here go through mdevd.wire, which writes strings
correctly on every version, so that only the daemon's side is under test.
"""

from __future__ import annotations

import pytest

from mdevd.bus import names
from mdevd.replies import DeviceInfo
from mdevd.wire import CallError, Connection, Variant
from tests.daemon.conftest import ClientStack
from tests.daemon.harness import new_uuid

#: Two-byte, three-byte and four-byte UTF-8, and a C1 control character that repr() escapes.
TEXT = "\u00e9\u2013\u20ac\U0001f600\x80"
DBUS = ("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus")


def _daemon_still_on_the_bus(connection: Connection) -> None:
    (owner,) = connection.call(*DBUS, "GetNameOwner", "s", [names.BUS_NAME])
    (version,) = connection.call(
        names.BUS_NAME, names.MANAGER_PATH, names.PROPERTIES_INTERFACE, "Get", "ss",
        [names.MANAGER_INTERFACE, "Version"],
    )  # fmt: skip
    assert owner and version.value


def test_an_error_that_quotes_the_caller(stack: ClientStack) -> None:
    with Connection(stack.address, timeout=20) as connection:
        (owner_before,) = connection.call(*DBUS, "GetNameOwner", "s", [names.BUS_NAME])
        with pytest.raises(CallError) as refused:
            connection.call(
                names.BUS_NAME, names.MANAGER_PATH, names.MANAGER_INTERFACE, "GetDevice",
                "s", [TEXT],
            )  # fmt: skip
        assert refused.value.name == names.error_name("InvalidArgument")
        assert TEXT[:4] in refused.value.message  # quoted with repr(): \x80 escaped
        _daemon_still_on_the_bus(connection)
        (owner_after,) = connection.call(*DBUS, "GetNameOwner", "s", [names.BUS_NAME])
        assert owner_after == owner_before  # the same connection: not dropped and restarted


def test_an_attribute_value_in_every_read_and_signal(stack: ClientStack) -> None:
    uuid = new_uuid()
    with Connection(stack.address, timeout=20) as connection:
        options = {
            "uuid": Variant("s", uuid),
            "attributes": Variant("a(ss)", [["note", TEXT]]),
        }
        (path,) = connection.call(
            names.BUS_NAME, names.MANAGER_PATH, names.MANAGER_INTERFACE, "DefineDevice",
            "ssa{sv}", ["mtty", "mtty-1", options],
        )  # fmt: skip
        (props,) = connection.call(
            names.BUS_NAME, path, names.PROPERTIES_INTERFACE, "GetAll", "s",
            [names.DEVICE_INTERFACE],
        )  # fmt: skip
        assert props["Attributes"].value == [["note", TEXT]]
        (listed,) = connection.call(
            names.BUS_NAME, names.MANAGER_PATH, names.MANAGER_INTERFACE, "ListDevices",
            "a{sv}", [{}],
        )  # fmt: skip
        devices = {d.uuid: d for d in map(DeviceInfo.from_struct, listed)}
        assert devices[uuid].attributes == (("note", TEXT),)
        (objects,) = connection.call(
            names.BUS_NAME, names.ROOT_PATH, names.OBJECT_MANAGER_INTERFACE, "GetManagedObjects"
        )
        assert objects[path][names.DEVICE_INTERFACE]["Attributes"].value == [["note", TEXT]]
        # The InterfacesAdded and DeviceEvent signals carried it too; the daemon is still here.
        _daemon_still_on_the_bus(connection)
        connection.call(names.BUS_NAME, path, names.DEVICE_INTERFACE, "Undefine", "a{sv}", [{}])
        _daemon_still_on_the_bus(connection)
