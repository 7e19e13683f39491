"""ASP: asynchronous parallel (Downpour-style) parameter servers."""

from __future__ import annotations

from itertools import count

from pssim.policies.base import Policy, register


@register("async")
class Asynchronous(Policy):
    """Each shard applies a gradient the moment it arrives; the worker then pulls the newest version.

    Staleness of a gradient = the shard's version when it is applied - the version it was computed on.
    policy.gradient_scale=mean scales each gradient by 1/n, so that n applied gradients move the model
    as far as one BSP step does and train.lr means the same under every policy; =sum applies it whole.
    """

    def __init__(self, sim):
        super().__init__(sim)
        self.scale = 1.0 / self.n if self.cfg.gradient_scale == "mean" else 1.0

    def worker(self, w):
        params, versions = self.sim.initial_params, [0] * len(self.ps.shards)
        for step in count():
            grad = yield from w.compute(params, step, min(versions))
            staleness = yield from self.ps.push(w, grad, self.apply_on_arrival(versions))
            yield from self.before_pull(w, step + 1)
            params, versions = yield from self.ps.pull(w)
            w.finish_step(staleness=max(staleness))

    def apply_on_arrival(self, versions_used: list[int]):
        """Server rule: apply at once and report how many updates the gradient missed."""

        def on_arrival(shard, worker, grad) -> int:
            staleness = shard.version - versions_used[shard.index]
            self.ps.apply(shard, grad, self.scale)
            return staleness

        return on_arrival

    def before_pull(self, w, next_clock: int):
        """Hook between a push and the next pull; ASP never waits."""
        return
        yield
