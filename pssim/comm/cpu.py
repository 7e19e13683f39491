"""A host's CPU threads: work items run first come, first served on the first thread free.

Used by every server in the simulation (parameter-server shards, summation services, partition
servers). Each item's duration is known when it is submitted, so its start is set at once: max(now,
the earliest time a thread frees), with no queue of waiting processes. That is the schedule of a FIFO
SimPy resource with `threads` servers, at O(log threads) per item and one SimPy event (the item's end)
instead of a request, a grant and a release.

    end = cpu.reserve(seconds, what)        # book the work; when it ends
    yield from cpu.work(seconds, what)      # a process: book it and sleep until it ends
    cpu.then(seconds, what, callback)       # no process: call callback() when it ends
"""

from __future__ import annotations

import heapq
from typing import Callable

import simpy


class Threads:
    """`threads` CPU threads of one host, FIFO. `busy` logs (start, end, what) per item for the trace
    while `record` is on (a run turns it off without a trace, so memory stays flat in steps)."""

    def __init__(self, env: simpy.Environment, host: str, threads: int = 1):
        self.env = env
        self.host = host
        self._free = [env.now] * threads  # a heap of the times each thread is next free
        self.busy: list[tuple[float, float, str]] = []
        self.record = True

    def reserve(self, seconds: float, what: str) -> float:
        """Book `seconds` of work on the first free thread, behind everything booked before; its end."""
        start = max(self.env.now, heapq.heappop(self._free))
        end = start + seconds
        heapq.heappush(self._free, end)
        if self.record:
            self.busy.append((start, end, what))
        return end

    def work(self, seconds: float, what: str):
        """A generator: book the work and return once it is done."""
        end = self.reserve(seconds, what)
        if end > self.env.now:
            yield self.env.timeout(end - self.env.now)

    def then(self, seconds: float, what: str, callback: Callable[[], None]) -> None:
        """Book the work and call `callback()` when it is done: at once if it takes no time (as `work`
        returns without yielding), else from the event of its end."""
        end = self.reserve(seconds, what)
        if end > self.env.now:
            self.env.timeout(end - self.env.now).callbacks.append(lambda _event: callback())
        else:
            callback()
