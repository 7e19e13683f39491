"""All-reduce data parallelism as Horovod runs it: tensor fusion on a cycle, in front of NCCL."""

from __future__ import annotations

from dataclasses import dataclass

from pssim.comm.collectives import concurrently, hierarchical_allreduce, ring_allreduce
from pssim.comm.fusion import cycle_buffers, fusion_buffers
from pssim.comm.gates import wait_until
from pssim.comm.nccl import ALGORITHMS, Communicator, NcclSettings
from pssim.config import finite, one_of, require
from pssim.policies.base import register
from pssim.policies.replicated import ReplicatedConfig, ReplicatedDataParallel


@dataclass
class AllReduceConfig(ReplicatedConfig):
    name: str = "allreduce"
    # Horovod's fusion threshold (HOROVOD_FUSION_THRESHOLD): 64 MiB until v0.21.
    fusion_bytes: int = 64 * 1024 * 1024
    # Horovod's background cycle (HOROVOD_CYCLE_TIME): 5 ms until v0.21 (then 1 ms). Each cycle fuses the
    # gradients that became ready on every rank since the last; 0: no cycle, buffers cut by size alone.
    cycle_ms: float = 5.0
    # NCCL's algorithm (NCCL_ALGO): auto (NCCL's tuner picks Ring, Tree or, on one H100 NVSwitch machine,
    # NVLS per size and scale), ring, tree, nvls, or ideal_ring: one flow per ring hop, 2(n-1)/n M/B +
    # 2(n-1) alpha on a star (no channels, sockets, launch or proxy costs).
    algorithm: str = "auto"
    # NCCL channels: one NIC per machine gives 2 (its topology search's ring, doubled).
    channels: int = 2
    # Sockets per NCCL connection over TCP (NCCL_SOCKET_NTHREADS x NCCL_NSOCKS_PERTHREAD): 1 by default;
    # NCCL detects 16 on AWS and 4 on GCP.
    sockets_per_connection: int = 1
    # Each NCCL collective's kernel launch and setup, before its first byte (fitted: docs/MODELS.md, NCCL).
    launch_us: float = 12.0
    # Each pipeline step between machines over TCP (NCCL's socket proxy), beyond the transport's own
    # per-message latency (fitted: docs/MODELS.md, NCCL).
    socket_step_us: float = 51.5
    # NCCL 2.3's LL rule: an all-reduce of at most n x ll_bytes_per_rank bytes moves twice its bytes (LL
    # lines are half flags; NcclSettings.ll_bytes_per_rank). 0: Simple only. NCCL 2.3.7, Volta, several
    # machines: 32768 (src/include/common_coll.h: 256 LL threads x a 2 x 64 B thread threshold).
    ll_bytes_per_rank: float = 0.0
    # Horovod's hierarchical all-reduce: reduce-scatter inside each machine, an all-reduce per local rank
    # across machines, all-gather inside.
    hierarchical: bool = False

    def check(self, config) -> None:
        super().check(config)
        require(self.fusion_bytes >= 1, "policy.fusion_bytes", self.fusion_bytes, "must be >= 1")
        finite("policy.cycle_ms", self.cycle_ms, at_most=1e6)
        require(self.cycle_ms >= 0, "policy.cycle_ms", self.cycle_ms, "must be >= 0 (0: no cycle)")
        one_of("policy.algorithm", self.algorithm, (*ALGORITHMS, "ideal_ring"))
        require(1 <= self.channels <= 64, "policy.channels", self.channels, "must be in [1, 64]")
        require(1 <= self.sockets_per_connection <= 64, "policy.sockets_per_connection",
                self.sockets_per_connection, "must be in [1, 64] (NCCL's MAX_SOCKETS)")
        require(self.ll_bytes_per_rank == 0 or self.algorithm == "ring", "policy.ll_bytes_per_rank",
                self.ll_bytes_per_rank, f"must be 0 unless policy.algorithm is ring, not {self.algorithm!r} (it is "
                "NCCL 2.3's LL rule, and NCCL 2.3 had the ring only)")
        for key in ("launch_us", "socket_step_us", "ll_bytes_per_rank"):
            finite(f"policy.{key}", getattr(self, key), at_most=1e6)
            require(getattr(self, key) >= 0, f"policy.{key}", getattr(self, key), "must be >= 0")


