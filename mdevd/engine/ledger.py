# SPDX-License-Identifier: LGPL-2.1-or-later
"""The operation ledger: what the engine's own operations are doing to the kernel, so that
what the kernel says meanwhile is never taken for someone else's doing.

Pure bookkeeping: it records, and answers with decisions (read this device back, this read is
stale, these parents were read after the snapshot); it never calls the engine, the kernel or
the event loop. Four records:

- Operations in flight (creating or removing a UUID right now), and the uevents of their
  devices that came while they ran (early). When the operation ends, the events its effect
  explains were its own; any other was someone else's, and the device is read back.
- Events an operation made the kernel send that have not arrived yet (expected): when they
  come, there is nothing to read. Bounded: events that never come (no event source, lost ones)
  must not pile up.
- While a kernel read (a rescan, a device re-read) is in progress, the UUIDs and parents that
  operations changed since it started (touched): its view of them may predate the change, and
  is not applied. With no read in progress nothing is recorded, so nothing accumulates between
  reads.
- Parent reads, numbered as they start: they run in worker threads and finish out of order,
  and one that started before the read last applied for the same parent is stale.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

#: How many devices' own events may be awaited at once (each create or removal awaits two).
MAX_EXPECTED = 4096


@dataclass(frozen=True, slots=True)
class LedgerSize:
    """How many entries each per-UUID record holds: none may grow with the UUIDs ever used."""

    in_flight: int
    early_events: int
    expected_events: int
    touched: int
    touched_parents: int


class OperationLedger:
    def __init__(self, max_expected: int = MAX_EXPECTED) -> None:
        #: How many devices' events may be awaited at once; past it the oldest is forgotten.
        self.max_expected = max_expected
        self._in_flight: set[str] = set()
        self._early_events: dict[str, list[str]] = {}
        self._expected_events: dict[str, list[str]] = {}
        self._kernel_reads = 0
        self._touched: set[str] = set()
        self._touched_parents: set[str] = set()
        self._parent_reads_started = 0
        self._parent_read_applied: dict[str, int] = {}

    # ---- operations ------------------------------------------------------------------------

    def begin_operation(self, uuid: str) -> None:
        """An operation starts creating or removing `uuid`."""
        self._in_flight.add(uuid)
        self._expected_events.pop(uuid, None)

    def end_operation(self, uuid: str, effect: Sequence[str]) -> bool:
        """The operation on `uuid` is over; `effect` are the uevents it made the kernel send.

        Those still to come are expected (no need to read the device back for them). Returns
        whether the device must be read back: events came while it ran that its effect does
        not explain, so someone else changed it too.
        """
        self._in_flight.discard(uuid)
        if self._kernel_reads:
            self._touched.add(uuid)
        unexplained = list(self._early_events.pop(uuid, ()))
        still_to_come = []
        for action in effect:
            if action in unexplained:
                unexplained.remove(action)
            else:
                still_to_come.append(action)
        if still_to_come:
            if len(self._expected_events) >= self.max_expected:
                # Events that never came (no event source, or lost ones): forget the oldest;
                # should it come after all, it only costs a re-read of its device.
                del self._expected_events[next(iter(self._expected_events))]
            self._expected_events[uuid] = still_to_come
        return bool(unexplained)

    def in_flight(self, uuid: str) -> bool:
        return uuid in self._in_flight

    # ---- kernel events ---------------------------------------------------------------------

    def device_uevent(self, uuid: str, action: str) -> bool:
        """An mdev device's own uevent came; whether the device must be read back now.

        While an operation on the device runs, the event is most likely its doing: it is kept
        for the operation to judge when it ends. An event an operation made the kernel send is
        taken off the expected ones, and needs no reading back.
        """
        if uuid in self._in_flight:
            self._early_events.setdefault(uuid, []).append(action)
            return False
        expected = self._expected_events.get(uuid)
        if not expected or action not in expected:
            return True
        expected.remove(action)
        if not expected:
            del self._expected_events[uuid]
        return False

    def forget_expected(self) -> None:
        """A full rescan is due: it reads everything, so no event awaited before it needs more,
        and after a loss (an overflow) an awaited event may never come."""
        self._expected_events.clear()

    # ---- kernel reads ----------------------------------------------------------------------

    @contextlib.contextmanager
    def kernel_read(self) -> Iterator[None]:
        """Around a read of the kernel and the use of what it found: the operations that end
        meanwhile are recorded, since the read may predate their effect."""
        if self._kernel_reads == 0:
            self._touched.clear()
            self._touched_parents.clear()
        self._kernel_reads += 1
        try:
            yield
        finally:
            self._kernel_reads -= 1
            if self._kernel_reads == 0:
                self._touched.clear()
                self._touched_parents.clear()

    def settled(self, uuid: str) -> bool:
        """Whether the kernel read in progress may apply what it found of `uuid`: no operation
        runs on it, and none changed it since the read started (its effect is newer)."""
        return uuid not in self._in_flight and uuid not in self._touched

    # ---- parent reads ----------------------------------------------------------------------

    def start_parent_read(self) -> int:
        """Number a parent read (or a rescan's snapshot) as it starts."""
        self._parent_reads_started += 1
        return self._parent_reads_started

    def accept_parent_read(self, name: str, started: int) -> bool:
        """Whether the read of parent `name` numbered `started` may be applied: False when a
        read that started later is in already (this one may show the parent before it)."""
        if self._parent_read_applied.get(name, 0) > started:
            return False
        self._parent_read_applied[name] = started
        if self._kernel_reads:
            self._touched_parents.add(name)
        return True

    def accept_snapshot(self, started: int, names: Iterable[str]) -> set[str]:
        """A rescan's snapshot, numbered `started`, covers the parents `names` (those known and
        those it found). Returns the parents read again after it started (an operation's own
        look at its effect): their view is newer than the snapshot's, and stays. For the others
        the snapshot is now the latest read, even where an older read was applied meanwhile
        (else a parent the snapshot saw gone stayed in view for good)."""
        newer = {
            name
            for name in self._touched_parents
            if self._parent_read_applied.get(name, 0) > started
        }
        for name in names:
            if name not in newer:
                self._parent_read_applied[name] = started
        return newer

    # ---- what it holds ---------------------------------------------------------------------

    def size(self) -> LedgerSize:
        return LedgerSize(
            in_flight=len(self._in_flight),
            early_events=len(self._early_events),
            expected_events=len(self._expected_events),
            touched=len(self._touched),
            touched_parents=len(self._touched_parents),
        )
