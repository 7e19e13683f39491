"""Ring all-reduce (Horovod / NCCL), the baseline of synchronous data parallelism."""

from __future__ import annotations

from dataclasses import dataclass

from pssim.comm.collectives import hierarchical_allreduce, ring_allreduce
from pssim.comm.fusion import fusion_buffers
from pssim.comm.gates import wait_until
from pssim.config import require
from pssim.policies.base import register
from pssim.policies.replicated import ReplicatedConfig, ReplicatedDataParallel


@dataclass
class AllReduceConfig(ReplicatedConfig):
    name: str = "allreduce"
    # Gradients are grouped into fusion buffers of this many bytes (backward order): Horovod's
    # HOROVOD_FUSION_THRESHOLD default of 64 MiB.
    fusion_bytes: int = 64 * 1024 * 1024
    # Reduce inside the machine, ring across machines, broadcast inside.
    hierarchical: bool = False

    def check(self, config) -> None:
        super().check(config)
        require(self.fusion_bytes >= 1, "policy.fusion_bytes", self.fusion_bytes, "must be >= 1")


@register("allreduce")
class RingAllReduce(ReplicatedDataParallel):
    """Gradients fill fusion buffers (policy.fusion_bytes) in backward order; each buffer, once every
    rank has it, is all-reduced around a ring of all n GPUs, one buffer after another (one NCCL
    stream). With policy.hierarchical and several GPUs per machine: reduce-scatter inside each machine,
    a ring per local rank across machines, all-gather inside (Horovod's hierarchical mode).
    """

    Config = AllReduceConfig
    ignores = ("cluster.servers", "cluster.cpu_machines", "cluster.server_cores", "cluster.aggregation_ns_per_byte")

    def __init__(self, ctx):
        super().__init__(ctx)
        self.buffers = fusion_buffers(self.profile, self.cfg.fusion_bytes)
        self.ring = [w.host for w in self.workers]
        self.hierarchical = self.cfg.hierarchical and self.layout.gpus_per_machine > 1

    def communicate(self, start, durations, records):
        everyone = range(self.n)
        for buffer in self.buffers:
            yield from wait_until(self.env, self.ready_time(start, durations, everyone, buffer.ready))
            self.mark_comm_start(records, everyone)
            if self.hierarchical:
                yield from hierarchical_allreduce(self.env, self.network, self.machines, buffer.nbytes)
            else:
                yield from ring_allreduce(self.env, self.network, self.ring, buffer.nbytes)
