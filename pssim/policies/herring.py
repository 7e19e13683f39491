"""Herring (Thangakrishnan et al., SC'20; the SageMaker data-parallel library)."""

from __future__ import annotations

from pssim.comm.collectives import broadcast_from_host, reduce_to_host
from pssim.comm.fusion import fusion_buffers
from pssim.comm.server import Cpu
from pssim.policies.base import register
from pssim.policies.replicated import ReplicatedDataParallel


@register("herring")
class Herring(ReplicatedDataParallel):
    """Parameter servers on the CPUs of the GPU machines themselves, fed by balanced fusion buffers.

    Gradients fill a buffer up to policy.fusion_bytes in backward order. Once a machine's GPUs all hold
    a buffer they reduce it inside the machine (NVLink) into host memory; the host cuts it into N equal
    parts for the N servers (one per machine) and sends part i to server i. Server i sums part i over
    all N machines and returns the sum to every machine, which copies it back to its GPUs. Buffers are
    reduced as soon as they are ready, overlapping the rest of the backward pass; with EFA the messages
    spray over every path (network.multipath). Per machine, each direction carries 2(N-1)M/N bytes (the
    ring's volume) in 2 hops instead of the ring's 2(N-1).
    """

    def __init__(self, sim):
        super().__init__(sim)
        self.buffers = fusion_buffers(self.profile, self.cfg.fusion_bytes)
        self.hosts = list(self.layout.machines)
        self.servers = [Cpu(self.env, host, sim.config.cluster.server_cores) for host in self.hosts]
        sim.cpus += self.servers
        self.transport_cpu = sim.transport.cpu_s_per_byte  # per byte received or sent over the network
        self.sum_cpu = sim.config.cluster.aggregation_ns_per_byte * 1e-9

    def communicate(self, start, durations, records):
        procs = [self.env.process(self.reduce_buffer(b, start, durations, records)) for b in self.buffers]
        yield self.env.all_of(procs)

    def reduce_buffer(self, buffer, start, durations, records):
        n = len(self.hosts)
        part = buffer.nbytes / n
        summed = [[self.env.event() for _ in range(n)] for _ in range(n)]  # [machine][server]
        arrived = [0] * n
        procs = [self.env.process(self._machine(m, buffer, part, start, durations, records, arrived, summed))
                 for m in range(n)]
        yield self.env.all_of(procs)

    def _machine(self, m, buffer, part, start, durations, records, arrived, summed):
        local = self.layout.local_workers(m)
        ready = self.ready_time(start, durations, local, buffer.ready)
        if self.env.now < ready:
            yield self.env.timeout(ready - self.env.now)
        self.mark_comm_start(records, local)
        host, gpus = self.hosts[m], self.machines[m]
        yield from reduce_to_host(self.env, self.network, gpus, host, buffer.nbytes)
        for i, server in enumerate(self.hosts):
            self.network.send(host, server, part, "herring-push").callbacks.append(
                lambda _e, i=i: self.env.process(self._receive(i, m, part, arrived, summed)))
        yield self.env.all_of(summed[m])
        yield from broadcast_from_host(self.env, self.network, gpus, host, buffer.nbytes)

    def _receive(self, i, m, part, arrived, summed):
        """Server i adds machine m's part into its sum as it lands; the last one triggers the returns."""
        remote = i != m
        yield from self.servers[i].work(part * (self.sum_cpu + remote * self.transport_cpu), "sum")
        arrived[i] += 1
        if arrived[i] == len(self.hosts):
            for dest in range(len(self.hosts)):
                self.env.process(self._respond(i, dest, part, summed))

    def _respond(self, i, dest, part, summed):
        if dest != i:
            yield from self.servers[i].work(part * self.transport_cpu, "send")
        self.network.send(self.hosts[i], self.hosts[dest], part, "herring-pull").callbacks.append(
            lambda _e: summed[dest][i].succeed())
