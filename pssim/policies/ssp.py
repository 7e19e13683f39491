"""SSP: stale synchronous parallel (Ho et al., NIPS'13)."""

from __future__ import annotations

from dataclasses import dataclass

from pssim.config import require
from pssim.policies.asynchronous import AsyncConfig, Asynchronous
from pssim.policies.base import register


@dataclass
class SSPConfig(AsyncConfig):
    name: str = "ssp"
    # A worker at clock c waits while c - min_clock > staleness.
    staleness: int = 3

    def check(self, config) -> None:
        super().check(config)
        require(self.staleness >= 0, "policy.staleness", self.staleness, "must be >= 0")


@register("ssp")
class StaleSynchronous(Asynchronous):
    """ASP's servers plus a clock gate: a worker at clock c waits while c - min_clock > s.

    A worker's clock is the number of its gradients the servers have applied. After its push the
    worker ticks, waits at the gate, then pulls, so its next gradient is computed on a model holding
    every update of clocks < c - s (and possibly more). s=0 is BSP; s=infinity is ASP.
    """

    Config = SSPConfig

    def __init__(self, ctx):
        super().__init__(ctx)
        self.staleness = self.cfg.staleness

    def before_pull(self, w, next_clock: int):
        """The gate: at clock c, wait until the slowest worker's clock is at least c - s."""
        if self.clocks.lead(w.index) > self.staleness:
            yield self.clocks.reached(next_clock - self.staleness)
