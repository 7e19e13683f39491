"""BSP: bulk synchronous parallel through sharded parameter servers."""

from __future__ import annotations

from itertools import count

from pssim.policies.base import Policy, mean_gradient, register


@register("sync")
class Synchronous(Policy):
    """Every worker computes on version v and pushes; each shard waits for all n gradients of v,
    applies their mean once (version v+1); every worker then pulls v+1.

    With equal batches b this is single-process SGD with batch n*b, step for step.
    """

    def __init__(self, ctx):
        super().__init__(ctx)
        self.gradients_per_update = self.n
        self._received = {s.index: [None] * self.n for s in self.servers.shards}
        self._count = {s.index: 0 for s in self.servers.shards}

    def worker(self, w):
        params, version = self.ctx.initial_params, 0
        for step in count():
            grad = yield from w.compute(params, step, version)
            yield from self.servers.push(w, grad, self.aggregate)
            params, versions = yield from self.servers.pull(w, min_version=version + 1)
            w.finish_step()
            version = min(versions)

    def aggregate(self, shard, worker, grad) -> None:
        """Server rule: keep the gradient; when all n are in, apply their mean (summed in worker order)."""
        self._received[shard.index][worker.index] = grad
        self._count[shard.index] += 1
        if self._count[shard.index] == self.n:
            mean = mean_gradient(self._received[shard.index])
            self._received[shard.index] = [None] * self.n
            self._count[shard.index] = 0
            self.servers.apply(shard, mean)
