"""The shared skeleton of synchronous data parallelism with a replicated model (all-reduce, BytePS,
Herring): every worker holds the model and runs the optimizer on the summed gradient; the systems
differ only in how the gradients are summed. They change time, not math: the update is the mean of
the n gradients, applied once per step, exactly as BSP does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import count

import simpy

from pssim.comm.gates import wait_until
from pssim.comm.summation import SummationService
from pssim.config import PolicyConfig, require
from pssim.network.errors import NetworkError, NoRoute
from pssim.policies.base import Policy, WorkerCrash, mean_gradient


@dataclass
class ReplicatedConfig(PolicyConfig):
    """Keys shared by the replicated-model policies; each of them subclasses it."""

    def check(self, config) -> None:
        require(config.cluster.gpus_per_worker == 1, "cluster.gpus_per_worker", config.cluster.gpus_per_worker,
                f"must be 1 for policy {self.name}: its workers are one GPU each")


class ReplicatedDataParallel(Policy):
    """One process drives the cluster in lockstep, step after step.

    Each step every worker draws its compute time d_i; the gradient of profile layer L is ready on
    worker i at start + d_i * ready(L) (backward runs in reverse layer order), so communication of
    early-ready gradients overlaps the rest of the backward pass. `communicate` (the system's own
    algorithm) returns when every worker holds the summed gradient; then the optimizer step.
    """

    Config = ReplicatedConfig
    uses_servers = False
    ignores = ("cluster.servers",)

    def __init__(self, ctx):
        super().__init__(ctx)
        self.gradients_per_update = self.n
        self.network = ctx.network
        self.layout = ctx.cluster.layout
        self.profile = ctx.workload.profile
        self.lockstep = True
        self._all_up = self.env.event()
        self.machines = [[self.workers[i].host for i in self.layout.local_workers(m)]
                         for m in range(len(self.layout.machines))]

    def start(self) -> None:
        self.processes = [self.env.process(self._guarded(self.run(), None))]  # one process drives every worker

    def run(self):
        model = self.ctx.model
        params = model.params if model is not None else None
        for step in count():
            while True:  # a fault abandons the step; it starts again from its beginning once recovered
                start = self.env.now
                records = [w.begin_step(step, version=step) for w in self.workers]
                durations = [w.step_duration() for w in self.workers]
                for rec, d in zip(records, durations):
                    rec.compute_end = start + d
                before = {w.host: self.network.sent[w.host] for w in self.workers}
                received = {w.host: self.network.received[w.host] for w in self.workers}
                try:
                    yield from self.communicate(start, durations, records)
                    yield from wait_until(self.env, start + max(durations))  # nothing left to send, backward still running
                    break
                except simpy.Interrupt as interrupt:
                    if not isinstance(interrupt.cause, WorkerCrash):
                        raise
                    fault, no_route = interrupt.cause.fault, False
                except NetworkError as err:
                    if self.recovery is None:
                        raise
                    # LinkDown: start again at once (the network routes around the dead link if it can);
                    # NoRoute: wait for a link to come back first.
                    fault, no_route = self.recovery.link_fault_for(err), isinstance(err, NoRoute)
                if fault is not None:  # the abandoned attempt's bytes delivered so far are sent again
                    fault.bytes_resent += sum(self.network.sent[w.host] - before[w.host] for w in self.workers)
                yield from self._recover(start, fault, no_route)
            if model is not None:
                model.step(mean_gradient([w.gradient(params, step) for w in self.workers]))
            for w, rec in zip(self.workers, records):
                rec.bytes_sent = int(self.network.sent[w.host] - before[w.host])
                rec.bytes_received = int(self.network.received[w.host] - received[w.host])
                w.finish_step()
            self.ctx.progress.advance(step + 1)

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

    def summation_services(self, hosts: list[str], tag: str) -> list[SummationService]:
        """One summation service per host (cluster.server_cores cores each), its CPU shown in the trace."""
        c = self.ctx.config.cluster
        services = [SummationService(self.env, self.network, host, c.server_cores, c.aggregation_ns_per_byte * 1e-9,
                                     self.ctx.cluster.nic.cpu_s_per_byte, tag) for host in hosts]
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
