"""A priority queue drained under an in-flight window (BytePS's credit-based scheduler).

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
