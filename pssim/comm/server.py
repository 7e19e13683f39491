"""A parameter-server shard: a contiguous range of the model, its optimizer state, version and CPU."""

from __future__ import annotations

import simpy
import torch  # noqa: F401  (annotations)

from pssim.workload.state import ModelState


class Cpu:
    """A host's CPU cores as a FIFO SimPy resource, with a log of its busy spans for the trace."""

    def __init__(self, env: simpy.Environment, host: str, cores: int = 1):
        self.env = env
        self.host = host
        self._core = simpy.Resource(env, capacity=cores)
        self.busy: list[tuple[float, float, str]] = []  # (start, end, what)

    def work(self, seconds: float, what: str):
        """Occupy one core for `seconds`, queued behind earlier work while every core is busy."""
        with self._core.request() as turn:
            yield turn
            start = self.env.now
            if seconds > 0:
                yield self.env.timeout(seconds)
            self.busy.append((start, self.env.now, what))


class ServerShard:
    """Owns params[lo:hi] of the global vector; applies the optimizer to it; counts its versions.

    The shard's CPU is a one-core SimPy resource: receiving, aggregating and sending bytes take CPU
    time in FIFO order, so a busy server delays both pushes and pulls, as a real one does.
    """

    def __init__(self, env: simpy.Environment, index: int, host: str, lo: int, hi: int, nbytes: float,
                 state: ModelState | None):
        self.env = env
        self.index = index
        self.host = host
        self.lo, self.hi = lo, hi
        self.nbytes = nbytes  # on the wire (the timing profile's share), not the numerics' size
        self.state = state  # a view of the model's parameters [lo, hi) and their optimizer state
        self.version = 0
        self.cpu = Cpu(env, host)
        self._waiters: list[tuple[int, simpy.Event]] = []

    def apply(self, grad: torch.Tensor | None, scale: float = 1.0) -> None:
        """One optimizer step with grad * scale (skipped in timing-only runs); the version advances."""
        if self.state is not None:
            self.state.step(grad, scale)
        self.version += 1
        ready = [w for w in self._waiters if w[0] <= self.version]
        self._waiters = [w for w in self._waiters if w[0] > self.version]
        for _, event in ready:
            event.succeed()

    def reached(self, version: int) -> simpy.Event:
        """An event that fires once this shard's version is at least `version`."""
        event = self.env.event()
        if self.version >= version:
            event.succeed()
        else:
            self._waiters.append((version, event))
        return event

    def snapshot(self) -> torch.Tensor | None:
        return self.state.snapshot() if self.state is not None else None
