# SPDX-License-Identifier: LGPL-2.1-or-later
"""The operation ledger, directly: which kernel events and reads an engine operation explains.

The ledger is pure bookkeeping (no kernel, no loop), so each rule is shown here with the
events in the order the kernel can send them; the races that need them are forced through the
whole engine in this directory's other tests and in tests/udev/test_engine_races.py.
"""

from __future__ import annotations

from mdevd.engine.ledger import LedgerSize, OperationLedger
from mdevd.kernel import CREATE_EVENTS, REMOVE_EVENTS

UUID = "1ed9e000-0000-4000-8000-000000000001"
OTHER = "1ed9e000-0000-4000-8000-000000000002"

EMPTY = LedgerSize(in_flight=0, early_events=0, expected_events=0, touched=0, touched_parents=0)


def test_an_operations_own_events_during_it_need_no_read_back() -> None:
    ledger = OperationLedger()
    ledger.begin_operation(UUID)
    assert ledger.in_flight(UUID) and not ledger.settled(UUID)
    assert [ledger.device_uevent(UUID, action) for action in CREATE_EVENTS] == [False, False]
    assert ledger.end_operation(UUID, CREATE_EVENTS) is False
    assert not ledger.in_flight(UUID)
    assert ledger.size() == EMPTY


def test_an_event_the_effect_does_not_explain_is_someone_elses() -> None:
    ledger = OperationLedger()
    ledger.begin_operation(UUID)
    # Another tool removed the device while our create ran: its events come first.
    assert ledger.device_uevent(UUID, "remove") is False  # kept for the operation to judge
    assert ledger.end_operation(UUID, CREATE_EVENTS) is True  # read the device back
    assert ledger.size().early_events == 0


def test_events_after_the_operation_are_expected_once() -> None:
    ledger = OperationLedger()
    ledger.begin_operation(UUID)
    assert ledger.end_operation(UUID, CREATE_EVENTS + REMOVE_EVENTS) is False
    assert ledger.size().expected_events == 1
    assert [ledger.device_uevent(UUID, action) for action in CREATE_EVENTS + REMOVE_EVENTS] == [
        False
    ] * 4
    assert ledger.size() == EMPTY
    # The same event once more is not ours: the device is read back.
    assert ledger.device_uevent(UUID, "add") is True


def test_events_arriving_partly_during_and_partly_after() -> None:
    ledger = OperationLedger()
    ledger.begin_operation(UUID)
    assert ledger.device_uevent(UUID, "add") is False
    assert ledger.end_operation(UUID, CREATE_EVENTS) is False
    assert ledger.device_uevent(UUID, "bind") is False  # the one still to come
    assert ledger.size() == EMPTY


def test_a_new_operation_forgets_the_events_awaited_for_the_last_one() -> None:
    ledger = OperationLedger()
    ledger.begin_operation(UUID)
    ledger.end_operation(UUID, CREATE_EVENTS)
    ledger.begin_operation(UUID)
    assert ledger.size().expected_events == 0
    assert ledger.device_uevent(UUID, "add") is False  # early, for the new operation
    assert ledger.end_operation(UUID, ()) is True  # which did not cause it


def test_awaited_events_are_bounded_and_the_oldest_go_first() -> None:
    ledger = OperationLedger(max_expected=2)
    uuids = [f"1ed9e000-0000-4000-8000-00000000001{index}" for index in range(3)]
    for uuid in uuids:
        ledger.begin_operation(uuid)
        ledger.end_operation(uuid, CREATE_EVENTS)
    assert ledger.size().expected_events == 2
    assert ledger.device_uevent(uuids[0], "add") is True  # forgotten: only a re-read
    assert ledger.device_uevent(uuids[2], "add") is False


def test_a_full_rescan_forgets_every_awaited_event() -> None:
    ledger = OperationLedger()
    ledger.begin_operation(UUID)
    ledger.end_operation(UUID, CREATE_EVENTS)
    ledger.forget_expected()
    assert ledger.size().expected_events == 0
    assert ledger.device_uevent(UUID, "add") is True


def test_operations_are_recorded_only_while_a_kernel_read_runs() -> None:
    ledger = OperationLedger()
    ledger.begin_operation(OTHER)
    ledger.end_operation(OTHER, CREATE_EVENTS)
    assert ledger.settled(OTHER)  # no read in progress: nothing to protect, nothing kept
    with ledger.kernel_read():
        assert ledger.settled(OTHER)  # ended before the read started
        ledger.begin_operation(UUID)
        ledger.end_operation(UUID, CREATE_EVENTS)
        with ledger.kernel_read():  # a second read, begun meanwhile
            pass
        assert not ledger.settled(UUID)  # the read may predate its effect
        assert ledger.size().touched == 1
    assert ledger.settled(UUID)
    assert ledger.size().touched == 0


def test_an_older_parent_read_is_stale() -> None:
    ledger = OperationLedger()
    first = ledger.start_parent_read()
    second = ledger.start_parent_read()
    assert ledger.accept_parent_read("mtty", second)
    assert not ledger.accept_parent_read("mtty", first)
    assert ledger.accept_parent_read("other", first)  # each parent on its own
    assert ledger.size().touched_parents == 0  # no kernel read in progress


def test_a_snapshot_keeps_only_the_parent_reads_started_after_it() -> None:
    ledger = OperationLedger()
    with ledger.kernel_read():
        before = ledger.start_parent_read()  # a uevent's re-read, started before the rescan
        snapshot = ledger.start_parent_read()
        after = ledger.start_parent_read()  # an operation's own look at its effect
        assert ledger.accept_parent_read("gone", before)
        assert ledger.accept_parent_read("duo", after)
        assert ledger.accept_snapshot(snapshot, {"gone", "duo", "new"}) == {"duo"}
        # The snapshot is now the latest read of the others: the older read is stale.
        assert not ledger.accept_parent_read("gone", before)
        assert ledger.accept_parent_read("duo", after)
    assert ledger.size() == EMPTY
