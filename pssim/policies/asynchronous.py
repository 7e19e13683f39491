"""ASP: asynchronous parallel (Downpour-style) parameter servers."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import count

from pssim.comm.gates import MinClock
from pssim.config import PolicyConfig, one_of
from pssim.policies.base import Policy, register


@dataclass
class AsyncConfig(PolicyConfig):
    name: str = "async"
    # Each applied gradient (with its weight decay) is scaled by 1/workers ("mean") or not ("sum").
    gradient_scale: str = "mean"

    def check(self, config) -> None:
        one_of("policy.gradient_scale", self.gradient_scale, ("mean", "sum"))


@register("async")
class Asynchronous(Policy):
    """Each shard applies a gradient the moment it arrives; the worker then pulls the newest version.

    Staleness of a gradient = the shard's version when it is applied - the version it was computed on.
    A worker's clock is the number of its gradients the servers have applied; `clock_lead` records how
    far ahead of the slowest worker it was when it began a step (unbounded under ASP).
    policy.gradient_scale=mean scales each update by 1/n, so that n applied gradients move the model
    as far as one BSP step does and train.lr means the same under every policy; =sum applies it whole.
    """

    Config = AsyncConfig

    def __init__(self, ctx):
        super().__init__(ctx)
        self.scale = 1.0 / self.n if self.cfg.gradient_scale == "mean" else 1.0
        self.clocks = MinClock(self.env, self.n)  # worker i's clock: its gradients applied so far

    def worker(self, w):
        params, versions = self.ctx.initial_params, [0] * len(self.servers.shards)
        if w.index in self.restarted:  # back from a crash: a fresh pull, then its own step count goes on
            params, versions = yield from self.fresh_pull(w)
        for step in count(w.clock):
            grad = yield from w.compute(params, step, min(versions), clock_lead=self.clocks.lead(w.index))
            yield from self.servers.push(w, grad, self.apply_on_arrival(versions, self.epoch[w.index]))
            self.clocks.tick(w.index, to=step + 1)
            yield from self.before_pull(w, step + 1)
            params, versions = yield from self.servers.pull(w)
            w.finish_step()

    def apply_on_arrival(self, versions_used: list[int], epoch: int | None = None):
        """Server rule: apply at once and record how many updates the gradient missed (a gradient whose
        worker crashed before it arrived is dropped: `Policy.accepts`)."""

        def on_arrival(shard, worker, grad) -> None:
            if epoch is not None and not self.accepts(worker, epoch):
                return
            staleness = shard.version - versions_used[shard.index]
            worker.current.staleness = max(worker.current.staleness, staleness)
            self.servers.apply(shard, grad, self.scale)

        return on_arrival

    def before_pull(self, w, next_clock: int):
        """Hook between a push and the next pull; ASP never waits."""
        return
        yield
