# SPDX-License-Identifier: LGPL-2.1-or-later
"""Every name the public D-Bus contract fixes, in one place (see dbus/org.mdevd.Mdevd1.xml).

Nothing else in the project spells a bus name, interface, object path, error name or polkit
action id as a literal: a rename then happens here or nowhere.
"""

from __future__ import annotations

TYPE_CHECKING = False  # annotations only: every command-line program imports this module
if TYPE_CHECKING:
    from typing import Final

#: Well-known name the daemon owns on the system bus. The `1` is the contract's major version.
BUS_NAME: Final = "org.mdevd.Mdevd1"

MANAGER_INTERFACE: Final = "org.mdevd.Mdevd1.Manager"
PARENT_INTERFACE: Final = "org.mdevd.Mdevd1.Parent"
DEVICE_INTERFACE: Final = "org.mdevd.Mdevd1.Device"

#: Root of the object tree; the ObjectManager lives here.
ROOT_PATH: Final = "/org/mdevd/Mdevd1"
MANAGER_PATH: Final = "/org/mdevd/Mdevd1/Manager"
#: Parent objects are `PARENTS_PATH/<enc(name)>`, devices `DEVICES_PATH/<uuid with _>`.
PARENTS_PATH: Final = "/org/mdevd/Mdevd1/parents"
DEVICES_PATH: Final = "/org/mdevd/Mdevd1/devices"
#: What `ParentObject` holds while a device's parent is absent.
NO_OBJECT_PATH: Final = "/"

#: Errors are `ERROR_PREFIX + MdevdError.name`.
ERROR_PREFIX: Final = "org.mdevd.Mdevd1.Error."

#: polkit actions (data in the project's .policy file; decisions in `mdevd.bus.auth`).
ACTION_MANAGE_DEVICES: Final = "org.mdevd.mdevd1.manage-devices"
ACTION_CONFIGURE_DEVICES: Final = "org.mdevd.mdevd1.configure-devices"
#: Device.Open: an open fd to an active device's VFIO group or cdev, for the caller to use.
ACTION_USE_DEVICE: Final = "org.mdevd.mdevd1.use-device"

# Standard interfaces the daemon serves besides its own; the bus policy lets everyone call them.
OBJECT_MANAGER_INTERFACE: Final = "org.freedesktop.DBus.ObjectManager"
PROPERTIES_INTERFACE: Final = "org.freedesktop.DBus.Properties"
INTROSPECTABLE_INTERFACE: Final = "org.freedesktop.DBus.Introspectable"
PEER_INTERFACE: Final = "org.freedesktop.DBus.Peer"
#: Introspection annotation: whether a property announces its changes (`true`, `const`).
EMITS_CHANGED_SIGNAL: Final = "org.freedesktop.DBus.Property.EmitsChangedSignal"

# The bus daemon and polkitd, which the daemon calls.
DBUS_BUS_NAME: Final = "org.freedesktop.DBus"
DBUS_PATH: Final = "/org/freedesktop/DBus"
DBUS_INTERFACE: Final = "org.freedesktop.DBus"
POLKIT_BUS_NAME: Final = "org.freedesktop.PolicyKit1"
POLKIT_PATH: Final = "/org/freedesktop/PolicyKit1/Authority"
POLKIT_INTERFACE: Final = "org.freedesktop.PolicyKit1.Authority"
#: The bus daemon's errors for a call to a name nobody owns (and none can be activated).
DBUS_ERROR_SERVICE_UNKNOWN: Final = "org.freedesktop.DBus.Error.ServiceUnknown"
DBUS_ERROR_NAME_HAS_NO_OWNER: Final = "org.freedesktop.DBus.Error.NameHasNoOwner"


def error_name(suffix: str) -> str:
    """The full D-Bus error name for a contract error suffix (`NotFound` -> `org...NotFound`)."""
    return ERROR_PREFIX + suffix
