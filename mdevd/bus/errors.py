# SPDX-License-Identifier: LGPL-2.1-or-later
"""Translation of the project's errors into D-Bus errors, in one place.

A caller sees `org.mdevd.Mdevd1.Error.<Name>` with the error's own message for every condition
the contract names. Anything else is a bug: the caller gets `Error.Failed` with a short message
and the traceback goes to the log only, because a traceback tells a remote peer install paths,
versions and internals without helping it act.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar, cast

from dbus_fast import DBusError

from mdevd.bus.names import error_name
from mdevd.errors import Failed, MdevdError

_LOGGER = logging.getLogger(__name__)

_P = ParamSpec("_P")
_R = TypeVar("_R")

#: The tasks carrying out D-Bus calls right now. Every handler passes through `dbus_errors`, so
#: this is where the daemon learns which calls must finish before it stops (dbus-fast keeps
#: its own list only in some versions, and privately).
_running: set[asyncio.Task[Any]] = set()


async def calls_finished(timeout: float) -> int:
    """Wait until the calls being carried out have ended, at most `timeout` seconds; how many
    still run then. Their replies are sent as they end (before this returns)."""
    calls = [call for call in _running if not call.done()]
    if calls:
        await asyncio.wait(calls, timeout=timeout)
        # One more turn of the loop: dbus-fast sends a reply from its task's done callback.
        await asyncio.sleep(0)
    return sum(not call.done() for call in calls)


def to_dbus_error(exc: Exception, where: str = "") -> DBusError:
    """The `DBusError` to answer with for `exc`, raised while serving `where` (a method name).

    Unexpected exceptions are logged here with their traceback, so callers need not.
    """
    if isinstance(exc, DBusError):
        return exc
    if isinstance(exc, MdevdError):
        return DBusError(error_name(exc.name), exc.message)
    _LOGGER.error("unexpected error while serving %s", where or "a D-Bus call", exc_info=exc)
    label = f"{where}: " if where else ""
    return DBusError(
        error_name(Failed.name), f"{label}internal error (details are in the daemon's log)"
    )


def dbus_errors(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Decorate a D-Bus method (sync or async) so every exception leaves as a contract error.

    Put it below `@dbus_method()`: dbus-fast reads the wrapped function's signature and
    annotations (functools.wraps keeps them) and must still see a coroutine function for an
    async method, which is why there are two wrappers.
    """
    where = fn.__name__
    if inspect.iscoroutinefunction(fn):
        async_fn = cast(Callable[..., Any], fn)

        @functools.wraps(fn)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            task = asyncio.current_task()
            if task is not None:
                _running.add(task)
            try:
                return await async_fn(*args, **kwargs)
            except Exception as exc:
                raise to_dbus_error(exc, where) from None
            finally:
                _running.discard(task)

        return cast(Callable[_P, _R], async_wrapper)

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            raise to_dbus_error(exc, where) from None

    return wrapper
