"""Parallax (Kim et al., EuroSys'19): dense variables through all-reduce, sparse variables through
parameter servers that hold only them; and its two baselines, TF-PS and Horovod, as the paper ran them.

policy.architecture picks who carries what (every one synchronous, so the math is BSP's: the mean of the
n gradients applied once a step, exactly as sync and allreduce apply it):

| architecture | dense variables | sparse variables (embedding tables) |
|---|---|---|
| hybrid (Parallax) | Horovod's all-reduce (fusion cycle, NCCL) | partitioned over the servers; each machine first merges its GPUs' rows (local aggregation) |
| ps (TF-PS) | on the servers, a variable per server round robin; every GPU pushes its gradient and pulls the variable | partitioned over the servers; every GPU pushes and pulls its own rows |
| allreduce (Horovod) | all-reduce | all-gathered through host memory (MPI_Allgatherv, as Horovod 0.11 did): every GPU receives every GPU's rows |

A sparse variable is cut into policy.partitions contiguous row ranges (TensorFlow's fixed_size_partitioner),
placed on the servers round robin: a push or pull of a partition carries only the rows of that range a
batch touched (`Workload.touched_rows`: the real batch's distinct rows, or the Zipf law's expectation),
and an empty message where it touched none. The servers are a process on every GPU machine (or the
cluster.cpu_machines, if any): pssim/comm/sparse.py.

policy.search_partitions runs the paper's partition search before the run: short timing-only trial runs
at a few partition counts P, a least-squares fit of t(P) = theta0 + theta1 / P + theta2 (P - 1) to their
step times, and the integer P that minimises the fit (`fit_partition_model`, `best_partitions`).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace

import numpy as np

from pssim.comm.collectives import all_gather, concurrently
from pssim.comm.fusion import fusion_buffers
from pssim.comm.gates import wait_until
from pssim.comm.sparse import PartitionServers
from pssim.config import finite, one_of, require
from pssim.policies.allreduce import AllReduceConfig, RingAllReduce
from pssim.policies.base import register
from pssim.workload.profiles import Profile

ARCHITECTURES = ("hybrid", "ps", "allreduce")


@dataclass
class ParallaxConfig(AllReduceConfig):
    name: str = "parallax"
    # hybrid (Parallax), ps (TF-PS: everything through the servers) or allreduce (Horovod: sparse
    # gradients all-gathered). The NCCL and fusion keys (inherited from allreduce) set the all-reduce.
    architecture: str = "hybrid"
    # Partitions of each sparse variable; null: one per server.
    partitions: int | None = None
    # Run the partition search (trial runs fitting t(P)) and train with the P it picks.
    search_partitions: bool = False
    # Partition counts the search tries, and the timing-only steps of each trial run.
    search_candidates: list[int] | None = None
    search_steps: int = 4
    # Server CPU per message (a push or a pull of one partition: the RPC, its bookkeeping, the op launch):
    # an RPC's fixed cost, not fitted (the published LM rows do not pin it; docs/MODELS.md, Parallax).
    message_us: float = 50.0
    # Threads of each server process; null: cluster.server_cores.
    server_threads: int | None = None

    def check(self, config) -> None:
        super().check(config)
        one_of("policy.architecture", self.architecture, ARCHITECTURES)
        require(self.partitions is None or 1 <= self.partitions <= 1_000_000, "policy.partitions",
                self.partitions, "must be in [1, 1,000,000] (or null: one per server)")
        require(1 <= self.search_steps <= 1000, "policy.search_steps", self.search_steps, "must be in [1, 1000]")
        candidates = self.search_candidates
        require(candidates is None or (len(candidates) >= 3 and all(1 <= p <= 1_000_000 for p in candidates)
                                       and len(set(candidates)) == len(candidates)),
                "policy.search_candidates", candidates,
                "must be at least 3 distinct partition counts in [1, 1,000,000] (three thetas to fit), or null")
        finite("policy.message_us", self.message_us, at_most=1e6)
        require(self.message_us >= 0, "policy.message_us", self.message_us, "must be >= 0")
        require(self.server_threads is None or self.server_threads >= 1, "policy.server_threads",
                self.server_threads, "must be >= 1 (or null: cluster.server_cores)")


def fit_partition_model(samples: list[tuple[int, float]]) -> tuple[float, float, float]:
    """Least-squares (theta0, theta1, theta2) of t(P) = theta0 + theta1 / P + theta2 (P - 1) through
    (P, seconds per step) samples (Parallax, section 4.2)."""
    p = np.array([s[0] for s in samples], dtype=float)
    t = np.array([s[1] for s in samples], dtype=float)
    basis = np.column_stack([np.ones_like(p), 1.0 / p, p - 1.0])
    thetas, *_ = np.linalg.lstsq(basis, t, rcond=None)
    return tuple(float(x) for x in thetas)


def best_partitions(thetas: tuple[float, float, float], most: int, least: int = 1) -> int:
    """The integer P in [least, most] minimising theta0 + theta1 / P + theta2 (P - 1) (ties: the smaller).
    Parallax searches between the smallest and the largest P it tried.

    With theta1, theta2 > 0 the continuous minimum is sqrt(theta1 / theta2); otherwise the fit is
    monotone and the minimum is an end of the range."""
    t0, t1, t2 = thetas

    def t(p: int) -> float:
        return t0 + t1 / p + t2 * (p - 1)

    candidates = {least, most}
    if t1 > 0 and t2 > 0:
        root = math.sqrt(t1 / t2)
        candidates |= {min(most, max(least, math.floor(root))), min(most, max(least, math.ceil(root)))}
    return min(sorted(candidates), key=t)


def dense_view(profile: Profile) -> Profile:
    """The profile with its sparse layers emptied (no bytes): what the all-reduce of dense variables sees,
    with every layer's timing (backward order, MACs) kept."""
    return Profile(profile.name, tuple(replace(l, params=0, kind="dense", rows=0, lookups=0, batch_lookups=0)
                                       if l.sparse else l for l in profile.layers))


