"""BytePS (Jiang et al., OSDI'20): a summation service on every CPU and GPU machine."""

from __future__ import annotations

import math
from dataclasses import dataclass

from pssim.comm.collectives import broadcast_from_host, reduce_to_host
from pssim.comm.gates import wait_until
from pssim.comm.queues import PriorityWindow
from pssim.config import require
from pssim.policies.base import register
from pssim.policies.replicated import ReplicatedConfig, ReplicatedDataParallel


@dataclass
class BytePSConfig(ReplicatedConfig):
    name: str = "byteps"
    # Tensors are cut into partitions of this many bytes, one key each (BYTEPS_PARTITION_BYTES).
    partition_bytes: int = 4_096_000
    # At most credit partitions of push bytes in flight per machine.
    credit: int = 4

    def check(self, config) -> None:
        super().check(config)
        require(self.partition_bytes >= 1, "policy.partition_bytes", self.partition_bytes, "must be >= 1")
        require(self.credit >= 1, "policy.credit", self.credit, "must be >= 1")


@dataclass(frozen=True)
class Partition:
    layer: int
    index: int  # within its layer
    nbytes: float
    server: int


def optimal_shares(n: int, k: int) -> tuple[float, float]:
    """Section 4.1's optimal split: the fractions of M placed on each CPU and on each GPU machine.

    M_cpu = 2(n-1)M / (n^2 + kn - 2k), M_gpu = (n-k)M / (n^2 + kn - 2k); k*M_cpu + n*M_gpu = M.
    """
    denominator = n * n + k * n - 2 * k
    return 2 * (n - 1) / denominator, (n - k) / denominator


def place_partitions(layer_bytes: list[float], partition_bytes: float, n: int, k: int) -> list[Partition]:
    """Cut every tensor into partitions and place each on the server furthest below its optimal share.

    Servers 0..k-1 are the CPU machines, k..k+n-1 the GPU machines. With one GPU machine (n=1) the
    gradient never leaves the machine: everything is placed on its own summation service.
    """
    cpu_share, gpu_share = optimal_shares(n, k) if n > 1 else (0.0, 1.0)
    target = [cpu_share] * k + [gpu_share] * n
    placed = [0.0] * (k + n)
    total = sum(layer_bytes)
    partitions = []
    for layer, size in enumerate(layer_bytes):
        pieces = max(1, math.ceil(size / partition_bytes))
        for index in range(pieces):
            nbytes = min(partition_bytes, size - index * partition_bytes)
            server = min((s for s in range(k + n) if target[s] > 0),
                         key=lambda s: ((placed[s] + nbytes) / (target[s] * total), s))
            placed[server] += nbytes
            partitions.append(Partition(layer, index, nbytes, server))
    return partitions


@register("byteps")
class BytePS(ReplicatedDataParallel):
    """Every GPU machine runs a communication service, every CPU and GPU machine a summation service
    (CPU only: it adds; the optimizer runs on the GPUs).

    One step: as each tensor's gradient is ready on all of a machine's GPUs, they reduce it inside the
    machine (NVLink/PCIe) into host memory. The tensor is cut into partitions of policy.partition_bytes,
    each a key on one summation service placed by the paper's optimal split. A machine pushes its
    partitions in priority order (layers nearer the input first), with at most policy.credit partitions
    of push bytes in flight. A service (server_cores cores) adds each push into the partition's sum as
    it lands; once all n machines' pushes are in, every machine pulls the SUMMED partition; when all of
    a tensor's partitions are back, it is copied to the GPUs.
    k CPU machines = cluster.cpu_machines; k=0 moves all-reduce's traffic, k=n a non-colocated PS's.
    """

    Config = BytePSConfig

    def __init__(self, ctx):
        super().__init__(ctx)
        n, k = len(self.layout.machines), len(self.layout.cpu_machines)
        self.hosts = list(self.layout.machines)
        self.services = self.summation_services([*self.layout.cpu_machines, *self.hosts], "byteps")
        self.partitions = place_partitions([l.nbytes for l in self.profile.layers],
                                           self.cfg.partition_bytes, n, k)
        self.by_layer = [[p for p in self.partitions if p.layer == i] for i in range(len(self.profile.layers))]

    def communicate(self, start, durations, records):
        yield self.env.all_of([self.env.process(self._machine(m, start, durations, records))
                               for m in range(len(self.hosts))])

    def _machine(self, m, start, durations, records):
        """One GPU machine's communication service: its local reduces feed a priority queue; the
        partitions leave in priority order under the credit; each layer's sums, once back, go to the GPUs."""
        queue = PriorityWindow(self.env, window=self.cfg.credit)
        reduces = self.env.process(self._local_reduces(m, queue, start, durations, records))
        summed, broadcasts = {}, []
        for _ in self.partitions:
            p = yield from queue.get()  # the layer nearest the input first, once credit allows
            summed[p] = self.services[p.server].push(self.hosts[m], p, p.nbytes, self.hosts,
                                                     f"byteps-push L{p.layer}.{p.index}")
            queue.release_when(summed[p].landed)  # the credit comes back when the push has landed
            layer = self.by_layer[p.layer]
            if p is layer[-1]:  # the layer's last partition is out: wait for its sums, then broadcast
                broadcasts.append(self.env.process(self._pull(m, p.layer, [summed[q] for q in layer])))
        yield self.env.all_of([reduces, *broadcasts])

    def _local_reduces(self, m, queue, start, durations, records):
        """In backward order, as each layer's gradient is ready on all the machine's GPUs: reduce it into
        host memory and queue its partitions by priority (layer, index)."""
        local, host, gpus = self.layout.local_workers(m), self.hosts[m], self.machines[m]
        for layer, ready in self.profile.backward_ready():
            yield from wait_until(self.env, self.ready_time(start, durations, local, ready))
            self.mark_comm_start(records, local)
            yield from reduce_to_host(self.env, self.network, gpus, host, self.profile.layers[layer].nbytes)
            for p in self.by_layer[layer]:
                queue.put((p.layer, p.index), p)

    def _pull(self, m, layer, summed):
        """Once every partition of the layer is summed and back in host memory, copy it to the GPUs."""
        yield self.env.all_of(summed)
        yield from broadcast_from_host(self.env, self.network, self.machines[m], self.hosts[m],
                                       self.profile.layers[layer].nbytes)
