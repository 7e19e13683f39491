"""The policy interface and registry.

A policy says who talks to whom and when: it is the worker's loop, written with the primitives
`worker.compute`, `servers.push`, `servers.pull` and `servers.apply`, plus the server's rule for an
arriving gradient. It never touches the network's internals. Each policy owns its config schema
(`Config`, a PolicyConfig subclass with its knobs and their checks) and keeps its process handles.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import simpy

from pssim.config import PolicyConfig
from pssim.registry import Registry

POLICIES: Registry[type["Policy"]] = Registry("policy.name")


def register(name: str):
    """Class decorator: make a policy available as `+policy=<name>` (its schema: the class's `Config`)."""

    def wrap(cls: type[Policy]) -> type[Policy]:
        cls.name = name
        POLICIES[name] = cls
        return cls

    return wrap


def registered() -> list[str]:
    return sorted(POLICIES)


def mean_gradient(grads: list):
    """The mean of the workers' gradients, summed in worker order (so every policy gets the same bits);
    None in timing-only runs."""
    if grads[0] is None:
        return None
    return sum(grads[1:], grads[0].clone()) / len(grads)


@dataclass(frozen=True)
class Interruption:
    """A policy process that was interrupted: when, whose (a worker index, or None for a process that
    drives every worker) and why (the cause given to `Policy.interrupt`)."""

    time: float
    worker: int | None
    cause: Any


class Policy:
    """Base class: holds the run's handles and starts one process per worker.

    Each process runs under `_guarded`, so an interrupt (`interrupt(i, cause)`: the failure hook a
    fault model uses) ends it cleanly and is recorded in `interruptions` instead of crashing the run.
    """

    name = ""
    Config: type[PolicyConfig] = PolicyConfig
    # Gradients folded into one global model update (a BSP step folds all n; an ASP step one).
    gradients_per_update = 1
    # Whether the run builds cluster.servers parameter-server shards on hosts of their own.
    uses_servers = True

    def __init__(self, ctx):
        self.ctx = ctx
        self.env = ctx.env
        self.servers = ctx.servers
        self.cfg = ctx.config.policy
        self.workers = ctx.workers
        self.n = len(ctx.workers)
        self.processes: list[simpy.Process] = []  # the processes this policy started, to interrupt or inspect
        self.interruptions: list[Interruption] = []

    def start(self) -> None:
        self.processes = [self.env.process(self._guarded(self.worker(w), w.index)) for w in self.workers]

    def interrupt(self, index: int, cause: Any = None) -> None:
        """Interrupt process `index` (worker `index` for per-worker policies) with `cause`."""
        self.processes[index].interrupt(cause)

    def _guarded(self, loop, worker: int | None):
        """Run `loop`; if interrupted, record it and end (the process knows, the run goes on)."""
        try:
            return (yield from loop)
        except simpy.Interrupt as interrupt:
            self.interruptions.append(Interruption(self.env.now, worker, interrupt.cause))

    def worker(self, w):
        """The worker's loop, a SimPy generator that runs until the simulation stops."""
        raise NotImplementedError
