"""Bounded delay (Li et al., OSDI'14): task t starts once every task started before t - tau has finished.

A task is one worker iteration: compute a gradient on the pulled parameters, push it; it finishes when
every shard has applied that gradient. Tasks are numbered 0, 1, 2, ... in the order they start (a task
starts when its worker begins computing), over all workers together. Task t may start only once every
task numbered below t - tau has finished, where tau is `policy.max_delay`:

- tau = 0 is sequential consistency: each task waits for the one before it, so one gradient is in flight
  at a time however many workers there are (sequential SGD with the workers taking turns);
- tau = null (no bound) is eventual consistency: nobody ever waits, which is ASP exactly;
- in between, a straggling task holds everybody back once tau later tasks have started.

Servers are ASP's (each gradient applied on arrival, scaled by 1/n under gradient_scale=mean); staleness
and clock_lead are recorded as under ASP. A gradient of task t misses at most 2 tau updates: its pull
follows the finish of every task below t - tau, and no task above t + tau can start before t finishes.
"""

from __future__ import annotations

from dataclasses import dataclass

import simpy

from pssim.comm.gates import Clock
from pssim.config import require
from pssim.policies.asynchronous import AsyncConfig, Asynchronous
from pssim.policies.base import register


@dataclass
class BoundedDelayConfig(AsyncConfig):
    name: str = "bounded_delay"
    # tau: task t starts once every task started before task t - tau has finished (0: sequential; null: no bound, eventual consistency, as async).
    max_delay: int | None = 4

    def check(self, config) -> None:
        super().check(config)
        tau = self.max_delay
        require(tau is None or (isinstance(tau, int) and not isinstance(tau, bool) and tau >= 0),
                "policy.max_delay", tau, "must be an integer >= 0, or null for no bound (eventual consistency)")


class TaskWindow:
    """Tasks numbered in the order they start, and the gates on them.

    `issue()` hands out the next number (a worker takes it when it is ready for its next task);
    `started` is a Clock whose value is the number of tasks started (tasks are started in number order:
    `start(t)` moves it from t to t+1); `finished` is a Clock whose value is the length of the longest
    prefix of finished tasks (every task below it has finished), so `finished.reached(k)` fires once
    tasks 0..k-1 have all finished, whatever order they finished in.
    """

    def __init__(self, env: simpy.Environment):
        self.issued = 0
        self.started = Clock(env)
        self.finished = Clock(env)
        self._done_above: set[int] = set()  # finished tasks beyond the finished prefix

    def issue(self) -> int:
        task, self.issued = self.issued, self.issued + 1
        return task

    def start(self, task: int) -> None:
        if task != self.started.value:
            raise RuntimeError(f"task {task} started out of order (next is {self.started.value})")
        self.started.advance()

    def finish(self, task: int) -> None:
        self._done_above.add(task)
        prefix = self.finished.value
        while prefix in self._done_above:
            self._done_above.remove(prefix)
            prefix += 1
        self.finished.advance(prefix)


@register("bounded_delay")
class BoundedDelay(Asynchronous):
    """ASP's servers plus the bounded-delay gate (OSDI'14, "Flexible Consistency").

    A worker takes its next task's number when it is ready for it (at the start, then after each push),
    waits until every task below number - tau has finished, pulls the newest parameters (as ASP does) and
    starts computing once the task numbered just before it has started (pulls of different lengths
    never reorder tasks, so the numbers are the start order). The first task of a worker that does not
    have to wait computes on the initial parameters without a pull, as under ASP; one that waits pulls.
    Nothing waits when the gate is already open. tau = null runs ASP's own loop (no gate, and starts
    in whatever order the pulls end), so its events are exactly ASP's.
    """

    Config = BoundedDelayConfig

    def __init__(self, ctx):
        super().__init__(ctx)
        self.tau: int | None = self.cfg.max_delay
        self.tasks = TaskWindow(self.env)

    def worker(self, w):
        if self.tau is None:  # no bound: no gate and no start order, ASP's loop itself
            return (yield from super().worker(w))
        params, versions = self.ctx.initial_params, [0] * len(self.servers.shards)
        task = self.tasks.issue()
        if (yield from self.admit(task)):
            params, versions = yield from self.servers.pull(w)
        yield from self.in_order(task)
        step = 0
        while True:
            self.tasks.start(task)
            grad = yield from w.compute(params, step, min(versions), clock_lead=self.clocks.lead(w.index))
            yield from self.servers.push(w, grad, self.apply_on_arrival(versions))
            self.tasks.finish(task)
            self.clocks.tick(w.index, to=step + 1)
            task = self.tasks.issue()
            yield from self.admit(task)
            params, versions = yield from self.servers.pull(w)
            yield from self.in_order(task)
            w.finish_step()
            step += 1

    def admit(self, task: int):
        """The bound: wait until every task below task - tau has finished; returns whether it waited."""
        if self.tasks.finished.value >= task - self.tau:
            return False
        yield self.tasks.finished.reached(task - self.tau)
        return True

    def in_order(self, task: int):
        """Wait until every task numbered below `task` has started (a no-op unless pulls reordered them)."""
        if self.tasks.started.value < task:
            yield self.tasks.started.reached(task)
