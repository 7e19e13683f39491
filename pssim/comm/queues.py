"""Scheduling queues: a priority queue drained under an in-flight window (`PriorityWindow`), and
BytePS's scheduled queue of one pipeline stage (`ScheduledQueue`, below).

PriorityWindow:

Producers `put(priority, item)`; one sender process takes `item = yield from queue.get()`, which
returns the lowest-priority-value item once one is queued and fewer than `window` items are in
flight; each taken item counts as in flight until `done()` (or until the event given to
`release_when` fires: its transfer landed).

The choice is deferred: a put or a done only wakes the sender, which picks the best item when it runs,
later in the same instant. So items put in one instant (a whole layer's partitions, or two layers
finishing together) are all in the running, not just the first one put. Ties in priority go to the
item put first.
"""

from __future__ import annotations

import bisect
import heapq
from itertools import count
from typing import Any

import simpy


class PriorityWindow:
    """A min-priority queue whose sender keeps at most `window` items in flight.

    Args:
        env: the simulation's clock.
        window: how many taken items may be in flight at once (>= 1).
    """

    def __init__(self, env: simpy.Environment, window: int):
        if window < 1:
            raise ValueError(f"the in-flight window must be >= 1, not {window}")
        self.env = env
        self.window = window
        self.in_flight = 0
        self._heap: list[tuple[Any, int, Any]] = []
        self._order = count()  # ties: first put, first out (items need not be comparable)
        self._wake: simpy.Event | None = None  # the sender's, while it waits

    def __len__(self) -> int:
        """Items queued (not yet taken)."""
        return len(self._heap)

    def put(self, priority, item) -> None:
        """Queue `item`; lower priority values leave first."""
        heapq.heappush(self._heap, (priority, next(self._order), item))
        self._wake_sender()

    def get(self):
        """A generator for the one sender process: `item = yield from queue.get()` waits until an item
        is queued and fewer than `window` are in flight, then takes the best one (now in flight)."""
        while not self._heap or self.in_flight >= self.window:
            if self._wake is not None:
                raise RuntimeError("PriorityWindow serves one sender process at a time")
            self._wake = self.env.event()
            try:
                yield self._wake
            finally:
                self._wake = None
        self.in_flight += 1
        return heapq.heappop(self._heap)[-1]

    def done(self, _event=None) -> None:
        """A taken item's transfer finished: it leaves the window (usable as an event callback)."""
        if self.in_flight < 1:
            raise RuntimeError("done() without an item in flight")
        self.in_flight -= 1
        self._wake_sender()

    def release_when(self, event: simpy.Event) -> None:
        """Call `done()` when `event` is processed (fired or failed): e.g. a push's bytes landed."""
        event.callbacks.append(self.done)

    def _wake_sender(self) -> None:
        if self._wake is not None and not self._wake.triggered:
            self._wake.succeed()


class ScheduledQueue:
    """One stage queue of BytePS's pipeline on one machine (byteps/common/scheduled_queue.cc).

    Unscheduled (`credit` None: BYTEPS_SCHEDULING_CREDIT unset, the code's default): tasks leave in the
    order they were put, as soon as they are put; priorities are ignored.
    Scheduled (`credit` bytes): tasks are kept sorted by priority (lower values first; ties in the order
    put) and a task is taken only while its bytes fit in the credit left. The taker scans the sorted
    tasks and takes the first that fits (a smaller task may pass a larger one that does not, as getTask
    does); its bytes come back with `finish(nbytes)`, when the stage's work on it is done.

    One taker process: `task = yield from queue.get()`. Its choice is deferred to its turn, later in the
    instant of a put or a finish, so tasks put in one instant (a layer's partitions) compete.
    """

    def __init__(self, env: simpy.Environment, credit: float | None):
        if credit is not None and credit <= 0:
            raise ValueError(f"the credit must be > 0 bytes (or None: unscheduled), not {credit}")
        self.env = env
        self.credit = credit
        self.credits = credit  # left now (None: unscheduled)
        self._tasks: list[tuple[Any, int, Any, float]] = []  # (priority, order, task, nbytes); sorted if scheduled
        self._order = count()
        self._wake: simpy.Event | None = None

    def __len__(self) -> int:
        return len(self._tasks)

    def put(self, task, priority, nbytes: float) -> None:
        entry = (priority, next(self._order), task, nbytes)
        if self.credit is None:
            self._tasks.append(entry)
        else:
            bisect.insort(self._tasks, entry, key=lambda e: e[:2])
        self._wake_taker()

    def get(self):
        """A generator for the one taker: waits until a task can be taken, then takes it."""
        while (index := self._takeable()) is None:
            if self._wake is not None:
                raise RuntimeError("ScheduledQueue serves one taker process at a time")
            self._wake = self.env.event()
            try:
                yield self._wake
            finally:
                self._wake = None
        _, _, task, nbytes = self._tasks.pop(index)
        if self.credit is not None:
            self.credits -= nbytes
        return task

    def finish(self, nbytes: float) -> None:
        """A taken task's stage work is done: its bytes return to the credit (scheduled queues)."""
        if self.credit is not None:
            self.credits += nbytes
            self._wake_taker()

    def _takeable(self) -> int | None:
        if not self._tasks:
            return None
        if self.credit is None:
            return 0
        return next((i for i, e in enumerate(self._tasks) if e[3] <= self.credits), None)

    def _wake_taker(self) -> None:
        if self._wake is not None and not self._wake.triggered:
            self._wake.succeed()
