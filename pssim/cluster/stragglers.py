"""Straggler models: a per-step slowdown of one worker's compute, each worker with its own generator.

Each model is a config schema (its keys, their checks) with a `slowdown(rng, c)` rule mapping a step's
ideal compute time c to its actual time; presets of the `stragglers` group (pssim/conf/stragglers/)
give the values. Every worker draws from its own numpy Generator (spawned from the run's seed), so
adding a worker never changes another's draws.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from omegaconf import MISSING

from pssim.config import StragglerConfig, finite, require
from pssim.registry import Registry

STRAGGLER_MODELS: Registry[type[StragglerConfig]] = Registry("stragglers.model")
# Class decorator: make a straggler schema available as `stragglers=<its model name>`.
straggler_model = STRAGGLER_MODELS.by("model")


@straggler_model
@dataclass
class NoStragglers(StragglerConfig):
    """Every step takes exactly its device time."""

    model: str = "none"

    def slowdown(self, rng: np.random.Generator, c: float) -> float:
        return c


@straggler_model
@dataclass
class Exponential(StragglerConfig):
    """c + Exp(rate 1/mean_s): BSP's iteration then grows like c + H_n * mean_s."""

    model: str = "exponential"
    mean_s: float = MISSING

    def check(self, config) -> None:
        finite("stragglers.mean_s", self.mean_s, at_most=3600)
        require(self.mean_s >= 0, "stragglers.mean_s", self.mean_s, "must be >= 0")

    def slowdown(self, rng, c):
        return c + (rng.exponential(self.mean_s) if self.mean_s > 0 else 0.0)


@straggler_model
@dataclass
class Lognormal(StragglerConfig):
    """c + exp(N(mu, sigma)): a heavy right tail (occasional long stalls)."""

    model: str = "lognormal"
    mu: float = MISSING
    sigma: float = MISSING

    def check(self, config) -> None:
        # exp(mu + 4 sigma) must stay below an hour: a larger delay is a failure, not a straggler.
        finite("stragglers.mu", self.mu, at_most=100)
        finite("stragglers.sigma", self.sigma, at_most=10)
        require(self.sigma >= 0, "stragglers.sigma", self.sigma, "must be >= 0")
        require(self.mu + 4 * self.sigma <= 8.2, "stragglers.mu", self.mu,
                f"mu + 4 sigma must be <= 8.2 (delays of an hour); it is {self.mu + 4 * self.sigma:g}")

    def slowdown(self, rng, c):
        return c + float(rng.lognormal(self.mu, self.sigma))


@straggler_model
@dataclass
class Pareto(StragglerConfig):
    """c + scale_s * Lomax(alpha): a power-law tail; infinite variance for alpha <= 2."""

    model: str = "pareto"
    scale_s: float = MISSING
    alpha: float = MISSING

    def check(self, config) -> None:
        finite("stragglers.scale_s", self.scale_s, at_most=3600)
        finite("stragglers.alpha", self.alpha, at_most=1e6)
        require(self.scale_s >= 0, "stragglers.scale_s", self.scale_s, "must be >= 0")
        require(self.alpha >= 0.5, "stragglers.alpha", self.alpha, "must be >= 0.5 (a smaller tail index "
                "draws delays of years)")

    def slowdown(self, rng, c):
        return c + self.scale_s * float(rng.pareto(self.alpha))


@straggler_model
@dataclass
class SlowWorker(StragglerConfig):
    """Persistently slow: worker `worker` takes `factor` times as long on every step (a slower or
    throttled device); every other worker is not slowed."""

    model: str = "slow_worker"
    worker: int = MISSING
    factor: float = MISSING

    def check(self, config) -> None:
        finite("stragglers.factor", self.factor, at_most=1e6)
        require(self.factor >= 1, "stragglers.factor", self.factor, "must be >= 1")
        n = config.cluster.workers
        require(0 <= self.worker < n, "stragglers.worker", self.worker, f"must be a worker index in [0, {n - 1}]")

    def slowdown(self, rng, c):
        return c * self.factor


@dataclass
class Straggler:
    """The slowdown of one worker: its model's rule with the worker's own generator."""

    model: StragglerConfig
    rng: np.random.Generator

    def __call__(self, compute_s: float) -> float:
        """The actual duration of a step whose ideal compute time is `compute_s`."""
        return self.model.slowdown(self.rng, compute_s)


def make_stragglers(model: StragglerConfig, workers: int, rngs) -> list[Straggler]:
    """One Straggler per worker; under slow_worker only `model.worker` is slowed."""
    out = []
    for w in range(workers):
        own = model if not (isinstance(model, SlowWorker) and w != model.worker) else NoStragglers()
        out.append(Straggler(own, rngs.generator(f"stragglers/{w}")))
    return out
