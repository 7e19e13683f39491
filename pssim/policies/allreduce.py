"""Ring all-reduce (Horovod / NCCL), the baseline of synchronous data parallelism."""

from __future__ import annotations

from pssim.comm.collectives import hierarchical_allreduce, ring_allreduce
from pssim.comm.fusion import fusion_buffers
from pssim.policies.base import register
from pssim.policies.replicated import ReplicatedDataParallel


@register("allreduce")
class RingAllReduce(ReplicatedDataParallel):
    """Gradients fill fusion buffers (policy.fusion_bytes) in backward order; each buffer, once every
    rank has it, is all-reduced around a ring of all n GPUs, one buffer after another (one NCCL
    stream). With policy.hierarchical and several GPUs per machine: reduce-scatter inside each machine,
    a ring per local rank across machines, all-gather inside (Horovod's hierarchical mode).
    """

    fusion_bytes = 64 * 1024 * 1024  # HOROVOD_FUSION_THRESHOLD's default

    def __init__(self, sim):
        super().__init__(sim)
        self.buffers = fusion_buffers(self.profile, self.cfg.fusion_bytes or self.fusion_bytes)
        self.ring = [w.host for w in sim.workers]
        self.hierarchical = self.cfg.hierarchical and self.layout.gpus_per_machine > 1

    def communicate(self, start, durations, records):
        everyone = range(self.n)
        for buffer in self.buffers:
            ready = self.ready_time(start, durations, everyone, buffer.ready)
            if self.env.now < ready:
                yield self.env.timeout(ready - self.env.now)
            self.mark_comm_start(records, everyone)
            if self.hierarchical:
                yield from hierarchical_allreduce(self.env, self.network, self.machines, buffer.nbytes)
            else:
                yield from ring_allreduce(self.env, self.network, self.ring, buffer.nbytes)
