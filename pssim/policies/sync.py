"""BSP: bulk synchronous parallel through sharded parameter servers, with optional backup workers."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import count

from pssim.config import PolicyConfig, require
from pssim.policies.base import Policy, mean_gradient, register


@dataclass
class SyncConfig(PolicyConfig):
    name: str = "sync"
    # Backup workers b: each round the servers apply the mean of the first cluster.workers - b gradients
    # of the version to arrive and drop the rest (TensorFlow's SyncReplicasOptimizer with backups).
    backup_workers: int = 0

    def check(self, config) -> None:
        require(0 <= self.backup_workers < config.cluster.workers, "policy.backup_workers", self.backup_workers,
                f"must be in [0, cluster.workers={config.cluster.workers}) (a round needs at least one gradient)")


@register("sync")
class Synchronous(Policy):
    """Every worker computes on version v and pushes; each shard waits for the gradients of v, applies
    their mean once (version v+1); every worker then pulls v+1.

    With b = policy.backup_workers, a shard applies the mean (in worker order) of the first n - b
    gradients of v to arrive; later gradients of v (computed on a version the shard has moved past) are
    dropped. With b = 0 and equal batches this is single-process SGD with batch n*b, step for step.
    """

    Config = SyncConfig

    def __init__(self, ctx):
        super().__init__(ctx)
        self.backup = getattr(self.cfg, "backup_workers", 0)  # 0 when sync is the default policy
        self.needed = self.n - self.backup
        self.gradients_per_update = self.needed
        self._received = {s.index: [None] * self.n for s in self.servers.shards}
        self._count = {s.index: 0 for s in self.servers.shards}

    def worker(self, w):
        params, version = self.ctx.initial_params, 0
        if w.index in self.restarted:  # back from a crash: the newest model, then its own step count
            params, versions = yield from self.fresh_pull(w)
            version = min(versions)
        for step in count(w.clock):
            grad = yield from w.compute(params, step, version)
            yield from self.servers.push(w, grad, self.aggregator(version, self.epoch[w.index]))
            params, versions = yield from self.servers.pull(w, min_version=version + 1)
            w.finish_step()
            version = min(versions)

    def aggregator(self, version: int, epoch: int):
        def on_arrival(shard, worker, grad) -> None:
            if self.accepts(worker, epoch) and shard.version == version:  # else lost, or late: dropped
                self.aggregate(shard, worker, grad)
        return on_arrival

    def aggregate(self, shard, worker, grad) -> None:
        """Server rule: keep the gradient; when n - b are in, apply their mean (summed in worker order)."""
        received = self._received[shard.index]
        if received[worker.index] is None:
            self._count[shard.index] += 1
        received[worker.index] = grad if grad is not None else True
        if self._count[shard.index] == self.needed:
            grads = [g for g in received if g is not None]
            mean = mean_gradient(grads) if grads[0] is not True else None
            self._received[shard.index] = [None] * self.n
            self._count[shard.index] = 0
            self.servers.apply(shard, mean)

    def waiting_for(self) -> str:
        waits = [f"server shard {s.index} holds {self._count[s.index]} of the {self.needed} gradients of version "
                 f"{s.version} it waits for" for s in self.servers.shards if self._count[s.index] < self.needed]
        if not waits:
            return ""
        b = self.backup
        return "; ".join(waits) + f" (policy.backup_workers={b}: a round needs {self.needed} of {self.n} workers)"