@register("parallax")
class Parallax(RingAllReduce):
    """One lockstep step: dense buffers all-reduced as Horovod does (architectures hybrid and allreduce)
    or pushed to and pulled from the servers by every GPU (ps); each sparse variable, once its gradient is
    ready, exchanged with the servers partition by partition (hybrid, ps) or all-gathered (allreduce).
    The step ends when every GPU holds what its next step reads (module docstring)."""

    Config = ParallaxConfig
    ignores = ("cluster.servers",)

    def __init__(self, ctx):
        super().__init__(ctx)
        cfg = self.cfg
        self.full_profile = self.profile
        self.ready_at = dict(self.profile.backward_ready())  # layer -> fraction of a step when its gradient is ready
        self.sparse = [i for i, layer in enumerate(self.profile.layers) if layer.sparse]
        self.dense = [i for i, layer in enumerate(self.profile.layers) if not layer.sparse]
        self.architecture = cfg.architecture
        server_hosts = list(self.layout.cpu_machines) or list(self.layout.machines)
        self.partitions = cfg.partitions or len(server_hosts)
        self.gpus = [w.host for w in self.workers]
        c = ctx.config.cluster
        threads = c.server_cores if cfg.server_threads is None else cfg.server_threads
        self.servers = PartitionServers(self.env, self.network, server_hosts, threads,
                                        c.aggregation_ns_per_byte * 1e-9, ctx.cluster.nic.cpu_s_per_byte,
                                        cfg.message_us * 1e-6, "ps")
        if self.sparse or self.architecture == "ps":  # servers that hold something (their CPUs in the trace)
            ctx.recorder.add_cpus(self.servers.cpu_threads())
        self.placement = self._place(server_hosts)
        if self.architecture != "ps":
            self.profile = dense_view(self.full_profile)  # the fusion cycle buffers dense gradients only
            self.buffers = fusion_buffers(self.profile, cfg.fusion_bytes)

    def _place(self, hosts: list[str]) -> dict[tuple[int, int], str]:
        """(layer, partition) -> its server host, round robin in layer order: each sparse variable's
        partitions, and under ps each dense variable as one partition."""
        placed, turn = {}, 0
        for i, layer in enumerate(self.full_profile.layers):
            if layer.sparse or self.architecture == "ps":
                for p in range(self.partitions if layer.sparse else 1):
                    placed[i, p] = hosts[turn % len(hosts)]
                    turn += 1
        return placed

    # -- one step -----------------------------------------------------------------------------------
    def communicate(self, start, durations, records):
        step = records[0].step
        jobs = [self._exchange_layer(start, durations, records, step, i) for i in self.sparse]
        if self.architecture == "ps":
            jobs += [self._exchange_layer(start, durations, records, step, i) for i in self.dense]
        else:
            jobs.append(self._allreduce_dense(start, durations, records))
        yield from concurrently(self.env, jobs)

    def _allreduce_dense(self, start, durations, records):
        """Horovod's fusion cycle over the dense gradients, each buffer one NCCL all-reduce."""
        for at, buffer in self.schedule(start, durations):
            if buffer.nbytes > 0:  # a cycle that fused only sparse layers has nothing to all-reduce
                yield from wait_until(self.env, at)
                self.mark_comm_start(records, range(self.n))
                yield from self.allreduce(buffer.nbytes)

    def _exchange_layer(self, start, durations, records, step: int, layer: int):
        """Layer `layer`'s gradient, from when it is ready, to its update everywhere."""
        fraction = self.ready_at[layer]
        if self.architecture == "allreduce":
            yield from wait_until(self.env, self.ready_time(start, durations, range(self.n), fraction))
            self.mark_comm_start(records, range(self.n))
            yield from self._allgather_rows(step, layer)
        elif self.architecture == "ps":  # every GPU is a worker of its own
            yield from concurrently(self.env, [self._gpu_exchange(start, durations, records, step, layer, i, fraction)
                                               for i in range(self.n)])
        else:
            yield from concurrently(self.env, [self._machine_exchange(start, durations, records, step, layer, m,
                                                                      fraction) for m in range(len(self.machines))])

    def _allgather_rows(self, step: int, layer: int):
        """Horovod (0.11, the paper's baseline) on a sparse gradient: MPI_Allgatherv of every GPU's rows
        through host memory. Each GPU copies its rows to its machine, the machines pass every GPU's rows
        around a ring (each NIC carries (N-1)/N of them all), and each GPU copies back the rows of every
        other GPU: all of them go into every replica's update."""
        row_bytes = self.full_profile.layers[layer].row_bytes
        own = [sum(self.ctx.workload.touched_rows(layer, [i], step)) * row_bytes for i in range(self.n)]
        total, net, hosts = sum(own), self.network, list(self.layout.machines)
        copies = [(self.gpus[i], hosts[self.layout.machine_of(i)], own[i]) for i in range(self.n)]
        yield self.env.all_of([net.send(gpu, host, b, "to-host") for gpu, host, b in copies if gpu != host])
        yield from all_gather(self.env, net, hosts, total, f"allgather L{layer}")
        yield self.env.all_of([net.send(host, gpu, total - b, "from-host") for gpu, host, b in copies if gpu != host])

    def _parts(self, layer: int) -> int:
        return self.partitions if self.full_profile.layers[layer].sparse else 1

    def _bytes(self, layer: int, workers, step: int) -> tuple[float, ...]:
        """Per partition, the bytes of `layer` that `workers` (merged) push at `step`: their distinct rows
        in it for a sparse layer, the whole layer for a dense one."""
        spec = self.full_profile.layers[layer]
        if not spec.sparse:
            return (float(spec.nbytes),)
        rows = self.ctx.workload.touched_rows(layer, workers, step, self.partitions)
        return tuple(r * spec.row_bytes for r in rows)

    def _gpu_exchange(self, start, durations, records, step, layer, i, fraction):
        """TF-PS: GPU i pushes each partition of `layer` and pulls what its next step reads."""
        yield from wait_until(self.env, start + durations[i] * fraction)
        self.mark_comm_start(records, [i])
        push, pull = self._bytes(layer, [i], step), self._bytes(layer, [i], step + 1)
        machine = self.layout.machines[self.layout.machine_of(i)]
        yield from concurrently(self.env, [
            self.servers.exchange((self.attempt, step, layer, p), self.placement[layer, p], self.gpus[i], push[p],
                                  pull[p], self.n, self.placement[layer, p] != machine)
            for p in range(self._parts(layer))])

    def _machine_exchange(self, start, durations, records, step, layer, m, fraction):
        """Parallax: machine m's GPUs copy their rows of `layer` to the host, which pushes the merged rows
        of each partition and pulls the rows its GPUs' next batches read, then copies each GPU its own."""
        local = self.layout.local_workers(m)
        host, gpus = self.layout.machines[m], self.machines[m]
        yield from wait_until(self.env, self.ready_time(start, durations, local, fraction))
        self.mark_comm_start(records, local)
        row_bytes = self.full_profile.layers[layer].row_bytes
        own = [sum(self.ctx.workload.touched_rows(layer, [i], step)) * row_bytes for i in local]
        if gpus != [host]:  # local aggregation: each GPU's rows to the host
            yield self.env.all_of([self.network.send(gpu, host, b, "to-host") for gpu, b in zip(gpus, own)])
        push, pull = self._bytes(layer, list(local), step), self._bytes(layer, list(local), step + 1)
        yield from concurrently(self.env, [
            self.servers.exchange((self.attempt, step, layer, p), self.placement[layer, p], host, push[p], pull[p],
                                  len(self.machines), self.placement[layer, p] != host)
            for p in range(self.partitions)])
        if gpus != [host]:
            nxt = [sum(self.ctx.workload.touched_rows(layer, [i], step + 1)) * row_bytes for i in local]
            yield self.env.all_of([self.network.send(host, gpu, b, "from-host") for gpu, b in zip(gpus, nxt)])

    # -- the partition search -----------------------------------------------------------------------
    @classmethod
    def plan(cls, config, seconds_per_step):
        """Before the run: with policy.search_partitions, time a timing-only trial run at each candidate P
        (`seconds_per_step(trial config)`), fit t(P) and return (the config with the best P, what the
        search found, for the summary); otherwise (config, {})."""
        cfg = config.policy
        if not cfg.search_partitions:
            return config, {}
        servers = config.cluster.cpu_machines or config.cluster.gpus // config.cluster.gpus_per_machine
        candidates = sorted(cfg.search_candidates or {max(1, servers // 2), servers, 2 * servers, 4 * servers,
                                                      8 * servers})
        samples = []
        for p in candidates:
            trial = copy.deepcopy(config)
            trial.policy.partitions, trial.policy.search_partitions = p, False
            trial.train.numerics, trial.train.steps, trial.train.samples = False, cfg.search_steps, None
            trial.train.target_loss, trial.output.dir, trial.output.trace = None, None, False
            samples.append((p, seconds_per_step(trial)))
        thetas = fit_partition_model(samples)
        best = best_partitions(thetas, max(candidates), min(candidates))
        chosen = copy.deepcopy(config)
        chosen.policy.partitions = best
        return chosen, {"partition_search": {"seconds_per_step": {str(p): t for p, t in samples},
                                             "thetas": list(thetas), "partitions": best}}
