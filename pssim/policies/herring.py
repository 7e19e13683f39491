"""Herring (Thangakrishnan et al., SC'20; the SageMaker data-parallel library)."""

from __future__ import annotations

from dataclasses import dataclass

from pssim.comm.collectives import all_gather, reduce_scatter
from pssim.comm.fusion import Buffer
from pssim.comm.gates import wait_until
from pssim.comm.host_copy import copy_from_host, copy_to_host
from pssim.config import require
from pssim.policies.base import register
from pssim.policies.replicated import ReplicatedConfig, ReplicatedDataParallel


@dataclass
class HerringConfig(ReplicatedConfig):
    name: str = "herring"
    # Bytes of each fusion buffer: 25 MiB, the bucket size of PyTorch DDP, whose API Herring serves
    # (Fairring's slice size too).
    fusion_bytes: int = 25 * 1024 * 1024
    # Threads of each machine's server; null: cluster.server_cores.
    server_threads: int | None = None
    # Server CPU time to handle one message (a shard received, a sum sent back): the messaging stack and
    # bookkeeping, whatever its size. A buffer costs each server 2N of them on N machines. Fitted on
    # Fairring's 256-GPU row with 8 threads (docs/MODELS.md, Herring): an effective per-shard cost.
    message_us: float = 1500.0

    def check(self, config) -> None:
        super().check(config)
        require(self.fusion_bytes >= 1, "policy.fusion_bytes", self.fusion_bytes, "must be >= 1")
        require(self.server_threads is None or self.server_threads >= 1, "policy.server_threads",
                self.server_threads, "must be >= 1 (or null: cluster.server_cores)")
        require(0 <= self.message_us <= 1e6, "policy.message_us", self.message_us, "must be in [0, 1e6] us")


def balanced_buffers(profile, nbytes: float) -> list[Buffer]:
    """Herring's balanced fusion buffers: the gradients, in backward order, poured into buffers of exactly
    `nbytes` (the last one holds the rest). A gradient larger than the room left continues in the next
    buffer(s), so every buffer but the last is the same size (Fairring cuts a larger tensor into slices
    the same way). A buffer is ready when the last gradient it holds a piece of is."""
    buffers, layers, size = [], [], 0.0
    for index, ready in profile.backward_ready():
        left = float(profile.layers[index].nbytes)
        while left > 0:
            piece = min(left, nbytes - size)
            layers.append(index)
            size += piece
            left -= piece
            if size >= nbytes:
                buffers.append(Buffer(tuple(layers), size, ready))
                layers, size = [], 0.0
    if layers:
        buffers.append(Buffer(tuple(layers), size, 1.0))
    return buffers


@register("herring")
class Herring(ReplicatedDataParallel):
    """Parameter servers on the CPUs of the GPU machines themselves, fed by balanced fusion buffers.

    Gradients fill buffers of policy.fusion_bytes in backward order (`balanced_buffers`; the policy's
    `buffers`: their layers and bytes). Once a machine's GPUs all hold a buffer they reduce-scatter it inside the machine (NVLink)
    and copy their slices to host memory over PCIe; the host cuts the buffer into N equal shards for the
    N servers (one per machine) and sends shard i to server i. Server i (policy.server_threads threads)
    adds each shard as it lands, then returns the sum to every machine; each message it handles costs
    policy.message_us of CPU besides the bytes' summation and transport costs, so with many machines and
    small shards the servers, not the links, set the pace. Each machine copies the sum back to its GPUs
    (PCIe) and all-gathers it (NVLink). Buffers go as soon as they are ready, overlapping the rest of
    the backward pass and each other; with EFA the messages spray over every path (network.multipath).
    Per machine, each direction carries 2(N-1)M/N bytes (the ring's volume) in 2 hops instead of the
    ring's 2(N-1).
    """

    Config = HerringConfig
    ignores = ("cluster.servers", "cluster.cpu_machines")

    def __init__(self, ctx):
        super().__init__(ctx)
        self.buffers = balanced_buffers(self.profile, self.cfg.fusion_bytes)
        self.hosts = list(self.layout.machines)
        self.services = self.summation_services(self.hosts, "herring", self.cfg.server_threads,
                                                self.cfg.message_us * 1e-6)

    def communicate(self, start, durations, records):
        attempt = self.attempt  # a key of this attempt's sums (an abandoned attempt's are summed apart)
        procs = [self.env.process(self.reduce_buffer((attempt, b), start, durations, records))
                 for b in range(len(self.buffers))]
        yield self.env.all_of(procs)

    def reduce_buffer(self, key: tuple[int, int], start, durations, records):
        """Every machine sums buffer key = (attempt, b) with the others, each on its own as soon as its
        GPUs hold it."""
        yield self.env.all_of([self.env.process(self._machine(m, key, start, durations, records))
                               for m in range(len(self.hosts))])

    def _machine(self, m, key, start, durations, records):
        """One machine, one buffer: local reduce -> shard i to server i -> sums back -> broadcast."""
        buffer = self.buffers[key[1]]
        local, host, gpus = self.layout.local_workers(m), self.hosts[m], self.machines[m]
        yield from wait_until(self.env, self.ready_time(start, durations, local, buffer.ready))
        self.mark_comm_start(records, local)
        yield from reduce_scatter(self.env, self.network, gpus, buffer.nbytes, "local-reduce")
        yield from copy_to_host(self.env, self.network, gpus, host, buffer.nbytes)
        shard = buffer.nbytes / len(self.services)
        yield self.env.all_of([server.push(host, key, shard, self.hosts, "herring-push")
                               for server in self.services])
        yield from copy_from_host(self.env, self.network, gpus, host, buffer.nbytes)
        yield from all_gather(self.env, self.network, gpus, buffer.nbytes, "local-broadcast")
