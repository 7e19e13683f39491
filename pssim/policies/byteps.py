"""BytePS (Jiang et al., OSDI'20): a summation service on every CPU and GPU machine."""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

from pssim.comm.collectives import broadcast_from_host, reduce_to_host
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
        self.servers = self.summation_services([*self.layout.cpu_machines, *self.layout.machines], "byteps")
        self.partitions = place_partitions([l.nbytes for l in self.profile.layers],
                                           self.cfg.partition_bytes, n, k)
        self.by_layer = [[p for p in self.partitions if p.layer == i] for i in range(len(self.profile.layers))]
        self.ready = dict(self.profile.backward_ready())

    def communicate(self, start, durations, records):
        machines = range(len(self.layout.machines))
        summed = {p: [self.env.event() for _ in machines] for p in self.partitions}
        procs = [self.env.process(self._machine(m, start, durations, records, summed)) for m in machines]
        yield self.env.all_of(procs)

    def _machine(self, m, start, durations, records, summed):
        """Local reduces in backward order feed a priority queue drained under the credit cap."""
        queue: list[tuple[int, int, Partition]] = []
        state = {"wake": self.env.event(), "in_flight": 0}

        def wake():
            if not state["wake"].triggered:
                state["wake"].succeed()

        def landed(_event, p):
            state["in_flight"] -= 1
            machines = list(self.layout.machines)
            self.env.process(self.servers[p.server].add(p, host, p.nbytes, machines, summed[p]))
            wake()

        local, host, gpus = self.layout.local_workers(m), self.layout.machines[m], self.machines[m]

        def local_reduce(layer):
            ready = self.ready_time(start, durations, local, self.ready[layer])
            if self.env.now < ready:
                yield self.env.timeout(ready - self.env.now)
            self.mark_comm_start(records, local)
            yield from reduce_to_host(self.env, self.network, gpus, host, self.profile.layers[layer].nbytes)
            for p in self.by_layer[layer]:
                heapq.heappush(queue, (p.layer, p.index, p))
            wake()

        def local_reduces():
            for layer, _ in self.profile.backward_ready():
                yield from local_reduce(layer)

        def pull_layer(layer):
            yield self.env.all_of([summed[p][m] for p in self.by_layer[layer]])
            yield from broadcast_from_host(self.env, self.network, gpus, host, self.profile.layers[layer].nbytes)

        reducer = self.env.process(local_reduces())
        pulls = [self.env.process(pull_layer(layer)) for layer in range(len(self.profile.layers))]
        for _ in range(len(self.partitions)):
            while not queue or state["in_flight"] >= self.cfg.credit:
                yield state["wake"]
                state["wake"] = self.env.event()
            _, _, p = heapq.heappop(queue)
            state["in_flight"] += 1
            self.network.send(host, self.servers[p.server].host, p.nbytes, "byteps-push").callbacks.append(
                lambda e, p=p: landed(e, p))
        yield self.env.all_of([reducer, *pulls])
