# SPDX-License-Identifier: LGPL-2.1-or-later
"""The parts that keep one caller's flood from starving others (issue 15, finding 3): the fair
limiter of polkit checks, the throttled log of refusals, and the uids remembered per
connection. The flood itself, against a real polkitd, is tests/security/test_auth_flood.py.
"""

from __future__ import annotations

import asyncio
import logging
import textwrap
from collections.abc import Hashable

import pytest
from dbus_fast.aio import MessageBus

from mdevd.bus import polkit
from mdevd.bus.auth import ThrottledLog
from mdevd.bus.caller import MAX_LOOKUPS_IN_FLIGHT, CallerTracker
from mdevd.bus.polkit import CallerOverloaded, FairLimiter

pytestmark = pytest.mark.timeout(60)


def test_the_limits_leave_room_on_the_daemon_s_connection() -> None:
    """The system bus allows 128 pending replies per connection: the checks, the uid lookups
    and the cancellations together stay well below, and one caller never holds every turn."""
    assert polkit.MAX_CHECKS_IN_FLIGHT + MAX_LOOKUPS_IN_FLIGHT + polkit.MAX_CANCELS_IN_FLIGHT <= 64
    assert polkit.MAX_CHECKS_IN_FLIGHT_PER_CALLER * 4 <= polkit.MAX_CHECKS_IN_FLIGHT


# ---- the fair limiter ----------------------------------------------------------------------


class Recorder:
    """Callers asking a limiter for turns; `granted` lists who got each turn, in order."""

    def __init__(self, limiter: FairLimiter) -> None:
        self.limiter = limiter
        self.granted: list[Hashable] = []
        self.tasks: list[asyncio.Task[None]] = []

    def ask(self, caller: Hashable, times: int = 1) -> None:
        for _ in range(times):
            self.tasks.append(asyncio.get_running_loop().create_task(self._turn(caller)))

    async def _turn(self, caller: Hashable) -> None:
        await self.limiter.acquire(caller)
        self.granted.append(caller)

    async def settle(self) -> None:
        for _ in range(5):
            await asyncio.sleep(0)


async def _grant_order(limiter: FairLimiter, asks: list[tuple[str, int]]) -> list[Hashable]:
    """Fill the limiter, queue `asks` in order, then end one turn at a time: who got each."""
    recorder = Recorder(limiter)
    for caller, times in asks:
        recorder.ask(caller, times)
        await recorder.settle()
    total = sum(times for _, times in asks)
    while len(recorder.granted) < total:
        holder = recorder.granted[len(recorder.granted) - limiter.in_flight]
        limiter.release(holder)
        await recorder.settle()
    for still_holding in recorder.granted[len(recorder.granted) - limiter.in_flight :]:
        limiter.release(still_holding)
    assert (limiter.in_flight, limiter.callers()) == (0, 0)
    return recorder.granted


def test_callers_that_wait_take_turns() -> None:
    """A caller with many requests waiting gets one turn per round, like one with a single
    request: it waits for itself, the others do not wait for it."""
    order = asyncio.run(
        _grant_order(
            FairLimiter(capacity=1, per_caller_in_flight=1, per_caller=100),
            [("flooder", 8), ("root", 2), ("granted", 1)],
        )
    )
    # The flooder's first turn was free; after each turn a caller goes to the end of the round.
    assert order == ["flooder", "root", "granted", "flooder", "root"] + ["flooder"] * 6


def test_a_caller_joining_late_is_served_next_round() -> None:
    async def main() -> list[Hashable]:
        limiter = FairLimiter(capacity=2, per_caller_in_flight=2, per_caller=100)
        recorder = Recorder(limiter)
        recorder.ask("flooder", 20)
        await recorder.settle()
        assert recorder.granted == ["flooder", "flooder"]
        recorder.ask("granted")
        await recorder.settle()
        limiter.release("flooder")
        await recorder.settle()
        # The turn went to the newcomer, not to the 18 requests queued before it.
        assert recorder.granted[-1] == "granted"
        for task in recorder.tasks:
            task.cancel()
        await recorder.settle()
        return recorder.granted

    asyncio.run(main())


def test_one_caller_never_holds_every_turn() -> None:
    """Slow checks (a dialog left open) of one caller leave turns for others at once."""

    async def main() -> None:
        limiter = FairLimiter(capacity=8, per_caller_in_flight=2, per_caller=100)
        recorder = Recorder(limiter)
        recorder.ask("flooder", 10)
        await recorder.settle()
        assert (recorder.granted, limiter.in_flight) == (["flooder"] * 2, 2)
        await asyncio.wait_for(limiter.acquire("granted"), timeout=5)
        assert limiter.in_flight == 3
        for task in recorder.tasks:
            task.cancel()
        await recorder.settle()

    asyncio.run(main())


def test_beyond_its_cap_a_caller_is_refused_at_once() -> None:
    async def main() -> None:
        limiter = FairLimiter(capacity=2, per_caller_in_flight=1, per_caller=3)
        recorder = Recorder(limiter)
        recorder.ask("flooder", 3)
        await recorder.settle()
        assert limiter.pending("flooder") == 3
        # No await is needed to learn it: the refusal comes before any waiting.
        with pytest.raises(CallerOverloaded) as refused:
            limiter.acquire("flooder").send(None)
        assert (refused.value.caller, refused.value.pending) == ("flooder", 3)
        # Another caller is not affected by the flooder's cap.
        await asyncio.wait_for(limiter.acquire("granted"), timeout=5)
        limiter.release("granted")
        for task in recorder.tasks:
            task.cancel()
        await recorder.settle()
        limiter.release("flooder")
        assert (limiter.in_flight, limiter.callers()) == (0, 0)

    asyncio.run(main())


