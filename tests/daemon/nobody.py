# SPDX-License-Identifier: LGPL-2.1-or-later
"""Calling the daemon as an unprivileged user: a long-lived `caller_script` running as nobody.

The process is started (and connected) before a test needs it, so a call's answer comes back
as fast as the daemon gives it: tests compare the order of its answers with other events.
"""

from __future__ import annotations

import itertools
import json
import queue
import subprocess
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.daemon.harness import CALL_TIMEOUT

SCRIPT = Path(__file__).with_name("caller_script.py")


@dataclass(frozen=True)
class Answer:
    error: str | None
    message: str
    body: list[Any]


class PendingCall:
    def __init__(self) -> None:
        self._done = threading.Event()
        self._answer: Answer | None = None

    def _set(self, answer: Answer) -> None:
        self._answer = answer
        self._done.set()

    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: float = CALL_TIMEOUT) -> Answer:
        if not self._done.wait(timeout):
            raise AssertionError(f"the unprivileged call got no answer within {timeout:g} s")
        assert self._answer is not None
        return self._answer


class UnprivilegedCaller:
    """Send calls as `nobody`; `call_async(...)` returns at once, `.result()` waits."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self._ids = itertools.count(1)
        self._pending: dict[int, PendingCall] = {}
        self._lock = threading.Lock()
        self._ready: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            line = self._ready.get(timeout=CALL_TIMEOUT)
        except queue.Empty:
            line = ""
        if line != "ready":
            raise AssertionError(f"the unprivileged caller did not start: {line!r}")

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if not line.startswith("{"):
                self._ready.put(line.strip())
                continue
            data = json.loads(line)
            with self._lock:
                pending = self._pending.pop(data["id"])
            pending._set(Answer(data["error"], data["message"], data["body"]))
        self._ready.put("")

    def call_async(
        self,
        path: str,
        interface: str,
        member: str,
        signature: str = "",
        body: Sequence[Any] = (),
    ) -> PendingCall:
        """`body` as in caller_script: an a{sv} argument is `{"key": ["sig", value]}`."""
        request_id = next(self._ids)
        pending = PendingCall()
        with self._lock:
            self._pending[request_id] = pending
        request = {
            "id": request_id,
            "path": path,
            "interface": interface,
            "member": member,
            "signature": signature,
            "body": list(body),
        }
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return pending

    def call(self, *args: Any) -> Answer:
        return self.call_async(*args).result()


@contextmanager
def unprivileged_caller(python: Sequence[str], address: str) -> Iterator[UnprivilegedCaller]:
    """`python` is the argv prefix from `tests.support.bus.unprivileged_python`."""
    process = subprocess.Popen(
        [*python, "-c", SCRIPT.read_text(), address],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd="/",
    )
    try:
        yield UnprivilegedCaller(process)
    finally:
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
