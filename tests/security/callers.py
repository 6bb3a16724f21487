# SPDX-License-Identifier: LGPL-2.1-or-later
"""Callers of the daemon, each a separate process running as one user (root, a user the
example polkit rule grants, an unprivileged user), driven synchronously from the tests.

Separate processes, because the bus and polkitd identify a caller by its connection's uid and
pid, and polkit agents attach to processes. See `caller_process` for the protocol.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mdevd.bus import names
from tests.security import caller_process
from tests.security.caller_process import decode, encode

SOURCE = Path(caller_process.__file__).read_text()


@dataclass(frozen=True)
class Reply:
    #: The D-Bus error name, or None for a method return.
    error: str | None
    body: list[Any]
    #: What each fd the reply carried was (`readlink /proc/self/fd/N`); the caller closed it.
    fds: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def outcome(self) -> str:
        """ "ok", the contract's short error name (`NotAuthorized`), or a foreign error name."""
        if self.error is None:
            return "ok"
        return self.error.removeprefix(names.ERROR_PREFIX)

    @property
    def message(self) -> str:
        return str(self.body[0]) if self.body else ""


class Caller:
    """One client process; `label` names it in test output."""

    def __init__(self, label: str, process: subprocess.Popen[bytes]) -> None:
        self.label = label
        self.process = process
        self._buffer = b""
        hello = self._read_line(timeout=30)
        self.unique_name: str = hello["unique_name"]
        self.pid: int = hello["pid"]

    def _read_line(self, timeout: float) -> dict[str, Any]:
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not selector.select(remaining):
                    raise AssertionError(f"caller {self.label} did not answer in {timeout} s")
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise AssertionError(f"caller {self.label} exited with {self.process.wait()}")
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        answer: dict[str, Any] = json.loads(line)
        return answer

    def _request(self, request: dict[str, Any], timeout: float = 90) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(request).encode() + b"\n")
        self.process.stdin.flush()
        return self._read_line(timeout)

    def call(
        self,
        path: str,
        interface: str | None,
        member: str,
        signature: str = "",
        body: Sequence[Any] = (),
        *,
        destination: str = names.BUS_NAME,
        timeout: float = 60,
    ) -> Reply:
        answer = self._request(
            {
                "op": "call",
                "destination": destination,
                "path": path,
                "interface": interface,
                "member": member,
                "signature": signature,
                "body": encode(list(body)),
                "timeout": timeout,
            },
            timeout=timeout + 30,
        )
        return Reply(answer["error"], decode(answer["body"]), tuple(answer.get("fds", ())))

    def manager(self, member: str, signature: str = "", body: Sequence[Any] = ()) -> Reply:
        return self.call(names.MANAGER_PATH, names.MANAGER_INTERFACE, member, signature, body)

    def device(
        self, uuid: str, member: str, signature: str = "", body: Sequence[Any] = ()
    ) -> Reply:
        return self.call(device_path(uuid), names.DEVICE_INTERFACE, member, signature, body)

    def watch(self, sender: str = names.BUS_NAME) -> None:
        """Start collecting the signals `sender` emits."""
        self._request({"op": "watch", "sender": sender})

    def signals(self, barrier: str = names.BUS_NAME) -> list[tuple[str, str, str, list[Any]]]:
        """Every signal collected since the last call, including all `barrier` sent so far."""
        answer = self._request({"op": "signals", "barrier": barrier})
        return [(p, i, m, decode(b)) for p, i, m, b in answer["signals"]]

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


def device_path(uuid: str) -> str:
    return f"{names.DEVICES_PATH}/{uuid.replace('-', '_')}"


@contextmanager
def running_caller(label: str, python: Sequence[str], address: str) -> Iterator[Caller]:
    """A caller process started with the interpreter argv `python` (e.g. setpriv ... python)."""
    env = dict(os.environ)
    env.pop("DBUS_SYSTEM_BUS_ADDRESS", None)
    process = subprocess.Popen(
        [*python, "-c", SOURCE, address],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd="/",
        env=env,
    )
    try:
        caller = Caller(label, process)
    except BaseException:
        process.kill()
        process.wait()
        raise
    try:
        yield caller
    finally:
        caller.close()


#: The test process's own interpreter, as root: for root callers.
ROOT_PYTHON = (sys.executable,)
