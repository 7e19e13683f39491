"""The shared skeleton of synchronous data parallelism with a replicated model (all-reduce, BytePS,
Herring): every worker holds the model and runs the optimizer on the summed gradient; the systems
differ only in how the gradients are summed. They change time, not math: the update is the mean of
the n gradients, applied once per step, exactly as BSP does.

Two drivers, one per kind of barrier between steps:
- lockstep (all-reduce, Herring, BytePS's default): step t+1 begins once every worker holds every summed
  gradient of step t (the optimizer step waits for all of them, as Horovod, DDP and BytePS's plain
  DistributedOptimizer do), and once the slowest backward has ended.
- cross-barrier (BytePS with policy.cross_barrier, its CrossBarrier optimizer / MXNet's engine, after
  ByteScheduler): no global barrier. Each machine runs its own steps; its GPUs start the forward of
  layer l in step t+1 once their backward of step t is over, layer l-1's forward is done and layer
  l's own update has arrived on the machine (`gated_forward`). So updates of the layers nearer the
  input, sent first, let the next forward start while the rest still travels: the overlap that gives
  priority scheduling its worth. The update of step t is still applied once, when every machine has
  it, and before any gradient of step t+1 is taken (the math is BSP's).

The overlap loss (policy.overlap_loss = eta, lockstep only): part of the communication that overlaps the
backward pass is not really hidden (`overlap_delay` states the rule).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from itertools import count

import simpy

from pssim.cluster.worker import StepRecord
from pssim.comm.gates import wait_until
from pssim.comm.summation import SummationService
from pssim.config import PolicyConfig, require
from pssim.network.errors import NetworkError, NoRoute
from pssim.policies.base import Policy, WorkerCrash, mean_gradient


def forward_shares(profile) -> tuple[float, list[float]]:
    """(the forward's share of a step, each layer's share), in the profile's timing model: forward is a
    third of the step, split over the layers by MACs (`Profile.backward_ready` gives backward the rest)."""
    total = profile.macs
    if not total:
        return 0.0, [0.0] * len(profile.layers)
    return 1 / 3, [layer.macs / (3 * total) for layer in profile.layers]


def _ready_on_all(backward: dict[int, float], durations: dict[int, float], forward: float, fraction: float) -> float:
    """When every GPU of `backward` (GPU -> when its backward began) holds the gradients ready
    `fraction` into its step (`Profile.backward_ready`: the forward's share comes first)."""
    return max(start + durations[i] * (fraction - forward) for i, start in backward.items())


def gated_forward(free: float, duration: float, shares: list[float], gates) -> float:
    """When a GPU's forward ends (its backward starts): it begins once the GPU is `free` (its previous
    backward ended) and layer l's forward, `duration` x shares[l] long, starts once layer l-1's is done
    and layer l's parameters are updated (gates[l]; None: no gate, the first step)."""
    t = free
    for layer, share in enumerate(shares):
        if gates is not None:
            t = max(t, gates[layer])
        t += duration * share
    return t


def overlap_delay(eta: float, comm_start: float, backward_end: float, comm_end: float, nic_busy: float) -> float:
    """How long a lockstep step's end waits beyond max(comm_end, backward_end), for an overlap loss eta:

        eta x min(W, nic_busy),   W = max(0, min(backward_end, comm_end) - comm_start)

    W is how long the step's communication and its backward pass ran together (from the step's first
    communication to the end of the slowest backward pass, or of the communication if that is sooner);
    nic_busy is the busiest GPU machine's NIC time in the step: the most bytes one direction of one such
    NIC link carried in the step, over that link's healthy rate (`Link.nominal_capacity`). min(W,
    nic_busy) bounds the NIC time that overlapped the backward pass, and equals it when all of the NIC's
    bytes crossed inside the window or the NIC was busy at its rate throughout it. (Bytes at the rate,
    not the seconds a link held some flow: the loss measured on the cloud is per byte, docs/VALIDATION.md,
    and a trickle waiting on the slowest server is not traffic that competes with compute.) So eta is
    the share of the overlapped network communication that stays on the critical path; equivalently the
    backward pass runs at 1 / (1 + gamma) of its speed while the network is busy, eta = gamma / (1 +
    gamma). Communication inside a machine (NVLink, PCIe) does not count.
    """
    window = max(0.0, min(backward_end, comm_end) - comm_start)
    return eta * min(window, nic_busy)


@dataclass
class StepBarrier:
    """Cross-barrier: which machines hold step t's update (`ends`: machine -> when); `done` fires once all do."""

    done: simpy.Event
    ends: dict[int, float] = field(default_factory=dict)


@dataclass
class ReplicatedConfig(PolicyConfig):
    """Keys shared by the replicated-model policies; each of them subclasses it."""

    # Overlap loss eta in [0, 1]: the share of the network communication that overlaps the backward pass
    # but is not really hidden (`overlap_delay`: the step ends eta x the overlapped NIC time later). Its
    # causes are outside the model (gradient order and Horovod's per-tensor negotiation, kernel TCP's CPU
    # cost in a VM, communication kernels slowing compute); 0: overlap is free, as in the step loop alone.
    overlap_loss: float = 0.0

    def check(self, config) -> None:
        require(config.cluster.gpus_per_worker == 1, "cluster.gpus_per_worker", config.cluster.gpus_per_worker,
                f"must be 1 for policy {self.name}: its workers are one GPU each")
        require(0 <= self.overlap_loss <= 1, "policy.overlap_loss", self.overlap_loss, "must be in [0, 1]")
        require(self.overlap_loss == 0 or not getattr(self, "cross_barrier", False), "policy.overlap_loss",
                self.overlap_loss, "must be 0 with policy.cross_barrier (only the lockstep driver models it)")


class ReplicatedDataParallel(Policy):
    """One process drives the cluster, step after step (module docstring: lockstep or cross-barrier).

    Lockstep: each step every worker draws its compute time d_i; the gradient of profile layer L is
    ready on worker i at start + d_i * ready(L) (backward runs in reverse layer order), so communication
    of early-ready gradients overlaps the rest of the backward pass. `communicate` (the system's own
    algorithm) returns when every worker holds the summed gradient; then the optimizer step.

    Cross-barrier (`cross_barrier` True): the policy's `machine_step` is one machine's communication of
    one step; each machine loops over steps on its own (`_machine_loop`), and this process applies each
    step's update once every machine has it.
    """

    Config = ReplicatedConfig
    uses_servers = False
    ignores = ("cluster.servers",)
    cross_barrier = False  # a policy sets it (an instance attribute) to drop the barrier between steps

    def __init__(self, ctx):
        super().__init__(ctx)
        self.gradients_per_update = self.n
        self.network = ctx.network
        self.layout = ctx.cluster.layout
        self.profile = ctx.workload.profile
        self.lockstep = True
        self.attempt = 0  # bumped whenever steps (re)start: a key of a policy's messages, so an abandoned
        # attempt's sums never mix with the next one's
        self._all_up = self.env.event()
        self.machines = [[self.workers[i].host for i in self.layout.local_workers(m)]
                         for m in range(len(self.layout.machines))]
        self.overlap_loss = self.cfg.overlap_loss
        # Both directions of every GPU machine's NIC link (the links its NIC transport builds).
        gpu_machines, nic = set(self.layout.machines), ctx.cluster.nic
        self._nic_links = [l for l in self.network.topology.links
                           if l.transport is nic and (l.src in gpu_machines or l.dst in gpu_machines)]

    def start(self) -> None:
        self.processes = [self.env.process(self._guarded(self.run(), None))]  # one process drives every worker

    def run(self):
        yield from (self._run_cross_barrier() if self.cross_barrier else self._run_lockstep())

    def _run_lockstep(self):
        model = self.ctx.model
        params = model.params if model is not None else None
        for step in count():
            while True:  # a fault abandons the step; it starts again from its beginning once recovered
                self.attempt += 1
                start = self.env.now
                records = [w.begin_step(step, version=step) for w in self.workers]
                durations = [w.step_duration() for w in self.workers]
                for rec, d in zip(records, durations):
                    rec.compute_end = start + d
                before = {w.host: self.network.sent[w.host] for w in self.workers}
                received = {w.host: self.network.received[w.host] for w in self.workers}
                busy = self._nic_busy() if self.overlap_loss else None
                try:
                    yield from self.communicate(start, durations, records)
                    comm_end = self.env.now
                    yield from wait_until(self.env, start + max(durations))  # nothing left to send, backward still running
                    if self.overlap_loss:
                        yield from self._overlap_loss(records, start + max(durations), comm_end, busy)
                    break
                except (simpy.Interrupt, NetworkError) as err:
                    fault, no_route = self._fault_of(err)
                if fault is not None:  # the abandoned attempt's bytes delivered so far are sent again
                    fault.bytes_resent += sum(self.network.sent[w.host] - before[w.host] for w in self.workers)
                yield from self._recover(start, fault, no_route)
            if model is not None:
                model.step(mean_gradient(self.gradients(params, step)))
            for w, rec in zip(self.workers, records):
                rec.bytes_sent = int(self.network.sent[w.host] - before[w.host])
                rec.bytes_received = int(self.network.received[w.host] - received[w.host])
                w.finish_step()
            self.ctx.progress.advance(step + 1)

    def gradients(self, params, step: int) -> list:
        """Every worker's gradient of batch `step` at `params`, in worker order (one batched call)."""
        return self.ctx.workload.gradients(params, [(w.index, step) for w in self.workers])

    def _nic_busy(self) -> list[float]:
        """Seconds each direction of every GPU machine's NIC link (`_nic_links`) needed at its healthy rate
        for the bytes it carried so far (a link down or degraded by a fault keeps its nominal rate here)."""
        carried = self.network.link_bytes
        return [carried.get(link, 0.0) / link.nominal_capacity for link in self._nic_links]

    def _overlap_loss(self, records, backward_end: float, comm_end: float, busy_before: list[float]):
        """Hold the step's end for the overlap loss (`overlap_delay`), once its communication and its
        slowest backward pass are over; every flow of the step has ended, so the links' bytes are final."""
        starts = [r.comm_start for r in records if not math.isnan(r.comm_start)]
        if not starts:
            return
        nic_busy = max((after - before for after, before in zip(self._nic_busy(), busy_before)), default=0.0)
        delay = overlap_delay(self.overlap_loss, min(starts), backward_end, comm_end, nic_busy)
        if delay > 0:
            yield self.env.timeout(delay)

    # -- cross-barrier -------------------------------------------------------------------------------
    def _run_cross_barrier(self):
        """Every machine runs its steps (`_machine_loop`); step t's update is applied once all machines
        hold it. A fault abandons the steps in progress; they start again from the first step whose
        update is not yet applied, on every machine at once (no gates: a fresh start)."""
        model = self.ctx.model
        params = model.params if model is not None else None
        step, last = 0, self.env.now  # the first step not yet applied, and when the one before it was
        while True:
            self.attempt += 1
            self._barriers: dict[int, StepBarrier] = {}
            self._records: dict[int, dict[int, StepRecord]] = {}  # step -> worker -> its record
            before = {w.host: self.network.sent[w.host] for w in self.workers}
            received = {w.host: self.network.received[w.host] for w in self.workers}
            loops = [self.env.process(self._machine_loop(m, step)) for m in range(len(self.machines))]
            try:
                while True:
                    yield self.env.any_of([self._barrier(step).done, *loops])  # a loop only ends by failing
                    if model is not None:
                        model.step(mean_gradient(self.gradients(params, step)))
                    ends = self._barriers.pop(step).ends
                    for w in self.workers:
                        rec = self._records[step].pop(w.index)
                        rec.bytes_sent = int(self.network.sent[w.host] - before[w.host])
                        rec.bytes_received = int(self.network.received[w.host] - received[w.host])
                        before[w.host], received[w.host] = self.network.sent[w.host], self.network.received[w.host]
                        w.current = rec
                        w.finish_step()
                        rec.comm_end = ends[self.layout.machine_of(w.index)]  # its machine holds the update
                    del self._records[step]
                    step, last = step + 1, self.env.now
                    self.ctx.progress.advance(step)
            except (simpy.Interrupt, NetworkError) as err:
                fault, no_route = self._fault_of(err)
            for loop in loops:  # their messages in flight are left to finish on the network
                if loop.is_alive:
                    loop.interrupt()
            if fault is not None:
                fault.bytes_resent += sum(self.network.sent[w.host] - before[w.host] for w in self.workers)
            yield from self._recover(last, fault, no_route)

    def _machine_loop(self, m: int, first: int):
        """Machine m's steps from `first` on: each GPU's forward gated layer by layer on the machine's
        updates of the step before (`gated_forward`), its backward right after; `machine_step` sums the
        gradients and returns when each layer's update arrived here."""
        local = self.layout.local_workers(m)
        free = dict.fromkeys(local, self.env.now)  # when each GPU's previous backward ended
        gates = None
        forward, shares = forward_shares(self.profile)
        try:
            for step in count(first):
                durations = {i: self.workers[i].step_duration() for i in local}
                backward = {i: gated_forward(free[i], durations[i], shares, gates) for i in local}
                records = self._records.setdefault(step, {})
                for i in local:
                    first_layer = free[i] if gates is None else max(free[i], gates[0])
                    free[i] = backward[i] + durations[i] * (1 - forward)
                    records[i] = StepRecord(i, step, step, compute_start=first_layer, compute_end=free[i])
                ready = partial(_ready_on_all, backward, durations, forward)
                gates = yield from self.machine_step(m, step, ready, records)
                barrier = self._barrier(step)
                barrier.ends[m] = self.env.now
                if len(barrier.ends) == len(self.machines):
                    barrier.done.succeed()
        except simpy.Interrupt:
            return  # the attempt was abandoned

    def _barrier(self, step: int) -> StepBarrier:
        if step not in self._barriers:
            self._barriers[step] = StepBarrier(self.env.event())
        return self._barriers[step]

    def machine_step(self, m: int, step: int, ready, records):
        """Cross-barrier policies: machine m's communication of one step, a SimPy generator. `ready(f)`
        is when the machine's GPUs all hold the gradients ready a fraction f into their step
        (`Profile.backward_ready`); `records` maps its workers to their step records. Returns, per
        profile layer, when that layer's update is in place on the machine's GPUs."""
        raise NotImplementedError

    def _fault_of(self, err: Exception):
        """What abandoned an attempt: (the fault's record, whether no route is left), for a worker crash
        (an interrupt) or a network failure under a fault model; anything else is re-raised. A LinkDown
        starts the steps again at once (the network routes around the dead link if it can); a NoRoute
        waits for a link to come back first (`_recover`)."""
        if isinstance(err, simpy.Interrupt) and isinstance(err.cause, WorkerCrash):
            return err.cause.fault, False
        if isinstance(err, NetworkError) and self.recovery is not None:
            return self.recovery.link_fault_for(err), isinstance(err, NoRoute)
        raise err

    def _recover(self, start: float, fault, no_route: bool):
        """Wait until every worker is up and (after a link failure) a link came back, then charge the
        partial step plus the wait to the fault. Another crash while waiting only extends the wait."""
        link, waited_from = no_route, self.env.now
        if fault is not None:
            fault.time_lost_s += waited_from - start  # the partial step
        while True:
            try:
                if link and self.recovery.down_links:
                    yield self.recovery.link_restored()
                    link = False
                if self.down:
                    yield self._all_up
                break
            except simpy.Interrupt as interrupt:
                if not isinstance(interrupt.cause, WorkerCrash):
                    raise
        if fault is not None:
            fault.time_lost_s += self.env.now - waited_from  # the wait for the restart (or the route)

    def crash_worker(self, index: int, fault=None) -> None:
        """A member crashed: the lockstep process abandons the step (`_recover` waits for the restart)."""
        if not self.down:
            self._all_up = self.env.event()
        self.down.add(index)
        self.interrupt(0, WorkerCrash(index, fault))

    def restart_worker(self, index: int) -> None:
        self.down.discard(index)
        self.restarted.add(index)
        if not self.down and not self._all_up.triggered:
            self._all_up.succeed()

    def waiting_for(self) -> str:
        step = self.ctx.progress.global_step
        if self.down:
            return (f"the lockstep step {step} waits for worker(s) {', '.join(map(str, sorted(self.down)))} "
                    "to restart")
        return f"the lockstep step {step} waits for a route between its members"

    def summation_services(self, hosts: list[str], tag: str, threads: int | None = None, message_s: float = 0.0,
                           carriers=None, names=None) -> list[SummationService]:
        """One summation service per entry of `hosts` (a host may run several: give them `names`), each
        with `threads` threads (None: cluster.server_cores) and `message_s` of CPU per message handled;
        its messages go over carriers[j] (None: each message its own flow). Their CPUs are in the trace."""
        c = self.ctx.config.cluster
        threads = c.server_cores if threads is None else threads
        carriers = carriers or [None] * len(hosts)
        names = names or hosts
        services = [SummationService(self.env, self.network, host, threads, c.aggregation_ns_per_byte * 1e-9,
                                     self.ctx.cluster.nic.cpu_s_per_byte, tag, message_s, carrier, name)
                    for host, carrier, name in zip(hosts, carriers, names)]
        self.ctx.recorder.add_cpus(s.cpu for s in services)
        return services

    def ready_time(self, start: float, durations: list[float], workers, fraction: float) -> float:
        """When the given workers all hold a gradient that is ready `fraction` into their step."""
        return start + max(durations[i] * fraction for i in workers)

    def mark_comm_start(self, records, workers) -> None:
        for i in workers:
            if math.isnan(records[i].comm_start):  # the step's first communication
                records[i].comm_start = self.env.now

    def communicate(self, start: float, durations: list[float], records):
        """Sum every gradient across the workers; a SimPy generator, returns when all hold the sum."""
        raise NotImplementedError
