# SPDX-License-Identifier: LGPL-2.1-or-later
"""An authorization flood cannot starve anyone (issue 15, finding 3), against a real polkitd.

An unprivileged user keeps more calls waiting than the bus lets one connection have pending
replies (128): before the fix, the daemon forwarded one CheckAuthorization per call on its one
connection, the bus refused the daemon's calls beyond 128 with LimitsExceeded, and root's calls
were denied. Here root and a user the example rule grants go on making calls meanwhile; every
one of them must be decided exactly as without the flood, the flooder must get the named
`Busy` for what exceeds its share, and the daemon's log must not grow with the
flood.

Every loop is bounded by a count and a deadline; nothing asserts how long anything took.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import Variant

from mdevd.bus import names, polkit
from tests.security import flooder
from tests.security.callers import Caller, Reply
from tests.security.conftest import TYPE, World
from tests.support.bus import unprivileged_python
from tests.support.polkit import RunningPolkit, running_polkitd

pytestmark = pytest.mark.timeout(240)

#: 3 connections x 64 calls: 192 calls always waiting, each connection below the bus's 128.
FLOOD_CONNECTIONS = 3
FLOOD_CALLS_PER_CONNECTION = 64
#: The probes go on until the flooder has had this many answers (so the flood ran all along)...
FLOOD_MIN_REPLIES = 3000
#: ...for at least this many rounds and at most this many, and stop at the deadline anyway.
MIN_ROUNDS = 10
MAX_ROUNDS = 200
DEADLINE = 90.0
#: Besides what the probes themselves log (Reload logs its work), the daemon may log a few
#: lines about the flood (the first refusals, a summary per minute), never one per call.
MAX_FLOOD_LOG_LINES = 20

BUSY = names.error_name("Busy")


class Flood:
    """The flooder process (tests/security/flooder.py) and its line protocol."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self._buffer = b""

    def read(self, timeout: float = 60) -> dict[str, Any]:
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not selector.select(remaining):
                    raise AssertionError(f"the flooder did not answer in {timeout} s")
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise AssertionError(f"the flooder exited with {self.process.wait()}")
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        answer: dict[str, Any] = json.loads(line)
        return answer

    def _send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        self.process.stdin.flush()

    def replies(self) -> int:
        self._send("progress")
        return int(self.read()["replies"])

    def stop(self) -> dict[str, Any]:
        self._send("stop")
        return self.read(timeout=120)


