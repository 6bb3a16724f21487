"""Keep dbus-fast connected when the socket's send buffer is full.

dbus-fast's asyncio writer (`dbus_fast.aio.message_bus._MessageWriter.write_callback`) sends on
a non-blocking socket and treats every exception as fatal. When the kernel's send buffer is
full, `send()` raises `BlockingIOError` (EAGAIN), and the bus disconnects: the daemon would
lose its name and every client its objects. It happens whenever a reply is still partly
queued and another one is sent, e.g. a handful of concurrent `GetManagedObjects` replies of a
few hundred KB (dbus-next issue #153; still present in dbus-fast 5.2.0).

The fix: the writer's socket is wrapped so that EAGAIN reads as "0 bytes sent". The writer's
own logic then does the right thing unchanged: a message not fully sent stays current and the
writer waits for the socket to become writable. File descriptors (SCM_RIGHTS) refused with
EAGAIN are kept and sent with the first byte that does go out, since the writer forgets them
after its `sendmsg()` call.

`install()` patches the writer class for connections made afterwards. It checks the dbus-fast
version the fix was verified against and that the writer is the pure-Python one (a compiled
writer could not be patched) and refuses otherwise: a silently inactive fix would bring the
disconnects back. tests/bus/test_send_buffer.py proves the failure without the fix and its
absence with it.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from typing import Any

import dbus_fast.aio.message_bus as _aio_message_bus
from dbus_fast.__version__ import __version__ as _dbus_fast_version

#: Versions the fix was verified against (tests/bus/test_send_buffer.py); keep in step with the
#: dbus-fast pin in pyproject.toml.
VERIFIED_VERSIONS = "5.2.x"
_VERIFIED_MAJOR_MINOR = (5, 2)

_ancdata = list[tuple[int, int, Any]]

_installed = False


class UnsupportedDbusFast(RuntimeError):
    """The installed dbus-fast is not one the fix was verified against."""


class _SendBufferTolerantSocket:
    """The writer's view of the socket: a full send buffer means nothing was sent yet."""

    __slots__ = ("_pending_ancdata", "_sock")

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        # Ancillary data (file descriptors) of a sendmsg() that hit EAGAIN: the writer has
        # already dropped it, so it rides along with the next send of the same message.
        self._pending_ancdata: _ancdata | None = None

    def send(self, data: memoryview) -> int:
        if self._pending_ancdata is not None:
            return self.sendmsg([data], self._pending_ancdata)
        try:
            return self._sock.send(data)
        except BlockingIOError:
            return 0

    def sendmsg(self, buffers: Iterable[memoryview], ancdata: _ancdata) -> int:
        try:
            sent = self._sock.sendmsg(buffers, ancdata)
        except BlockingIOError:
            self._pending_ancdata = ancdata
            return 0
        self._pending_ancdata = None
        return sent

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def _major_minor(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        return ()


def check_supported() -> None:
    """Raise `UnsupportedDbusFast` unless the fix can be applied to the installed dbus-fast."""
    version = _dbus_fast_version
    if _major_minor(version) != _VERIFIED_MAJOR_MINOR:
        raise UnsupportedDbusFast(
            f"dbus-fast {version} is installed, but the send-buffer fix in {__name__} was "
            f"verified against {VERIFIED_VERSIONS} only: re-verify it (tests/bus/"
            "test_send_buffer.py) and update VERIFIED_VERSIONS and the pin in pyproject.toml"
        )
    writer = getattr(_aio_message_bus, "_MessageWriter", None)
    module_file = getattr(_aio_message_bus, "__file__", "") or ""
    if writer is None or not module_file.endswith(".py"):
        raise UnsupportedDbusFast(
            f"dbus-fast {version}: the asyncio message writer is not the pure-Python "
            f"_MessageWriter this fix patches ({module_file or 'unknown module file'})"
        )


def install() -> None:
    """Apply the fix to every dbus-fast asyncio connection made from now on. Idempotent.

    Call it before connecting: a connection's writer is made in `MessageBus.connect()`.
    """
    global _installed
    if _installed:
        return
    check_supported()
    writer_class = _aio_message_bus._MessageWriter
    original_init = writer_class.__init__

    def __init__(self: Any, bus: Any) -> None:
        original_init(self, bus)
        self.sock = _SendBufferTolerantSocket(self.sock)

    __init__.__doc__ = original_init.__doc__
    writer_class.__init__ = __init__  # type: ignore[method-assign]
    _installed = True


def installed() -> bool:
    return _installed
