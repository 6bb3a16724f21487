# SPDX-License-Identifier: LGPL-2.1-or-later
"""How the engine runs things: the I/O pool's timeout, keyed locks, the coalescing of asks,
and its subscribers' order."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

from mdevd.engine import DeviceEvent, Event, NullListener, Reason
from mdevd.engine.ports import Subscribers
from mdevd.engine.runner import Coalescer, IoRunner, IoTimeout, KeyedLocks
from mdevd.model import DeviceState

pytestmark = pytest.mark.timeout(60, method="thread")

log = logging.getLogger("tests.engine.runner")


def test_a_call_that_outlasts_the_timeout_raises_and_its_outcome_stays_reachable() -> None:
    release = threading.Event()

    def slow_create(name: str, *, size: int) -> str:
        release.wait(30)
        return f"{name}:{size}"

    async def scenario() -> tuple[IoTimeout, str]:
        runner = IoRunner(timeout=0.05, workers=2)
        try:
            with pytest.raises(IoTimeout) as raised:
                await runner.run(slow_create, "mdev", size=2)
            release.set()
            return raised.value, await raised.value.pending
        finally:
            runner.close()

    timeout, late = asyncio.run(scenario())
    assert timeout.name == "Timeout"
    assert timeout.message == "slow_create did not finish within 0.05 s"
    assert late == "mdev:2"  # what the worker still did, for whoever must undo it


def test_keyed_locks_serialize_one_key_and_are_gone_when_unused() -> None:
    locks = KeyedLocks()
    order: list[str] = []

    async def hold(key: str, name: str, entered: asyncio.Event | None = None) -> None:
        async with locks.hold(key):
            order.append(f"{name} in")
            if entered is not None:
                entered.set()
            await asyncio.sleep(0.01)
            order.append(f"{name} out")

    async def scenario() -> int:
        entered = asyncio.Event()
        first = asyncio.create_task(hold("a", "first", entered))
        await entered.wait()
        second = asyncio.create_task(hold("a", "second"))
        other = asyncio.create_task(hold("b", "other"))
        await asyncio.sleep(0)
        held = len(locks)
        await asyncio.gather(first, second, other)
        return held

    held = asyncio.run(scenario())
    assert held == 2  # "a" (held, and waited for) and "b"
    assert order.index("first out") < order.index("second in")  # one at a time on "a"
    assert order.index("other in") < order.index("first out")  # "b" did not wait for "a"
    assert len(locks) == 0


def test_asks_during_a_run_make_exactly_one_more_run() -> None:
    runs = 0
    running = asyncio.Event()
    proceed = asyncio.Event()

    async def work() -> None:
        nonlocal runs
        runs += 1
        running.set()
        await proceed.wait()

    async def scenario() -> None:
        coalescer = Coalescer(work, "the work failed", log)
        coalescer.request()
        await running.wait()
        running.clear()
        for _ in range(5):  # five asks while the first run is in progress
            coalescer.request()
        proceed.set()
        task = coalescer.running
        assert task is not None
        await task
        assert coalescer.running is None

    asyncio.run(scenario())
    assert runs == 2


def test_a_failed_run_is_logged_and_the_next_ask_runs_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outcomes = iter([RuntimeError("disk went away"), None])

    async def work() -> None:
        outcome = next(outcomes)
        if outcome is not None:
            raise outcome

    async def scenario() -> None:
        coalescer = Coalescer(work, "the work failed", log)
        for _ in range(2):
            coalescer.request()
            task = coalescer.running
            assert task is not None
            await task

    with caplog.at_level(logging.ERROR, logger=log.name):
        asyncio.run(scenario())
    assert [record.getMessage() for record in caplog.records] == ["the work failed"]
    assert next(outcomes, "all used") == "all used"


class Recorder(NullListener):
    def __init__(self, name: str, heard: list[str]) -> None:
        self.name = name
        self.heard = heard

    def device_removed(self, uuid: str) -> None:
        self.heard.append(f"{self.name}: {uuid}")


class Leaver(Recorder):
    """Unsubscribes itself (and `other`) while hearing a change."""

    def __init__(self, heard: list[str], subscribers: Subscribers, other: Recorder) -> None:
        super().__init__("leaver", heard)
        self.subscribers = subscribers
        self.other = other

    def device_removed(self, uuid: str) -> None:
        super().device_removed(uuid)
        self.subscribers.unsubscribe(self)
        self.subscribers.unsubscribe(self.other)


def test_subscribers_hear_in_order_and_leave_from_the_next_change_on() -> None:
    heard: list[str] = []
    subscribers = Subscribers()
    last = Recorder("last", heard)
    subscribers.subscribe(Recorder("first", heard))
    subscribers.subscribe(Leaver(heard, subscribers, last))
    subscribers.subscribe(last)
    with pytest.raises(ValueError):
        subscribers.subscribe(last)
    subscribers.device_removed("one")
    subscribers.device_removed("two")
    assert heard == ["first: one", "leaver: one", "last: one", "first: two"]


def test_a_device_event_reaches_each_subscriber_as_it_was_made() -> None:
    seen: list[DeviceEvent] = []

    class Events(NullListener):
        def device_event(self, state: DeviceState, event: DeviceEvent) -> None:
            seen.append(event)

    subscribers = Subscribers()
    subscribers.subscribe(Events())
    event = DeviceEvent(
        Event.START_FAILED, Reason.AUTOSTART, "Busy", "parent mtty is busy", retry_in=0.5
    )
    state = DeviceState(
        uuid="1ed9e000-0000-4000-8000-000000000001",
        parent="mtty",
        type_id="mtty-1",
        active=False,
        defined=True,
        autostart=True,
        attributes=(),
        sysfs_path="",
        iommu_group=-1,
        config_file="",
        last_error="Busy: parent mtty is busy",
    )
    subscribers.device_event(state, event)
    assert seen == [event]
    # The engine's words are the contract's (docs/dbus-api.md), and no bus name.
    assert (event.kind, event.reason, event.error_name) == ("start-failed", "autostart", "Busy")
