"""Herring (Thangakrishnan et al., SC'20; the SageMaker data-parallel library)."""

from __future__ import annotations

from dataclasses import dataclass

from pssim.comm.collectives import broadcast_from_host, reduce_to_host
from pssim.comm.fusion import fusion_buffers
from pssim.comm.gates import wait_until
from pssim.config import require
from pssim.policies.base import register
from pssim.policies.replicated import ReplicatedConfig, ReplicatedDataParallel


@dataclass
class HerringConfig(ReplicatedConfig):
    name: str = "herring"
    # Fusion buffer threshold: 25 MiB, the bucket size of PyTorch DDP, whose API Herring serves.
    fusion_bytes: int = 25 * 1024 * 1024

    def check(self, config) -> None:
        super().check(config)
        require(self.fusion_bytes >= 1, "policy.fusion_bytes", self.fusion_bytes, "must be >= 1")


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

    Config = HerringConfig
    ignores = ("cluster.servers", "cluster.cpu_machines")

    def __init__(self, ctx):
        super().__init__(ctx)
        self.buffers = fusion_buffers(self.profile, self.cfg.fusion_bytes)
        self.hosts = list(self.layout.machines)
        self.services = self.summation_services(self.hosts, "herring")

    def communicate(self, start, durations, records):
        procs = [self.env.process(self.reduce_buffer(b, start, durations, records)) for b in self.buffers]
        yield self.env.all_of(procs)

    def reduce_buffer(self, buffer, start, durations, records):
        """Every machine sums this buffer with the others, each on its own as soon as its GPUs hold it."""
        yield self.env.all_of([self.env.process(self._machine(m, buffer, start, durations, records))
                               for m in range(len(self.hosts))])

    def _machine(self, m, buffer, start, durations, records):
        """One machine, one buffer: local reduce -> part i to server i -> sums back -> broadcast."""
        local, host, gpus = self.layout.local_workers(m), self.hosts[m], self.machines[m]
        yield from wait_until(self.env, self.ready_time(start, durations, local, buffer.ready))
        self.mark_comm_start(records, local)
        yield from reduce_to_host(self.env, self.network, gpus, host, buffer.nbytes)
        part = buffer.nbytes / len(self.services)
        yield self.env.all_of([server.push(host, buffer, part, self.hosts, "herring-push") for server in self.services])
        yield from broadcast_from_host(self.env, self.network, gpus, host, buffer.nbytes)
