# SPDX-License-Identifier: LGPL-2.1-or-later
"""The base of the exported interfaces: every D-Bus method is authorized before its work runs.

As bolt's exported objects do, the layer that exports a method authorizes each call of it,
so that a handler cannot forget to. An `ExportedInterface` declares each method with one of
two decorators, and refuses, when the class is defined, a method declared otherwise
(dbus-fast's own `@method` would be served unchecked) and a writable property (dbus-fast would
change it without any method, so without authorization):

- `exported_method`: the decorated function checks the call's arguments and returns the
  `Work` to do, an async function of no arguments, not yet started. The base then looks the
  D-Bus method up in the one table (`mdevd.bus.auth.METHOD_ACTIONS`; a method missing from it
  is `NotAuthorized`), has the caller authorized for its action, interactively if the
  method's trailing `a{sv}` says `auth.interactive=true`, and only then runs the work.
- `exported_read`: a method the table declares `NO_CHECK`; the function is the whole handler,
  synchronous or not. Declaring a read the table does not call one is a TypeError at import.

The order is the contract's. Arguments are checked first, without I/O, so a malformed call is
`InvalidArgument` whoever sends it and costs no question to polkitd. The caller is authorized
before the work starts, so before the engine takes any lock (rule 7), and authorizing only
awaits (`mdevd.bus.auth.Authorizer`). Whatever any step raises leaves as a contract error
(`mdevd.bus.errors.dbus_errors`).
"""

# No `from __future__ import annotations`: the return annotations built here are read by
# dbus-fast, which takes `None` only as the real None.

import functools
import inspect
import typing
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias, TypeVar

from dbus_fast.constants import PropertyAccess
from dbus_fast.service import ServiceInterface

from mdevd.bus import auth
from mdevd.bus import options as opts
from mdevd.bus.errors import dbus_errors
from mdevd.bus.signatures import dbus_method, signature_of

_R = TypeVar("_R")
_F = TypeVar("_F", bound=Callable[..., Any])

#: What an `exported_method`'s function returns: the work to do once the caller is authorized.
Work: TypeAlias = Callable[[], Awaitable[_R]]

#: Marks the functions the decorators here build: the only methods an ExportedInterface takes.
_DECLARED = "__MDEVD_EXPORTED"


def dbus_methods(cls: type[ServiceInterface]) -> dict[str, Callable[..., Any]]:
    """D-Bus method name -> the function dbus-fast serves it with, for `cls` and its bases
    (found as dbus-fast finds them when an instance is created)."""
    methods: dict[str, Callable[..., Any]] = {}
    for _, member in inspect.getmembers(cls):
        method = getattr(member, "__dict__", {}).get("__DBUS_METHOD")
        if method is not None:
            methods[method.name] = member
    return methods


def dbus_properties(cls: type[ServiceInterface]) -> tuple[tuple[str, str], ...]:
    """(D-Bus name, signature) of each property of `cls`, in the order dbus-fast keeps them
    (its `ServiceInterface.__init__` walks `inspect.getmembers` of the class, in every
    version): the order of the properties in a PropertiesChanged it sends."""
    return tuple(
        (member.name, member.signature)
        for _, member in inspect.getmembers(cls)
        if getattr(member, "__dict__", {}).get("__DBUS_PROPERTY")
    )


def _writable_properties(cls: type[ServiceInterface]) -> list[str]:
    return [
        name
        for name, member in inspect.getmembers(cls)
        if getattr(member, "__dict__", {}).get("__DBUS_PROPERTY")
        and getattr(member, "access", None) is not PropertyAccess.READ
    ]


class ExportedInterface(ServiceInterface):
    """An interface whose every method call is authorized from the table before its work."""

    def __init__(self, name: str, authorize: auth.Authorize) -> None:
        super().__init__(name)
        self._authorize = authorize

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for member, function in dbus_methods(cls).items():
            if not getattr(function, "__dict__", {}).get(_DECLARED):
                raise TypeError(
                    f"{cls.__name__}: D-Bus method {member} is not declared with "
                    "exported_method or exported_read, so nothing would authorize it"
                )
        writable = _writable_properties(cls)
        if writable:
            raise TypeError(
                f"{cls.__name__}: properties {writable} are writable; every change must go "
                "through a method, which is authorized"
            )


def _work_result(hint: Any, function: Callable[..., Any]) -> Any:
    """X of a `Work[X]` return annotation: what the method replies (None: nothing)."""
    if typing.get_origin(hint) is Callable:
        arguments, result = typing.get_args(hint)
        if arguments == [] and typing.get_origin(result) is Awaitable:
            (value,) = typing.get_args(result)
            return None if value is type(None) else value
    raise TypeError(
        f"{function.__qualname__}: an exported_method returns Work[<its reply's D-Bus type>]"
    )


def _declared(function: _F) -> _F:
    function.__dict__[_DECLARED] = True
    return function


def exported_method(
    name: str | None = None,
) -> Callable[[Callable[..., Work[Any]]], Callable[..., Any]]:
    """Export the decorated function as a D-Bus method that is authorized before its work.

    The function takes the call's arguments, `a{sv}` options last, checks them (raising
    `InvalidArgument`, without I/O), and returns the work. `name` is the D-Bus name (default:
    the function's), which is what the authorization table is looked up with.
    """

    def decorate(check: Callable[..., Work[Any]]) -> Callable[..., Any]:
        member = name or check.__name__
        hints = typing.get_type_hints(check, include_extras=True)
        reply = _work_result(hints.get("return"), check)
        parameters = list(inspect.signature(check).parameters.values())
        if len(parameters) < 2 or signature_of(hints.get(parameters[-1].name)) != "a{sv}":
            raise TypeError(
                f"{check.__qualname__}: a D-Bus method takes its options (a{{sv}}) last, "
                "where auth.interactive is read from"
            )

        @functools.wraps(check)
        async def authorized(self: ExportedInterface, *args: Any) -> Any:
            work = check(self, *args)
            action = auth.required_action(member)
            if action != auth.NO_CHECK:
                await self._authorize(member, opts.interactive_requested(args[-1]))
            return await work()

        # The reply's type, where dbus-fast reads it (`mdevd.bus.signatures.plain`).
        authorized.__annotations__ = {**check.__annotations__, "return": reply}
        return _declared(dbus_method(name)(dbus_errors(authorized)))

    return decorate


def exported_read(name: str | None = None) -> Callable[[_F], _F]:
    """Export the decorated function (sync or async) as a D-Bus method anyone may call.

    The authorization table must say so (`NO_CHECK` for `name`, default the function's name).
    """

    def decorate(handler: _F) -> _F:
        member = name or handler.__name__
        if auth.METHOD_ACTIONS.get(member) != auth.NO_CHECK:
            raise TypeError(
                f"{handler.__qualname__}: {member} is not a read in "
                "mdevd.bus.auth.METHOD_ACTIONS; declare it there or use exported_method"
            )
        served: _F = typing.cast(_F, dbus_errors(handler))
        return _declared(dbus_method(name)(served))

    return decorate
