"""Bounded delay (Li et al., OSDI'14): task t starts once every task started before t - tau has finished.

A task is one worker iteration: compute a gradient on the pulled parameters, push it; it finishes when
every shard has applied that gradient. Tasks are numbered 0, 1, 2, ... in the order they start (a task
starts when its worker begins computing), over all workers together. Task t may start only once every
task numbered below t - tau has finished, where tau is `policy.max_delay`:

- tau = 0 is sequential consistency: each task waits for the one before it, so one gradient is in flight
  at a time however many workers there are (sequential SGD with the workers taking turns);
- tau = null (no bound) is eventual consistency: nobody ever waits, which is ASP exactly;
- in between, a straggling task holds everybody back once tau later tasks have started.

Servers are ASP's (each gradient applied on arrival under async's update rule, policy.gradient_scale); staleness
and clock_lead are recorded as under ASP. A gradient of task t misses at most 2 tau updates: its pull
follows the finish of every task below t - tau, and no task above t + tau can start before t finishes.

Replicated key ranges and server crashes (OSDI'14 section 4.3): with policy.replicas = k >= 1, or a
server_crash fault, the ranges sit on a consistent-hash ring of the server hosts (pssim/comm/ring.py) and
each primary copies a range to its k ring successors after every apply; a crashed server's ranges go to
the next live host of the ring, which resumes from its copy (`Replication`).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import count

import simpy


from pssim.comm.gates import Clock
from pssim.comm.ring import Ring, range_name
from pssim.config import one_of, require
from pssim.policies.asynchronous import AsyncConfig, Asynchronous
from pssim.policies.base import mean_gradient, register


@dataclass
class BoundedDelayConfig(AsyncConfig):
    name: str = "bounded_delay"
    # tau: task t starts once every task started before task t - tau has finished (0: sequential; null: no bound, eventual consistency, as async).
    max_delay: int | None = 4
    # k: after a key range applies a gradient its primary server sends the updated range to its k ring successors (0: no replicas).
    replicas: int = 0
    # Positions of each server host on the consistent-hash ring of key ranges.
    virtual_nodes: int = 4
    # What a task is: "worker" (one worker's iteration; tasks of different workers overlap) or "iteration"
    # (OSDI'14 Algorithm 3: iteration t is every worker's gradient on it, summed by the servers into one
    # update; iteration t starts once every iteration below t - tau has finished; tau=0 is BSP).
    task: str = "worker"

    def check(self, config) -> None:
        super().check(config)
        tau = self.max_delay
        require(tau is None or (isinstance(tau, int) and not isinstance(tau, bool) and tau >= 0),
                "policy.max_delay", tau, "must be an integer >= 0, or null for no bound (eventual consistency)")
        k, servers = self.replicas, config.cluster.servers
        require(isinstance(k, int) and not isinstance(k, bool) and 0 <= k < servers, "policy.replicas", k,
                f"must be an integer in [0, cluster.servers - 1 = {servers - 1}]")
        v = self.virtual_nodes
        require(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 1024, "policy.virtual_nodes", v,
                "must be an integer in [1, 1024]")
        one_of("policy.task", self.task, ("worker", "iteration"))
        if self.task == "iteration":
            one_of("policy.gradient_scale", self.gradient_scale, ("sum", "mean"))  # one update per iteration
            require(not uses_ring(config), "policy.task", self.task,
                    "iteration tasks keep each iteration's partial sums on its server, which are not "
                    "replicated: use policy.replicas=0 and no server_crash fault, or policy.task=worker")


def uses_ring(config) -> bool:
    """Ranges are placed on the ring when they are replicated or a server can crash; otherwise range j
    stays on server j (ps-lite's static placement), so a run without either is the same as before."""
    faults = config.faults
    crash = ((faults.model == "scheduled" and any(e.kind == "server_crash" for e in faults.events))
             or (faults.model == "mtbf" and faults.server_mtbf_s is not None))
    return config.policy.replicas > 0 or crash


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
        self._abandoned: set[int] = set()  # tasks of crashed workers that never started

    def issue(self) -> int:
        task, self.issued = self.issued, self.issued + 1
        return task

    def start(self, task: int) -> None:
        if task != self.started.value:
            raise RuntimeError(f"task {task} started out of order (next is {self.started.value})")
        self.started.advance()
        self._skip_abandoned()

    def is_finished(self, task: int) -> bool:
        return task < self.finished.value or task in self._done_above

    def abandon(self, task: int) -> None:
        """The task's worker crashed: the task counts as finished, and as started if it had not started
        (so the tasks after it are neither held at the bound nor in the start order)."""
        if task >= self.started.value:
            self._abandoned.add(task)
            self._skip_abandoned()
        self.finish(task)

    def _skip_abandoned(self) -> None:
        while self.started.value in self._abandoned:
            self._abandoned.remove(self.started.value)
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
        self.iterations = self.cfg.task == "iteration"
        if self.iterations:
            self.gradients_per_update = self.n  # an iteration's update folds every worker's gradient
            self._received: dict[tuple[int, int], list] = {}  # (shard, iteration) -> gradients by worker
        self.tasks = TaskWindow(self.env)
        self.task_of: dict[int, int] = {}  # worker -> the task it holds (issued, not yet finished)
        self.replication: Replication | None = None
        if self.servers is not None and uses_ring(ctx.config):
            self.replication = Replication(self, ctx)

    def apply_on_arrival(self, versions_used: list[int], epoch: int | None = None):
        """ASP's rule; then, with a ring, the range's vector clock ticks and its primary replicates it."""
        inner = super().apply_on_arrival(versions_used, epoch)
        if self.replication is None:
            return inner

        def on_arrival(shard, worker, grad) -> None:
            before = shard.version
            inner(shard, worker, grad)
            if shard.version > before:
                self.replication.applied(shard, worker.index)

        return on_arrival

    def crash_server(self, index: int, fault=None) -> None:
        """Server `index` (host cluster.servers' index) crashes for good: its ranges go to replicas."""
        self.replication.crash(self.ctx.cluster.layout.servers[index], fault)

    def worker(self, w):
        if self.iterations:
            return (yield from self.iteration_worker(w))
        if self.tau is None:  # no bound: no gate and no start order, ASP's loop itself
            return (yield from super().worker(w))
        params, versions = self.ctx.initial_params, [0] * len(self.servers.shards)
        restarted = w.index in self.restarted  # back from a crash: it pulls the newest model first
        task = self.task_of[w.index] = self.tasks.issue()
        if (yield from self.admit(task)) or restarted:
            params, versions = yield from self.servers.pull(w)
        yield from self.in_order(task)
        step = w.clock  # its own step count goes on after a restart
        while True:
            self.tasks.start(task)
            grad = yield from w.compute(params, step, min(versions), clock_lead=self.clocks.lead(w.index))
            yield from self.servers.push(w, grad, self.apply_on_arrival(versions, self.epoch[w.index]))
            self.tasks.finish(task)
            self.clocks.tick(w.index, to=step + 1)
            task = self.task_of[w.index] = self.tasks.issue()
            yield from self.admit(task)
            params, versions = yield from self.servers.pull(w)
            yield from self.in_order(task)
            w.finish_step()
            step += 1

    # -- iteration tasks (OSDI'14 Algorithm 3) ------------------------------------------------------
    def iteration_worker(self, w):
        """Iteration t: pull once every iteration below t - tau has finished (each shard has applied it),
        compute the gradient of batch t on what was pulled, push it. Iteration 0 computes on the initial
        parameters without a pull. tau = null never waits (the pull takes whatever each shard holds)."""
        params, versions = self.ctx.initial_params, [0] * len(self.servers.shards)
        if w.index in self.restarted:  # back from a crash: the newest model, then its own iteration count
            params, versions = yield from self.fresh_pull(w)
        for t in count(w.clock):
            grad = yield from w.compute(params, t, min(versions), clock_lead=self.clocks.lead(w.index))
            yield from self.servers.push(w, grad, self.iteration_sum(t, min(versions), self.epoch[w.index]))
            self.clocks.tick(w.index, to=t + 1)
            ready = 0 if self.tau is None else max(0, t + 1 - self.tau)  # iterations below it must be done
            params, versions = yield from self.servers.pull(w, min_version=ready)
            w.finish_step()

    def iteration_sum(self, t: int, version_used: int, epoch: int):
        """Server rule for iteration t: keep each worker's gradient; once all n are in, apply their mean
        (in worker order; under gradient_scale=sum, n times it) as the shard's one update of iteration t.

        Each worker pushes its iterations in order and a push ends before the next one starts, so a shard
        completes its iterations in order: its version is the number of iterations it has applied. A
        gradient of a crashed worker (an older epoch) is dropped; its restart computes the iteration
        again; a gradient of an iteration the shard has already applied is dropped."""

        def on_arrival(shard, worker, grad) -> None:
            if not self.accepts(worker, epoch) or t < shard.version:
                return
            worker.current.staleness = max(worker.current.staleness, t - version_used)
            received = self._received.setdefault((shard.index, t), [None] * self.n)
            received[worker.index] = True if grad is None else grad
            if any(g is None for g in received):
                return
            if t != shard.version:
                raise RuntimeError(f"shard {shard.index} completed iteration {t} at version {shard.version}")
            del self._received[(shard.index, t)]
            mean = None if received[0] is True else mean_gradient(received)
            self.servers.apply(shard, mean, 1.0 if self.cfg.gradient_scale == "mean" else float(self.n))

        return on_arrival

    def waiting_for(self) -> str:
        if not self.iterations:
            return super().waiting_for()
        waits = []
        for (j, t), received in sorted(self._received.items()):
            missing = [str(i) for i, g in enumerate(received) if g is None]
            waits.append(f"server shard {j} waits for the gradients of iteration {t} from worker(s) {', '.join(missing)}")
        return "; ".join(waits)

    def crash_worker(self, index: int, fault=None) -> None:
        """As ASP (its in-flight gradient is lost), and the task it held is abandoned: counted as finished
        so that the bound does not hold every other worker back until it restarts."""
        super().crash_worker(index, fault)
        task = self.task_of.pop(index, None)
        if task is not None and not self.tasks.is_finished(task):
            self.tasks.abandon(task)

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


class Replication:
    """Key ranges on a consistent-hash ring (pssim/comm/ring.py), replicated to k ring successors.

    Placement: range j (shard j) is owned by the first host of its ring chain; every range on one host
    shares that host's one-core CPU. Versions: each range keeps a vector clock, `clocks[j][w]` = how many
    of worker w's gradients its parameters hold (the shard's own version counts every update applied,
    lost ones included, so progress never goes back).

    Replication (after aggregation, as in OSDI'14): each time a range applies a gradient, its primary
    sends the updated range (its wire bytes) to each of its k live ring successors: the primary's CPU
    sends (transport cost per byte), a flow crosses the network, the replica's CPU receives (transport
    plus aggregation cost per byte, as for a push); the copy (parameters, optimizer state, vector clock) is
    held once that CPU work is done: it has landed. The worker's push is acknowledged when the primary
    has applied it, without waiting for replication, so an update acknowledged but not yet replicated
    can be lost. A copy that lands after its sender crashed is dropped (the handoff has happened).

    Crash: the crashed host leaves the ring; each range it owned goes to the next live host of its
    chain. If that host holds a landed copy the range resumes from it; otherwise (k = 0, or no copy had
    landed yet) from the last checkpoint, the initial parameters with a fresh optimizer state. Lost updates: the
    updates in the crashed primary's vector clock beyond the copy's. Copies the crashed host held are
    gone; the new primary replicates to its own k live successors from its next update on.
    """

    def __init__(self, policy, ctx):
        self.policy, self.env = policy, ctx.env
        self.servers = ctx.servers
        self.k = policy.cfg.replicas
        self.ring = Ring(ctx.cluster.layout.servers, policy.cfg.virtual_nodes)
        self.down: set[str] = set()
        shards = self.servers.shards
        self.cpus = {s.host: s.cpu for s in shards}  # each server host's CPU (shard j was built on server j)
        self.initial = ctx.initial_params
        self.clocks = [[0] * policy.n for _ in shards]
        self.copies: list[dict[str, tuple]] = [{} for _ in shards]  # range -> host -> (params, optimizer state, clock)
        self.replicated_bytes = 0.0
        self.log: list[tuple[int, str, str, int, float, float]] = []  # (range, from, to, updates, sent, landed)
        self.resend_fault = None
        for s in shards:
            self._place(s, self.ring.owners(range_name(s.index), 0)[0])
        self.servers.on_resend = self._resent

    def _place(self, shard, host: str) -> None:
        shard.host, shard.cpu = host, self.cpus[host]

    def primary(self, j: int) -> str:
        return self.servers.shards[j].host

    def successors(self, j: int) -> list[str]:
        return self.ring.owners(range_name(j), self.k, self.down)[1:]

    def applied(self, shard, worker: int) -> None:
        j = shard.index
        self.clocks[j][worker] += 1
        if self.k == 0:
            return
        state = shard.state
        copy = (None if state is None else state.params.clone(), None if state is None else state.state_snapshot(),
                list(self.clocks[j]))
        for dst in self.successors(j):
            self.env.process(self._replicate(shard, shard.host, dst, copy))

    def _replicate(self, shard, src: str, dst: str, copy):
        sent, nbytes = self.env.now, shard.nbytes
        yield from self.cpus[src].work(nbytes * self.servers.send_cpu, f"replicate r{shard.index}")
        yield self.servers.network.send(src, dst, nbytes, f"replicate r{shard.index}")
        yield from self.cpus[dst].work(nbytes * self.servers.receive_cpu, f"replica r{shard.index}")
        self.replicated_bytes += nbytes
        if src in self.down or dst in self.down:
            return  # its sender crashed first (the handoff is done) or its receiver is gone
        held = self.copies[shard.index].get(dst)
        if held is None or sum(held[2]) < sum(copy[2]):
            self.copies[shard.index][dst] = copy
        self.log.append((shard.index, src, dst, sum(copy[2]), sent, self.env.now))

    def crash(self, host: str, fault=None) -> None:
        self.down.add(host)
        self.resend_fault = fault
        for held in self.copies:
            held.pop(host, None)
        for shard in self.servers.shards:
            if shard.host != host:
                continue
            j = shard.index
            new = self.ring.owners(range_name(j), 0, self.down)[0]
            copy = self.copies[j].get(new)
            if copy is None:  # no replica: the last checkpoint, the initial parameters
                n = len(self.clocks[j])
                copy = (None if self.initial is None else self.initial[shard.lo:shard.hi].clone(), None, [0] * n)
            lost = sum(self.clocks[j]) - sum(copy[2])
            if shard.state is not None:  # the parameters and the optimizer state (None: fresh) as copied
                shard.overwrite(copy[0], copy[1])
            self.clocks[j] = list(copy[2])
            self._place(shard, new)
            if fault is not None and lost:
                lost_by = self.policy.updates_lost_by
                lost_by[id(fault)] = lost_by.get(id(fault), 0) + lost

    def _resent(self, nbytes: float) -> None:
        if self.resend_fault is not None:
            self.resend_fault.bytes_resent += nbytes