@contextmanager
def flooding(python: Sequence[str], address: str) -> Iterator[Flood]:
    """The flooder running as the user of `python`, once all its calls are in flight."""
    process = subprocess.Popen(
        [
            *python,
            "-c",
            Path(flooder.__file__).read_text(),
            address,
            str(FLOOD_CONNECTIONS),
            str(FLOOD_CALLS_PER_CONNECTION),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd="/",
    )
    try:
        flood = Flood(process)
        assert flood.read(timeout=120) == {"ready": True}
        yield flood
    finally:
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def _create_on_missing_parent(caller: Caller) -> Reply:
    """Needs manage-devices; once allowed, it fails on the parent and changes nothing."""
    return caller.manager("CreateDevice", "ssa{sv}", [flooder.MISSING_PARENT, TYPE, {}])


def _reload(caller: Caller) -> Reply:
    """Needs configure-devices."""
    return caller.manager("Reload", "a{sv}", [{}])


#: What each probe must answer, flood or not: root is always allowed, and the example rule
#: grants the group of the "granted" user both actions.
EXPECTED = {
    ("root", "create"): "ParentNotFound",
    ("root", "reload"): "ok",
    ("granted", "create"): "ParentNotFound",
    ("granted", "reload"): "ok",
}


def _probe_round(world: World) -> dict[tuple[str, str], Reply]:
    replies = {}
    for who in ("root", "granted"):
        caller = world.callers[who]
        replies[who, "create"] = _create_on_missing_parent(caller)
        replies[who, "reload"] = _reload(caller)
    return replies


def test_the_probes_without_a_flood(world: World, polkitd: RunningPolkit) -> None:
    """The expectations hold when nothing floods (so the flood test measures the flood)."""
    outcomes = {key: reply.outcome for key, reply in _probe_round(world).items()}
    assert outcomes == EXPECTED


def _log_lines(world: World) -> int:
    return len(world.daemon.log().splitlines())


def test_a_flood_starves_nobody(world: World, polkitd: RunningPolkit) -> None:
    # What one round of probes logs by itself, to tell it from what the flood makes it log.
    before = _log_lines(world)
    assert all(r.outcome == EXPECTED[key] for key, r in _probe_round(world).items())
    lines_per_round = _log_lines(world) - before
    log_lines_before = _log_lines(world)
    wrong: list[tuple[int, str, str, Reply]] = []
    rounds = 0
    with unprivileged_python() as nobody_python, flooding(nobody_python, world.address) as flood:
        deadline = time.monotonic() + DEADLINE
        flood_replies = 0
        while rounds < MAX_ROUNDS and time.monotonic() < deadline:
            for (who, what), reply in _probe_round(world).items():
                if reply.outcome != EXPECTED[who, what]:
                    wrong.append((rounds, who, what, reply))
            rounds += 1
            flood_replies = flood.replies()
            if rounds >= MIN_ROUNDS and flood_replies >= FLOOD_MIN_REPLIES:
                break
        summary = flood.stop()
    log_lines = world.daemon.log().splitlines()[log_lines_before:]
    print(
        f"{rounds} rounds of probes during {summary['replies']} flooding calls by "
        f"{summary['workers']} workers: {summary['outcomes']}; {len(log_lines)} log lines, "
        f"{lines_per_round} per round of probes"
    )

    # The flood was what it claims: at least 128 calls always waiting, for the whole probing.
    assert summary["workers"] == FLOOD_CONNECTIONS * FLOOD_CALLS_PER_CONNECTION >= 128
    assert rounds >= MIN_ROUNDS and flood_replies >= FLOOD_MIN_REPLIES, (rounds, flood_replies)
    # Every call of root and of the granted user was decided as without the flood.
    assert wrong == [], wrong[:10]
    # The flooder was denied (polkit would let it authenticate as an admin) or told to slow
    # down, never allowed, and never refused for a reason it does not own.
    outcomes = summary["outcomes"]
    assert set(outcomes) <= {
        names.error_name("NotAuthorizedCanObtain"),
        BUSY,
    }, outcomes
    assert outcomes.get(BUSY, 0) > 0, outcomes
    # The log says a few things about the flood, not one line per call.
    flood_lines = len(log_lines) - rounds * lines_per_round
    assert flood_lines <= MAX_FLOOD_LOG_LINES, (
        f"{flood_lines} log lines for {summary['replies']} flooding calls "
        f"({rounds} rounds of probes writing {lines_per_round} each):\n" + "\n".join(log_lines[:30])
    )


def test_granted_users_are_still_granted_after_a_flood(
    world: World, polkitd: RunningPolkit
) -> None:
    """Nothing of the flood lingers: the queues drained, and an interactive request still
    reaches polkit (which answers that nobody is there to authenticate)."""
    outcomes = {key: reply.outcome for key, reply in _probe_round(world).items()}
    assert outcomes == EXPECTED
    interactive = world.callers["unprivileged"].manager(
        "CreateDevice",
        "ssa{sv}",
        [flooder.MISSING_PARENT, TYPE, {"auth.interactive": Variant("b", True)}],
    )
    assert interactive.outcome == "NotAuthorizedCanObtain"
    assert "no authentication agent" in interactive.message


# ---- root needs no round trip to polkitd, yet follows what polkitd knows -------------------


def _root_outcomes(world: World) -> dict[str, str]:
    return {
        "create": _create_on_missing_parent(world.root).outcome,
        "reload": _reload(world.root).outcome,
    }


ROOT_ALLOWED = {"create": "ParentNotFound", "reload": "ok"}


def test_root_needs_no_round_trip_per_call(world: World, polkitd: RunningPolkit) -> None:
    """Once polkitd has said it knows the actions, root's calls do not wait for it: with
    polkitd stopped (on the bus, answering nothing) they are still allowed. (For a few
    seconds, `ROOT_ANSWER_LIFETIME`: these calls take milliseconds.)"""
    assert _root_outcomes(world) == ROOT_ALLOWED
    polkitd.pause()
    try:
        outcomes = [_root_outcomes(world) for _ in range(3)]
    finally:
        polkitd.resume()
    assert outcomes == [ROOT_ALLOWED] * 3


def test_root_is_denied_once_polkitd_forgets_the_actions(
    world: World, polkitd: RunningPolkit
) -> None:
    """polkitd re-reads its actions when their directory changes: within
    `ROOT_ANSWER_LIFETIME` the daemon asks again about root, and a missing .policy file denies
    root again, as a broken installation must."""
    assert _root_outcomes(world) == ROOT_ALLOWED
    for policy in polkitd.actions_dir.iterdir():
        policy.unlink()
    outcomes: list[str] = []
    deadline = time.monotonic() + polkit.ROOT_ANSWER_LIFETIME + 30
    while time.monotonic() < deadline and len(outcomes) < 1000:
        create = _create_on_missing_parent(world.root)
        outcomes.append(create.outcome)
        if create.outcome != "ParentNotFound":
            break
        time.sleep(0.05)
    assert set(outcomes) <= {"ParentNotFound", "NotAuthorized"}, outcomes
    assert create.outcome == "NotAuthorized"
    assert "is not registered" in create.message


def test_root_is_denied_by_a_new_polkitd_without_the_actions(world: World) -> None:
    """What the daemon remembered about root is forgotten when polkitd's name changes owner."""
    with running_polkitd(world.address):
        assert _root_outcomes(world) == ROOT_ALLOWED
    with running_polkitd(world.address, actions=()):
        create = _create_on_missing_parent(world.root)
    assert create.outcome == "NotAuthorized"
    assert "is not registered" in create.message
