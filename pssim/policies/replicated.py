"""The shared skeleton of synchronous data parallelism with a replicated model (all-reduce, BytePS,
Herring): every worker holds the model and runs the optimizer on the summed gradient; the systems
differ only in how the gradients are summed. They change time, not math: the update is the mean of
the n gradients, applied once per step, exactly as BSP does.
"""

from __future__ import annotations

import math
from itertools import count

from pssim.comm.summation import SummationService
from pssim.policies.base import Policy, mean_gradient


class ReplicatedDataParallel(Policy):
    """One process drives the cluster in lockstep, step after step.

    Each step every worker draws its compute time d_i; the gradient of profile layer L is ready on
    worker i at start + d_i * ready(L) (backward runs in reverse layer order), so communication of
    early-ready gradients overlaps the rest of the backward pass. `communicate` (the system's own
    algorithm) returns when every worker holds the summed gradient; then the optimizer step.
    """

    uses_servers = False

    def __init__(self, sim):
        super().__init__(sim)
        self.gradients_per_update = self.n
        self.network = sim.network
        self.layout = sim.layout
        self.profile = sim.workload.profile
        self.machines = [[sim.workers[i].host for i in self.layout.local_workers(m)]
                         for m in range(len(self.layout.machines))]

    def start(self) -> None:
        self.env.process(self.run())

    def run(self):
        params = self.sim.params
        for step in count():
            start = self.env.now
            records = [w.begin_step(step, version=step) for w in self.sim.workers]
            durations = [w.step_duration() for w in self.sim.workers]
            for rec, d in zip(records, durations):
                rec.compute_end = start + d
            before = {w.host: self.network.sent[w.host] for w in self.sim.workers}
            received = {w.host: self.network.received[w.host] for w in self.sim.workers}
            yield from self.communicate(start, durations, records)
            if self.env.now < start + max(durations):  # nothing left to send, backward still running
                yield self.env.timeout(start + max(durations) - self.env.now)
            self.sim.apply_update(mean_gradient([w.gradient(params, step) for w in self.sim.workers]))
            for w, rec in zip(self.sim.workers, records):
                rec.bytes_sent = int(self.network.sent[w.host] - before[w.host])
                rec.bytes_received = int(self.network.received[w.host] - received[w.host])
                w.finish_step(staleness=0)
            self.sim.progress(step + 1)

    def summation_services(self, hosts: list[str], tag: str) -> list[SummationService]:
        """One summation service per host (cluster.server_cores cores each), its CPU shown in the trace."""
        c = self.sim.config.cluster
        services = [SummationService(self.env, self.network, host, c.server_cores, c.aggregation_ns_per_byte * 1e-9,
                                     self.sim.transport.cpu_s_per_byte, tag) for host in hosts]
        self.sim.cpus += [s.cpu for s in services]
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
