# SPDX-License-Identifier: LGPL-2.1-or-later
"""dbus-fast must stay connected when its socket's send buffer fills (mdevd.bus.sendfix).

The load: 64 clients each send 2 calls for a ~216 KB `a{oa{sa{sv}}}` (300 devices' worth of
properties) and then stop reading, like clients too busy to keep up. The bus daemon queues
their replies until the service's unread backlog reaches `max_incoming_bytes`, then stops
reading from the service, whose send buffer fills while it still has replies to send. This is
decided by volume, not by speed: the backlog (~27 MB) is many times the limit. The test bus
lowers the limit from the system bus's 127 MiB to 2 MiB so the run costs 1/60 as much; the
mechanism is the same. Then the clients read everything and make 3 more calls each, one after
the other, while all the others do the same.

Without the fix the service disconnects (the test proves it, so the load stays a valid
reproducer); with it, every call succeeds and the service is still connected.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.bus import private_bus
from tests.support.paths import REPO

CLIENTS = 64
BACKLOG = 2
ROUNDS = 3
DEVICES = 300
#: dbus-daemon's own limit is 127 MiB; see the module docstring.
MAX_INCOMING_BYTES = 2 * 1024 * 1024
#: For each wait on a subprocess; the test as a whole is bounded by its timeout mark.
STEP_TIMEOUT = 60.0

pytestmark = pytest.mark.timeout(150)


@dataclass
class Outcome:
    service_status: int
    service_output: str
    replies: int
    errors: list[str]
    client_disconnects: int


def _python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def _environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def _read_line(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    return process.stdout.readline().strip()


def _wait_stopped(pid: int) -> None:
    """Until the process is stopped (state T): only then are its connections certainly unread."""
    deadline = time.monotonic() + STEP_TIMEOUT
    while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
        if time.monotonic() > deadline:
            raise AssertionError(f"client process {pid} did not stop itself")
        time.sleep(0.01)


def _run_load(tmp_path: Path, *, with_fix: bool) -> Outcome:
    calls = CLIENTS * BACKLOG
    service_args = [
        "--devices",
        str(DEVICES),
        "--report-after",
        str(calls),
        *([] if with_fix else ["--without-fix"]),
    ]
    with (
        private_bus(limits={"max_incoming_bytes": MAX_INCOMING_BYTES}) as address,
        (tmp_path / "service.log").open("w") as service_log,
        subprocess.Popen(
            _python_module("tests.bus.send_buffer_service", address, *service_args),
            stdout=subprocess.PIPE,
            stderr=service_log,
            text=True,
            cwd=REPO,
            env=_environment(),
        ) as service,
    ):
        try:
            ready = _read_line(service)
            assert ready == "ready", (tmp_path / "service.log").read_text()
            with subprocess.Popen(
                _python_module(
                    "tests.bus.send_buffer_clients",
                    address,
                    str(CLIENTS),
                    str(BACKLOG),
                    str(ROUNDS),
                ),
                stdout=subprocess.PIPE,
                text=True,
                cwd=REPO,
                env=_environment(),
            ) as clients:
                try:
                    assert _read_line(clients) == "sent"
                    _wait_stopped(clients.pid)
                    # Either every reply was handed to the connection, or the service is
                    # gone (it says why, then EOF).
                    progress = _read_line(service)
                    assert progress == f"answered {calls}" or not progress.startswith("answered")
                    clients.send_signal(signal.SIGCONT)
                    client_output, _ = clients.communicate(timeout=STEP_TIMEOUT)
                finally:
                    if clients.poll() is None:
                        clients.kill()
            result = json.loads(client_output.strip().splitlines()[-1])
            if progress.startswith("answered"):
                # Still serving (or it would say why it stopped): ask it to report and exit.
                service.terminate()
            rest, _ = service.communicate(timeout=STEP_TIMEOUT)
            service_output = rest if progress.startswith("answered") else progress + "\n" + rest
        finally:
            if service.poll() is None:
                service.kill()
    return Outcome(
        service_status=service.returncode,
        service_output=service_output.strip(),
        replies=result["replies"],
        errors=result["errors"],
        client_disconnects=result["disconnects"],
    )


def test_no_disconnect_and_no_error_with_the_fix(tmp_path: Path) -> None:
    outcome = _run_load(tmp_path, with_fix=True)
    assert outcome.service_output == "connected"
    assert outcome.service_status == 0
    assert outcome.errors == []
    assert outcome.client_disconnects == 0
    assert outcome.replies == CLIENTS * (BACKLOG + ROUNDS)


def test_the_same_load_disconnects_dbus_fast_without_the_fix(tmp_path: Path) -> None:
    """The control: if this ever passes no more, the load no longer reproduces the bug."""
    outcome = _run_load(tmp_path, with_fix=False)
    assert (
        outcome.service_output
        == "disconnected: BlockingIOError(11, 'Resource temporarily unavailable')"
    )
    assert outcome.service_status == 3
    assert outcome.errors, "the service disconnected, so some calls must have failed"
