# SPDX-License-Identifier: LGPL-2.1-or-later
"""D-Bus signatures for exported members, spelled so that every supported dbus-fast reads them.

dbus-fast learns a member's D-Bus signature from the Python annotations of its handler. Since
4.0 it reads `Annotated[str, DBusSignature("s")]`, which type checkers understand; before 4.0
(Debian 12 ships 1.84.2) it reads only the signature itself as a string (`-> "a{sv}"`), which
type checkers do not. Both read a plain signature string the same way.

So handlers are annotated with `Annotated` aliases of this module's own `DBusSignature`, which
mypy checks, and the decorators here hand dbus-fast a `__signature__` in which each annotation
is replaced by its plain signature string (`inspect.signature`, which is how every version
reads annotations, prefers `__signature__`). Nothing here needs `dbus_fast.annotations`, which
older versions do not have.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from dbus_fast.constants import PropertyAccess

# `method` and `signal` are the names every version has (4.0 added dbus_method/dbus_signal).
from dbus_fast.service import dbus_property as _dbus_property
from dbus_fast.service import method as _dbus_method
from dbus_fast.service import signal as _dbus_signal
from dbus_fast.signature import Variant

_F = TypeVar("_F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class DBusSignature:
    """The D-Bus signature of an annotated value: `Annotated[str, DBusSignature("s")]`.

    Named like dbus-fast's own (4.0+) marker, which it stands in for.
    """

    signature: str


# The aliases mdevd uses, named as in dbus_fast.annotations.
DBusBool = Annotated[bool, DBusSignature("b")]
DBusInt32 = Annotated[int, DBusSignature("i")]
DBusStr = Annotated[str, DBusSignature("s")]
DBusObjectPath = Annotated[str, DBusSignature("o")]
#: A file descriptor (`h`): the handler returns the fd, dbus-fast sends it as an index.
DBusUnixFd = Annotated[int, DBusSignature("h")]
#: `a{sv}`: options, properties, changes.
DBusDict = Annotated[dict[str, Variant], DBusSignature("a{sv}")]


def signature_of(hint: Any) -> str | None:
    """The D-Bus signature an annotation names, or None when it names none."""
    if typing.get_origin(hint) is Annotated:
        for extra in typing.get_args(hint)[1:]:
            if isinstance(extra, DBusSignature):
                return extra.signature
    return None


def plain(function: _F, *, arguments: bool = True) -> _F:
    """Give `function` a `__signature__` whose annotations are plain D-Bus signature strings.

    A return value without a `DBusSignature` keeps no annotation (no reply body). Raises
    TypeError for an annotated parameter without one: dbus-fast would otherwise fail later,
    with a message that does not name the handler. A signal's parameters (`arguments=False`)
    are what the emitting code passes in, not part of its D-Bus signature: left as they are.
    """
    hints = typing.get_type_hints(function, include_extras=True)
    signature = inspect.signature(function)
    parameters = []
    for parameter in signature.parameters.values():
        if arguments and parameter.name in hints:
            dbus = signature_of(hints[parameter.name])
            if dbus is None:
                raise TypeError(
                    f"{function.__qualname__}: parameter {parameter.name!r} has no D-Bus "
                    "signature (annotate it with an alias of mdevd.bus.signatures)"
                )
            parameter = parameter.replace(annotation=dbus)
        parameters.append(parameter)
    returned = signature_of(hints.get("return"))
    # typeshed does not declare `__signature__` on callables; inspect.signature reads it.
    function.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=parameters,
        return_annotation=inspect.Signature.empty if returned is None else returned,
    )
    return function


def dbus_method(name: str | None = None) -> Callable[[_F], _F]:
    """`dbus_fast.service.dbus_method`, for handlers annotated with this module's aliases."""

    def decorate(function: _F) -> _F:
        # dbus-fast's own typing says the method now returns None; it returns what it got.
        return typing.cast(_F, _dbus_method(name=name)(plain(function)))

    return decorate


def dbus_property(
    access: PropertyAccess = PropertyAccess.READ, name: str | None = None
) -> Callable[[Callable[..., Any]], Any]:
    """`dbus_fast.service.dbus_property` (read-only unless told), for annotated getters."""

    def decorate(function: Callable[..., Any]) -> Any:
        return _dbus_property(access=access, name=name)(plain(function))

    return decorate


def dbus_signal(name: str | None = None) -> Callable[[_F], _F]:
    """`dbus_fast.service.dbus_signal`, for signals annotated with this module's aliases."""

    def decorate(function: _F) -> _F:
        return typing.cast(_F, _dbus_signal(name=name)(plain(function, arguments=False)))

    return decorate
