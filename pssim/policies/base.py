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


@dataclass(frozen=True)
class WorkerCrash:
    """The cause a fault model interrupts a process with: worker `worker` crashed; `fault` is the fault's
    record (its `updates_lost` and `time_lost_s` are charged to it)."""

    worker: int
    fault: Any = None


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
    # Cluster keys this policy never reads: set to anything but their default, they draw a warning.
    ignores: tuple[str, ...] = ("cluster.cpu_machines", "cluster.server_cores")

    def __init__(self, ctx):
        self.ctx = ctx
        self.env = ctx.env
        self.servers = ctx.servers
        self.cfg = ctx.config.policy
        self.workers = ctx.workers
        self.n = len(ctx.workers)
        self.processes: list[simpy.Process] = []  # the processes this policy started, to interrupt or inspect
        self.interruptions: list[Interruption] = []
        # Faults (pssim/faults.py sets `recovery`, the fault injector, when the run has faults).
        self.recovery = None
        self.down: set[int] = set()  # workers crashed and not yet restarted
        self.restarted: set[int] = set()  # workers that restarted at least once (their loop pulls first)
        self.epoch = [0] * self.n  # bumped at each crash: a gradient pushed in an older epoch is dropped
        self.updates_lost_by: dict[int, int] = {}  # id(fault record) -> gradients the servers dropped
        self._crash_fault: dict[int, Any] = {}  # worker -> the fault record of its latest crash
        self._lost_seen: set[tuple[int, int]] = set()  # (worker, epoch) whose dropped gradient was counted
        self.lockstep = False  # one process drives every worker (replicated policies)

    @classmethod
    def plan(cls, config, seconds_per_step):
        """Before the run is built: a policy that tunes itself by trial runs (Parallax's partition search)
        returns the config to run and what it found (summary fields); `seconds_per_step(config)` runs a
        trial and times it. The default changes nothing."""
        return config, {}

    @classmethod
    def placement(cls, config, profile, gpu_devices: list[str]):
        """Which GPUs form each worker and which profile layers each of its stages runs (a
        `pssim.cluster.allocation.Placement`), given each GPU's device name; None (the default): worker i
        runs on GPUs i*k .. i*k + k - 1, its stages cut by MACs (`Profile.stages`)."""
        return None

    @classmethod
    def steps_in_flight(cls, config) -> int:
        """How many of one worker's steps may be in progress at once: 1 (a worker's steps never overlap)
        unless the policy pipelines them (hetpipe)."""
        return 1

    def start(self) -> None:
        self.processes = [self.env.process(self._guarded(self.worker(w), w.index)) for w in self.workers]

    def interrupt(self, index: int, cause: Any = None) -> None:
        """Interrupt process `index` (worker `index` for per-worker policies) with `cause`."""
        self.processes[index].interrupt(cause)

    # -- faults -----------------------------------------------------------------------------------
    def crash_worker(self, index: int, fault: Any = None) -> None:
        """Worker `index` crashes now: its process is interrupted (recorded in `interruptions`), its
        unfinished step has no row, and a gradient it pushed but the servers have not taken yet is
        dropped on arrival (`accepts`) and counted as an update lost."""
        w = self.workers[index]
        self.down.add(index)
        self.epoch[index] += 1
        self._crash_fault[index] = fault
        self.interrupt(index, WorkerCrash(index, fault))
        if w.current is not None and w.delivered == len(self.servers.shards):
            # its gradient was applied (it crashed while pulling): the step keeps its row and its number
            w.recorder.steps.append(w.current)
            w.clock += 1
        w.current = None

    def restart_worker(self, index: int) -> None:
        """Worker `index` is back: a new process runs its loop, which first pulls the newest model and
        goes on with its own step count (`worker.clock`)."""
        self.down.discard(index)
        self.restarted.add(index)
        self.processes[index] = self.env.process(self._guarded(self.worker(self.workers[index]), index))

    def accepts(self, worker, epoch: int) -> bool:
        """Server side: whether a gradient the worker pushed in `epoch` may be applied (False once the
        worker crashed after pushing it: the gradient is lost, counted once per crash)."""
        if epoch == self.epoch[worker.index]:
            return True
        fault = self._crash_fault.get(worker.index)
        key = (worker.index, epoch)
        if key not in self._lost_seen:
            self._lost_seen.add(key)
            self.updates_lost_by[id(fault)] = self.updates_lost_by.get(id(fault), 0) + 1
        return False

    def fresh_pull(self, w):
        """A restarted worker's first act: pull the newest model (params, per-shard versions)."""
        return (yield from self.servers.pull(w))

    def waiting_for(self) -> str:
        """What the processes wait for, for a stalled run's diagnosis ("" when there is nothing to say)."""
        return ""

    def _guarded(self, loop, worker: int | None):
        """Run `loop`; if interrupted, record it and end (the process knows, the run goes on)."""
        try:
            return (yield from loop)
        except simpy.Interrupt as interrupt:
            self.interruptions.append(Interruption(self.env.now, worker, interrupt.cause))

    def worker(self, w):
        """The worker's loop, a SimPy generator that runs until the simulation stops."""
        raise NotImplementedError