def test_cancelled_waits_leave_nothing_behind() -> None:
    """A caller that hangs up while waiting (its task cancelled) frees its place, and a turn
    granted just as the wait was cancelled goes to the next caller."""

    async def main() -> None:
        limiter = FairLimiter(capacity=1, per_caller_in_flight=1, per_caller=50)
        await limiter.acquire("holder")
        recorder = Recorder(limiter)
        recorder.ask("flooder", 40)
        recorder.ask("granted")
        await recorder.settle()
        for task in recorder.tasks[:40]:
            task.cancel()
        await recorder.settle()
        assert limiter.pending("flooder") == 0
        limiter.release("holder")
        await recorder.settle()
        assert recorder.granted == ["granted"]
        # Granted and cancelled in the same turn of the loop.
        waiting = asyncio.get_running_loop().create_task(limiter.acquire("late"))
        await recorder.settle()
        limiter.release("granted")
        waiting.cancel()
        await recorder.settle()
        assert (limiter.in_flight, limiter.callers()) == (0, 0)

    asyncio.run(main())


def test_nonsense_limits_are_refused() -> None:
    with pytest.raises(ValueError):
        FairLimiter(capacity=4, per_caller_in_flight=8, per_caller=16)


# ---- the throttled log ---------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records]


def test_refusals_are_logged_a_few_times_then_counted(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("mdevd.test.throttled")
    clock = Clock()

    async def main() -> None:
        throttled = ThrottledLog(logger, burst=3, period=60, clock=clock)
        for n in range(1000):
            throttled.log(65534, logging.INFO, "denied: call %d", n)
        # Another caller's refusals are logged in full meanwhile.
        throttled.log(1000, logging.INFO, "denied: the granted user's call")
        clock.now += 60
        throttled.log(65534, logging.WARNING, "denied: call %d", 1000)

    with caplog.at_level(logging.INFO, logger="mdevd.test.throttled"):
        asyncio.run(main())
    assert _messages(caplog) == [
        "denied: call 0",
        "denied: call 1",
        "denied: call 2",
        "denied: the granted user's call",
        "uid 65534: 997 more refusals in 60 s not logged one by one",
        "denied: call 1000",
    ]


def test_the_count_is_logged_when_the_period_ends(caplog: pytest.LogCaptureFixture) -> None:
    """A flood that stops still gets its summary line, from a timer at the period's end."""
    logger = logging.getLogger("mdevd.test.throttled")

    async def main() -> None:
        throttled = ThrottledLog(logger, burst=1, period=0.05)
        for _ in range(10):
            throttled.log("unidentified callers", logging.INFO, "denied")
        for _ in range(200):  # bounded: the timer fires after 0.05 s
            if len(caplog.records) == 2:
                break
            await asyncio.sleep(0.01)

    with caplog.at_level(logging.INFO, logger="mdevd.test.throttled"):
        asyncio.run(main())
    assert _messages(caplog) == [
        "denied",
        "unidentified callers: 9 more refusals in 0.05 s not logged one by one",
    ]


def test_the_log_remembers_a_bounded_number_of_callers(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("mdevd.test.throttled")

    async def main() -> int:
        throttled = ThrottledLog(logger, burst=1, period=60, max_callers=10, clock=Clock())
        for caller in range(1000):
            throttled.log(caller, logging.INFO, "denied")
        return len(throttled._periods)

    with caplog.at_level(logging.INFO, logger="mdevd.test.throttled"):
        assert asyncio.run(main()) <= 10
    assert len(caplog.records) == 1000


# ---- uids remembered per connection --------------------------------------------------------

# Holds a connection as nobody: prints its unique name, then waits for stdin to close.
_NOBODY_CONNECTION = textwrap.dedent(
    """
    import asyncio, sys
    from dbus_fast.aio import MessageBus

    async def main(address):
        bus = await MessageBus(bus_address=address).connect()
        print(bus.unique_name, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)

    asyncio.run(main(sys.argv[1]))
    """
)


async def _remembered_uids(address: str, nobody_python: list[str]) -> dict[str, object]:
    bus = await MessageBus(bus_address=address).connect()
    nobody = await asyncio.create_subprocess_exec(
        *nobody_python,
        "-c",
        _NOBODY_CONNECTION,
        address,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd="/",
    )
    others = [await MessageBus(bus_address=address).connect() for _ in range(3)]
    try:
        assert nobody.stdout is not None and nobody.stdin is not None
        name = (await nobody.stdout.readline()).decode().strip()
        tracker = CallerTracker(bus, max_remembered=3)
        # Many calls of one connection at once: one answer for all of them.
        uids = await asyncio.gather(*(tracker.uid(name) for _ in range(50)))
        result: dict[str, object] = {"uids": set(uids), "remembered": tracker.remembered()}
        # Forgotten once the bus says the connection left.
        nobody.stdin.close()
        await nobody.wait()
        for _ in range(500):  # bounded wait for NameOwnerChanged
            if tracker.remembered() == 0:
                break
            await asyncio.sleep(0.01)
        result["remembered after leaving"] = tracker.remembered()
        for other in others:
            await tracker.uid(other.unique_name or "")
        await tracker.uid(bus.unique_name or "")
        result["remembered of four"] = tracker.remembered()
        return result
    finally:
        for other in others:
            other.disconnect()
        bus.disconnect()


def test_uids_are_remembered_while_the_caller_is_connected(
    bus_address: str, nobody_python: list[str]
) -> None:
    result = asyncio.run(_remembered_uids(bus_address, nobody_python))
    assert result == {
        "uids": {65534},
        "remembered": 1,
        "remembered after leaving": 0,
        "remembered of four": 3,
    }
