"""A GPU that runs one piece of work at a time, the most urgent waiting piece next.

HetPipe's stages share a GPU between the forward and backward passes of the minibatches in flight; a
waiting backward goes before a waiting forward (PipeDream's one-forward-one-backward). This is the order
of a `simpy.PriorityResource(capacity=1)` (the lowest priority number first, then the earliest request,
then first come), without its request and grant events: each piece is one SimPy event, the end of its
work, scheduled when it starts. As the resource's release does, a GPU that frees while pieces wait picks
the next one a moment later in the same instant (one zero-delay event), so a piece asked for at that
instant (a minibatch's backward right after its forward) competes by its priority.

    yield gpu.run(priority, seconds)   # a process: wait for the GPU, work, return when done
"""

from __future__ import annotations

import heapq

import simpy
from simpy.core import NORMAL


class GpuQueue:
    """One GPU's work: `run` returns the event of the piece's end."""

    __slots__ = ("env", "busy", "_waiting", "_arrivals")

    def __init__(self, env: simpy.Environment):
        self.env = env
        self.busy = False
        self._waiting: list[tuple[int, float, int, float, simpy.Event]] = []  # (priority, asked at, order, s, end)
        self._arrivals = 0

    def run(self, priority: int, seconds: float) -> simpy.Event:
        """Queue `seconds` of work at `priority` (lower first); the event fires when it is done."""
        end = simpy.Event(self.env)
        if self.busy:
            heapq.heappush(self._waiting, (priority, self.env.now, self._arrivals, seconds, end))
            self._arrivals += 1
        else:
            self._start(seconds, end)
        return end

    def _start(self, seconds: float, end: simpy.Event) -> None:
        """Work from now: `end` is triggered `seconds` later (as a timeout is), and frees the GPU first."""
        self.busy = True
        end._ok, end._value = True, None
        end.callbacks.append(self._next)
        self.env.schedule(end, NORMAL, seconds)

    def _next(self, _event) -> None:
        """A piece ended: go idle, or pick the next piece later in this instant (module docstring)."""
        if not self._waiting:
            self.busy = False
            return
        self.env.timeout(0).callbacks.append(self._pick)

    def _pick(self, _event) -> None:
        """Start the most urgent waiting piece."""
        _, _, _, seconds, end = heapq.heappop(self._waiting)
        self._start(seconds, end)
