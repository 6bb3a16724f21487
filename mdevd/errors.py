# SPDX-License-Identifier: LGPL-2.1-or-later
"""The project's errors: one class per condition a caller can act on.

Every layer (kernel, store, engine) raises these and nothing else for expected failures. Each
class carries the suffix of its D-Bus error name (`org.mdevd.Mdevd1.Error.<name>`), so the bus
layer translates without deciding anything. Messages name the object they are about.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: the command-line programs import this module
if TYPE_CHECKING:
    from typing import ClassVar


class MdevdError(Exception):
    """Base class. `name` is the D-Bus error suffix from the contract."""

    name: ClassVar[str] = "Failed"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Failed(MdevdError):
    """A failure with no more specific name (an unexpected errno, a driver error)."""

    name = "Failed"


class KernelIOError(Failed):
    """sysfs answered with an errno the contract has no name for (EIO, a driver's own error)."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class InvalidArgument(MdevdError):
    name = "InvalidArgument"


class InvalidName(InvalidArgument):
    """A parent, type, UUID or attribute name that could not safely become a path component."""


class InvalidUUID(InvalidArgument):
    pass


class CreateRefused(InvalidArgument):
    """The parent's driver refused a create with EINVAL and no reason (mdevd validated the
    UUID first, so it is not about the UUID). Named InvalidArgument, as it always was: clients
    match the name; the message says what mdevd checked instead (mdevd.explain)."""


class NotAuthorized(MdevdError):
    name = "NotAuthorized"


class NotAuthorizedCanObtain(MdevdError):
    name = "NotAuthorizedCanObtain"


class NotAuthorizedDismissed(MdevdError):
    name = "NotAuthorizedDismissed"


class ParentNotFound(MdevdError):
    name = "ParentNotFound"


class TypeNotSupported(MdevdError):
    name = "TypeNotSupported"


class NoInstancesAvailable(MdevdError):
    name = "NoInstancesAvailable"


class Exists(MdevdError):
    name = "Exists"


class NotFound(MdevdError):
    name = "NotFound"


class AlreadyActive(MdevdError):
    name = "AlreadyActive"


class NotActive(MdevdError):
    name = "NotActive"


class NotDefined(MdevdError):
    name = "NotDefined"


class Busy(MdevdError):
    name = "Busy"


class AttributeRejected(MdevdError):
    name = "AttributeRejected"


class Timeout(MdevdError):
    name = "Timeout"


class ConfigInvalid(MdevdError):
    name = "ConfigInvalid"


class ReadOnly(MdevdError):
    name = "ReadOnly"


class Vetoed(MdevdError):
    """A callout script (mdevctl's protocol, e.g. s390's ap-check) refused the operation."""

    name = "Vetoed"


class NotSupported(MdevdError):
    """What was asked exists, but this kernel or backend cannot do it (a VFIO cdev on a kernel
    before 6.6)."""

    name = "NotSupported"


#: Every error suffix of the contract, in the order `dbus-api.md` lists them.
CONTRACT_ERROR_NAMES: tuple[str, ...] = (
    "Failed",
    "NotAuthorized",
    "NotAuthorizedCanObtain",
    "NotAuthorizedDismissed",
    "InvalidArgument",
    "ParentNotFound",
    "TypeNotSupported",
    "NoInstancesAvailable",
    "Exists",
    "NotFound",
    "AlreadyActive",
    "NotActive",
    "NotDefined",
    "Busy",
    "AttributeRejected",
    "Timeout",
    "ConfigInvalid",
    "ReadOnly",
    "Vetoed",
    "NotSupported",
)
