"""ASP: asynchronous parallel parameter servers (Downpour, TensorFlow's and MXNet's dist_async), and the
update rules an asynchronous server may apply to each gradient."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import count

from pssim.comm.gates import MinClock
from pssim.config import PolicyConfig, one_of
from pssim.policies.base import Policy, register


UPDATE_RULES = ("sum", "mean", "staleness_aware")


def update_scale(rule: str, workers: int, staleness: int) -> float:
    """The weight of one asynchronous update (`ModelState.step`'s scale):
    - sum: 1, each worker's gradient at the full learning rate, as Downpour, TensorFlow's parameter
      servers and MXNet's dist_async apply it (the user scales the learning rate);
    - mean: 1/n, so that n updates move the model as one BSP step does (pssim's earlier default);
    - staleness_aware: 1/max(1, staleness), the learning rate divided by the number of updates the
      gradient missed (Zhang et al., IJCAI'16), a fresh gradient at the full rate."""
    if rule == "mean":
        return 1.0 / workers
    if rule == "staleness_aware":
        return 1.0 / max(1, staleness)
    return 1.0


@dataclass
class AsyncConfig(PolicyConfig):
    name: str = "async"
    # The update rule for each applied gradient (`update_scale`): sum (each at the full learning rate, as
    # the real systems do), mean (1/workers), or staleness_aware (learning rate / staleness).
    gradient_scale: str = "sum"

    def check(self, config) -> None:
        one_of("policy.gradient_scale", self.gradient_scale, UPDATE_RULES)


@register("async")
class Asynchronous(Policy):
    """Each shard applies a gradient the moment it arrives; the worker then pulls the newest version.

    Staleness of a gradient = the shard's version when it is applied - the version it was computed on.
    A worker's clock is the number of its gradients the servers have applied; `clock_lead` records how
    far ahead of the slowest worker it was when it began a step (unbounded under ASP).
    policy.gradient_scale is the update rule (`update_scale`): sum (the default, as the real systems),
    mean or staleness_aware; weight decay is weighed with the gradient.
    """

    Config = AsyncConfig

    def __init__(self, ctx):
        super().__init__(ctx)
        self.rule = getattr(self.cfg, "gradient_scale", "sum")
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
            self.servers.apply(shard, grad, update_scale(self.rule, self.n, staleness))

        return on_arrival

    def before_pull(self, w, next_clock: int):
        """Hook between a push and the next pull; ASP never waits."""
        return
        yield
