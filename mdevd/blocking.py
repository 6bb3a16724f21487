# SPDX-License-Identifier: LGPL-2.1-or-later
"""mdevd's requests, blocking, without asyncio or dbus-fast: for the command-line programs.

`mdevdctl` and the mdevctl front end make a few calls and exit, and libvirt starts the front end
once per node-device operation; importing asyncio and dbus-fast alone took longer than all of
`mdevctl list` (docs/performance.md). `BlockingClient.run` makes the requests of `mdevd.calls`
over `mdevd.wire` and gives the same results and error classes as `mdevd.client.Client`, which
stays the API for managers and for anything that waits for events (`mdevdctl monitor`).
"""

from __future__ import annotations

from mdevd import calls, wire
from mdevd.bus.names import BUS_NAME
from mdevd.replies import DEFAULT_TIMEOUT, CallTimeout, ClientError, DaemonError, error_for

TYPE_CHECKING = False  # annotations only: importing typing is a start-up cost
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any, TypeVar

    T = TypeVar("T")


class BlockingClient:
    """One connection to the bus, for `run`."""

    def __init__(self, connection: wire.Connection) -> None:
        self.connection = connection

    @classmethod
    def connect(
        cls, address: str | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> BlockingClient:
        """Connect to the system bus (or `address`; `DBUS_SYSTEM_BUS_ADDRESS` is honoured)."""
        try:
            return cls(wire.Connection(address, timeout))
        except wire.WireError as exc:
            raise ClientError(str(exc)) from exc

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> BlockingClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def call(
        self,
        path: str,
        interface: str,
        member: str,
        signature: str = "",
        body: Sequence[Any] = (),
        *,
        unix_fds: bool = False,
    ) -> list[Any]:
        """As `Client.call`: the daemon's errors as their classes, the timeout as CallTimeout.
        `h` values of the reply are fds the caller owns; `unix_fds` says the reply has some,
        which a connection without fd passing refuses before calling."""
        if unix_fds and not self.connection.unix_fds:
            raise ClientError(
                f"{member}: the bus did not agree to pass file descriptors on this connection"
            )
        try:
            return self.connection.call(BUS_NAME, path, interface, member, signature, body)
        except wire.CallError as exc:
            raise error_for(exc.name, exc.message) from exc
        except wire.WireError as exc:
            if isinstance(exc.__cause__, TimeoutError):
                raise CallTimeout(member, self.connection.timeout) from exc
            raise ClientError(str(exc)) from exc

    def run(self, request: calls.Request[T]) -> T:
        """Run one request of `mdevd.calls`, as `Client.run` does, blocking."""
        try:
            call = next(request)
            while True:
                try:
                    reply = self.call(
                        call.path,
                        call.interface,
                        call.member,
                        call.signature,
                        call.body,
                        unix_fds=call.unix_fds,
                    )
                except DaemonError as error:
                    call = request.throw(error)
                else:
                    call = request.send(reply)
        except StopIteration as done:
            result: T = done.value
            return result
