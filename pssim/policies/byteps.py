"""BytePS (Jiang et al., OSDI'20) as its code runs it (bytedance/byteps, byteps/common/*.cc)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import simpy

from pssim.comm.collectives import all_gather, reduce_scatter
from pssim.comm.connections import Connections
from pssim.comm.gates import wait_until
from pssim.comm.host_copy import copy_from_host, copy_to_host
from pssim.comm.queues import ScheduledQueue
from pssim.config import one_of, require
from pssim.policies.base import register
from pssim.policies.replicated import ReplicatedConfig, ReplicatedDataParallel

PLACEMENTS = ("hash", "mixed")
MASK64 = (1 << 64) - 1


@dataclass
class BytePSConfig(ReplicatedConfig):
    name: str = "byteps"
    # Tensors are cut into partitions of this many bytes, one key each (BYTEPS_PARTITION_BYTES).
    partition_bytes: int = 4_096_000
    # BYTEPS_SCHEDULING_CREDIT, in partitions. null or 0 (the code's default): no scheduling, every
    # queue first in, first out. c >= 1: the local reduce queue is sorted by priority (layers nearer
    # the input first) and at most c partitions' bytes are being reduced at once.
    credit: int | None = None
    # Where keys live: hash (djb2 of the key over the server instances, BYTEPS_KEY_HASH_FN's default)
    # or mixed (the paper's optimal split over CPU and GPU machines, BYTEPS_ENABLE_MIXED_MODE).
    placement: str = "hash"
    # Server processes per server machine, each with its own keys and its own connection to every
    # worker machine (the docs advise 2 on TCP >= 25 Gb/s: one TCP stream cannot fill the link).
    server_instances: int = 1
    # Engine threads of each server instance (BYTEPS_SERVER_ENGINE_THREAD); null: cluster.server_cores.
    server_threads: int | None = None
    # Drop the barrier between steps (BytePS's CrossBarrier optimizer): the next forward of layer l
    # waits only for layer l's update on its own machine.
    cross_barrier: bool = False

    def check(self, config) -> None:
        super().check(config)
        require(self.partition_bytes >= 1, "policy.partition_bytes", self.partition_bytes, "must be >= 1")
        require(self.credit is None or self.credit >= 0, "policy.credit", self.credit,
                "must be >= 0 partitions (null or 0: no scheduling, the default)")
        one_of("policy.placement", self.placement, PLACEMENTS)
        require(self.server_instances >= 1, "policy.server_instances", self.server_instances, "must be >= 1")
        require(self.server_threads is None or self.server_threads >= 1, "policy.server_threads",
                self.server_threads, "must be >= 1 (or null: cluster.server_cores)")
        if self.placement == "mixed":
            n = config.cluster.gpus // config.cluster.gpus_per_machine
            require(config.cluster.cpu_machines <= n, "cluster.cpu_machines", config.cluster.cpu_machines,
                    f"must be <= the {n} GPU machines under policy.placement=mixed (the optimal split needs k <= n)")


@dataclass(frozen=True)
class Partition:
    layer: int
    index: int  # within its layer
    nbytes: float
    key: int  # BytePS's key: (declared tensor << 16) + partition; tensors declared in profile order
    server: int  # index of its server instance

    @property
    def name(self) -> str:
        """"L<layer>.<index>": how its messages are tagged ("byteps-push L3.0", "local-reduce L3.0", ...)."""
        return f"L{self.layer}.{self.index}"


def djb2(key: int) -> int:
    """BytePS's Hash_DJB2: over the key's decimal digits, h = 33 h + c from 5381, in 64 bits."""
    h = 5381
    for c in str(key).encode():
        h = (h * 33 + c) & MASK64
    return h


def partitions_of(layer_bytes: list[float], partition_bytes: float) -> list[tuple[int, int, float, int]]:
    """(layer, index, bytes, key) of every partition: each tensor cut into pieces of partition_bytes,
    the last one smaller (BytePS's PartitionTensor)."""
    out = []
    for layer, size in enumerate(layer_bytes):
        pieces = max(1, math.ceil(size / partition_bytes))
        for index in range(pieces):
            out.append((layer, index, min(partition_bytes, size - index * partition_bytes), (layer << 16) + index))
    return out


def hash_placement(layer_bytes: list[float], partition_bytes: float, servers: int) -> list[Partition]:
    """Every partition on server djb2(key) mod servers (BytePS's default EncodeDefaultKey)."""
    return [Partition(layer, index, nbytes, key, djb2(key) % servers)
            for layer, index, nbytes, key in partitions_of(layer_bytes, partition_bytes)]


def optimal_shares(n: int, k: int) -> tuple[float, float]:
    """Section 4.1's optimal split: the fractions of M placed on each CPU and on each GPU machine.

    M_cpu = 2(n-1)M / (n^2 + kn - 2k), M_gpu = (n-k)M / (n^2 + kn - 2k); k*M_cpu + n*M_gpu = M.
    """
    denominator = n * n + k * n - 2 * k
    return 2 * (n - 1) / denominator, (n - k) / denominator


def place_partitions(layer_bytes: list[float], partition_bytes: float, n: int, k: int,
                     instances: int = 1) -> list[Partition]:
    """Mixed mode: cut every tensor into partitions and place each on the machine furthest below its
    optimal share, round robin over that machine's `instances` server instances.

    Machines 0..k-1 are the CPU machines, k..k+n-1 the GPU machines; instance i of machine j is server
    j * instances + i. With one GPU machine (n=1) everything is on its own summation service.
    """
    cpu_share, gpu_share = optimal_shares(n, k) if n > 1 else (0.0, 1.0)
    target = [cpu_share] * k + [gpu_share] * n
    placed, counts = [0.0] * (k + n), [0] * (k + n)
    total = sum(layer_bytes)
    partitions = []
    for layer, index, nbytes, key in partitions_of(layer_bytes, partition_bytes):
        machine = min((s for s in range(k + n) if target[s] > 0),
                      key=lambda s: ((placed[s] + nbytes) / (target[s] * total), s))
        placed[machine] += nbytes
        partitions.append(Partition(layer, index, nbytes, key, machine * instances + counts[machine] % instances))
        counts[machine] += 1
    return partitions


class _Failed:
    """A partition whose sum failed in the network: the pull stage raises its error."""

    def __init__(self, error: Exception):
        self.error = error


@register("byteps")
class BytePS(ReplicatedDataParallel):
    """Every GPU machine runs a communication service; summation services (CPU only: they add, the
    optimizer runs on the GPUs) run on the server machines. A step on one machine is BytePS's pipeline
    of queues (byteps/common/core_loops.cc), each partition of policy.partition_bytes passing them in turn:

    REDUCE    once a tensor's gradient is ready on all the machine's GPUs, its partitions are queued;
              one at a time they are reduce-scattered over the intra-node links (NCCL). With a credit
              (policy.credit) this queue is sorted by priority (layers nearer the input first) and at
              most credit x partition_bytes are being reduced at once; without one (the default) it is
              first in, first out, like every other queue.
    COPYD2H   each GPU copies its reduced slice to host memory over its PCIe link.
    PUSH      the partition goes to its server instance over the machine's connection to it (one TCP
              connection per worker machine and instance, one message at a time, single-stream cap).
    (server)  the instance adds each push as it lands (policy.server_threads threads); once all n
              machines' pushes are in, it returns the sum to each machine over its connection back.
    COPYH2D   as each sum lands, each GPU copies its slice back over PCIe,
    BROADCAST and the slices are all-gathered over the intra-node links: the layer is updated once all
              its partitions are.

    Servers: policy.server_instances per server machine; the server machines are the
    cluster.cpu_machines when there are any, else the GPU machines (colocated). Keys go to instances by
    djb2 hash (policy.placement=hash) or by the paper's optimal split over CPU and GPU machines
    (mixed). One GPU machine is BytePS's non-distributed mode: reduce and broadcast only.
    """

    Config = BytePSConfig

    def __init__(self, ctx):
        super().__init__(ctx)
        cfg = self.cfg
        n, k = len(self.layout.machines), len(self.layout.cpu_machines)
        self.hosts = list(self.layout.machines)
        self.distributed = n > 1
        self.cross_barrier = cfg.cross_barrier
        self.credit_bytes = cfg.credit * cfg.partition_bytes if cfg.credit else None
        layer_bytes = [l.nbytes for l in self.profile.layers]
        instances = cfg.server_instances
        if cfg.placement == "mixed":
            machines = [*self.layout.cpu_machines, *self.hosts]
            self.partitions = place_partitions(layer_bytes, cfg.partition_bytes, n, k, instances)
        else:
            machines = list(self.layout.cpu_machines) or self.hosts
            self.partitions = hash_placement(layer_bytes, cfg.partition_bytes, len(machines) * instances)
        self.server_hosts = [host for host in machines for _ in range(instances)]
        names = [f"{host}#{i}" if instances > 1 else host for host in machines for i in range(instances)]
        self.services = []  # non-distributed mode (one GPU machine) runs no servers
        if self.distributed:  # each instance has its own connections to every worker machine
            carriers = [Connections(self.env, self.network) for _ in self.server_hosts]
            self.services = self.summation_services(self.server_hosts, "byteps", cfg.server_threads,
                                                    carriers=carriers, names=names)
        self.by_layer = [[p for p in self.partitions if p.layer == i] for i in range(len(self.profile.layers))]
        self.partitions_by_name = {p.name: p for p in self.partitions}

    def communicate(self, start, durations, records):
        """Lockstep: every machine's step, its gradients ready as the shared skeleton says."""
        step = records[0].step
        machines = [self.env.process(self.machine_step(
            m, step, lambda f, local=self.layout.local_workers(m): self.ready_time(start, durations, local, f),
            records)) for m in range(len(self.hosts))]
        yield self.env.all_of(machines)

    def machine_step(self, m, step, ready, records):
        """Machine m's pipeline for one step (the class docstring); returns each layer's update time."""
        env = self.env
        reduce = ScheduledQueue(env, self.credit_bytes)
        copy, pull, broadcast = simpy.Store(env), simpy.Store(env), simpy.Store(env)
        updated = [math.nan] * len(self.by_layer)
        stages = [self._gradients_ready(m, ready, records, reduce), self._reduce(m, reduce, copy),
                  self._copy_and_push(m, (self.attempt, step), copy, pull, broadcast), self._pull(m, pull, broadcast),
                  self._broadcast(m, broadcast, updated)]
        yield env.all_of([env.process(stage) for stage in stages])
        return updated

    def _gradients_ready(self, m, ready, records, reduce: ScheduledQueue):
        """In backward order, as each layer's gradient is ready on all the machine's GPUs, queue its
        partitions for the local reduce (priority: layer, then partition)."""
        for layer, fraction in self.profile.backward_ready():
            yield from wait_until(self.env, ready(fraction))
            self.mark_comm_start(records, self.layout.local_workers(m))
            for p in self.by_layer[layer]:
                reduce.put(p, (p.layer, p.index), p.nbytes)

    def _reduce(self, m, queue: ScheduledQueue, out: simpy.Store):
        """REDUCE: partitions are launched as the queue (and its credit) allows and reduce-scattered one
        after another over the intra-node links (one NCCL stream); a partition's credit comes back when
        its reduce is done."""
        launched = simpy.Store(self.env)

        def launch():
            for _ in self.partitions:
                launched.put((yield from queue.get()))

        self.env.process(launch())
        for _ in self.partitions:
            p = yield launched.get()
            yield from reduce_scatter(self.env, self.network, self.machines[m], p.nbytes, f"local-reduce {p.name}")
            queue.finish(p.nbytes)
            out.put(p)

    def _copy_and_push(self, m, step, queue: simpy.Store, pulled: simpy.Store, broadcast: simpy.Store):
        """COPYD2H then PUSH, first in first out: the push is queued on the connection to the partition's
        server instance; its sum, when it lands back here, joins the pull queue. `step` is (attempt,
        step): an abandoned attempt's pushes are summed apart."""
        host = self.hosts[m]
        for _ in self.partitions:
            p = yield queue.get()
            if not self.distributed:  # non-distributed mode: no copies, no servers
                broadcast.put(p)
                continue
            yield from copy_to_host(self.env, self.network, self.machines[m], host, p.nbytes, f"to-host {p.name}")
            summed = self.services[p.server].push(host, (*step, p.key), p.nbytes, self.hosts,
                                                  f"byteps-push {p.name}")
            summed.callbacks.append(lambda event, p=p: pulled.put(p if event.ok else _Failed(event.value)))
            summed.defused = True  # a failure travels to the pull stage

    def _pull(self, m, queue: simpy.Store, out: simpy.Store):
        """COPYH2D: each summed partition, in the order the sums land, copied back to the GPUs."""
        if not self.distributed:
            return
        for _ in self.partitions:
            p = yield queue.get()
            if isinstance(p, _Failed):
                raise p.error
            yield from copy_from_host(self.env, self.network, self.machines[m], self.hosts[m], p.nbytes,
                                      f"from-host {p.name}")
            out.put(p)

    def _broadcast(self, m, queue: simpy.Store, updated: list[float]):
        """BROADCAST: all-gather each partition over the intra-node links; a layer is updated once all
        its partitions are."""
        left = [len(parts) for parts in self.by_layer]
        for _ in self.partitions:
            p = yield queue.get()
            yield from all_gather(self.env, self.network, self.machines[m], p.nbytes, f"local-broadcast {p.name}")
            left[p.layer] -= 1
            if not left[p.layer]:
                updated[p.layer] = self.env.now