@register("allreduce")
class RingAllReduce(ReplicatedDataParallel):
    """Horovod over NCCL. Every cycle (policy.cycle_ms) Horovod fuses the gradients that are ready on
    every rank into buffers of at most policy.fusion_bytes; each buffer is one NCCL all-reduce of all n
    GPUs, one after another (one stream). NCCL runs it as a ring or a tree over its channels (its tuner
    picks, or policy.algorithm). With policy.hierarchical and several GPUs per machine: reduce-scatter
    inside each machine, an all-reduce per local rank across machines, all-gather inside.
    policy.algorithm=ideal_ring with policy.cycle_ms=0 is the ideal model: buffers closed at the
    threshold, one ring flow per hop.
    """

    Config = AllReduceConfig
    ignores = ("cluster.servers", "cluster.cpu_machines", "cluster.server_cores", "cluster.aggregation_ns_per_byte")

    def __init__(self, ctx):
        super().__init__(ctx)
        cfg = self.cfg
        self.buffers = fusion_buffers(self.profile, cfg.fusion_bytes)  # the buffers without a cycle
        self.ring = [w.host for w in self.workers]
        self.hierarchical = cfg.hierarchical and self.layout.gpus_per_machine > 1
        self.ideal = cfg.algorithm == "ideal_ring"
        settings = NcclSettings("auto" if self.ideal else cfg.algorithm, cfg.channels, cfg.sockets_per_connection,
                                cfg.launch_us * 1e-6, cfg.socket_step_us * 1e-6, cfg.ll_bytes_per_rank,
                                min(w.device.nvls_efficiency for w in self.workers))
        self.nccl = Communicator(self.network, self.machines, settings)
        require(cfg.algorithm != "nvls" or (self.nccl.nvls_switch is not None and not self.hierarchical),
                "policy.algorithm", cfg.algorithm, "NVLS needs every GPU in one machine on an NVLink switch "
                "(cluster.gpus_per_machine = cluster.workers, an NVLink intra preset), an architecture with NVLS "
                "(cluster.device=h100) and policy.hierarchical=false; allowed elsewhere: auto, ring, tree")
        self.local = [Communicator(self.network, [gpus], settings) for gpus in self.machines]
        self.cross = [Communicator(self.network, [[gpus[l]] for gpus in self.machines], settings)
                      for l in range(self.layout.gpus_per_machine)]

    def communicate(self, start, durations, records):
        everyone = range(self.n)
        for at, buffer in self.schedule(start, durations):
            yield from wait_until(self.env, at)
            self.mark_comm_start(records, everyone)
            yield from self.allreduce(buffer.nbytes)

    def schedule(self, start, durations):
        """(send time, buffer) of this step's fusion buffers, in the order they are all-reduced."""
        slowest = max(durations)  # max(d_i * f) is max(d_i) * f to the bit (f >= 0, rounding is monotone)

        def ready(fraction):
            return start + slowest * fraction
        if self.cfg.cycle_ms == 0:
            return [(ready(b.ready), b) for b in self.buffers]
        return cycle_buffers(self.profile, self.cfg.fusion_bytes, self.cfg.cycle_ms * 1e-3, ready)

    def allreduce(self, nbytes):
        """One buffer summed across all n GPUs."""
        env, net = self.env, self.network
        if self.ideal and self.hierarchical:
            yield from hierarchical_allreduce(env, net, self.machines, nbytes)
        elif self.ideal:
            yield from ring_allreduce(env, net, self.ring, nbytes)
        elif self.hierarchical:
            g = self.layout.gpus_per_machine
            yield from concurrently(env, [c.reduce_scatter(env, nbytes, "local-rs") for c in self.local])
            yield from concurrently(env, [c.allreduce(env, nbytes / g, "cross-allreduce") for c in self.cross])
            yield from concurrently(env, [c.all_gather(env, nbytes, "local-ag") for c in self.local])
        else:
            yield from self.nccl.allreduce(env, nbytes)
