"""Straggler models: a per-step slowdown of one worker's compute, each worker with its own generator.

A model maps a step's ideal compute time c to its actual time. Every worker draws from its own
numpy Generator (spawned from the run's seed), so adding a worker never changes another's draws.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Straggler:
    """The slowdown of one worker; `model` names one of STRAGGLER_MODELS."""

    model: str
    rng: np.random.Generator
    mean_s: float = 0.0
    mu: float = 0.0
    sigma: float = 1.0
    scale_s: float = 0.0
    alpha: float = 2.5
    factor: float = 1.0

    def __call__(self, compute_s: float) -> float:
        """The actual duration of a step whose ideal compute time is `compute_s`."""
        return STRAGGLER_MODELS[self.model](self, compute_s)


def _none(s: Straggler, c: float) -> float:
    return c


def _exponential(s: Straggler, c: float) -> float:
    """c + Exp(rate 1/mean_s): BSP's iteration then grows like c + H_n * mean_s."""
    return c + (s.rng.exponential(s.mean_s) if s.mean_s > 0 else 0.0)


def _lognormal(s: Straggler, c: float) -> float:
    """c + exp(N(mu, sigma)): a heavy right tail (occasional long stalls)."""
    return c + float(s.rng.lognormal(s.mu, s.sigma))


def _pareto(s: Straggler, c: float) -> float:
    """c + scale_s * Lomax(alpha): a power-law tail; infinite variance for alpha <= 2."""
    return c + s.scale_s * float(s.rng.pareto(s.alpha))


def _slow_worker(s: Straggler, c: float) -> float:
    """Persistently slow: every step takes `factor` times as long (a slower or throttled device)."""
    return c * s.factor


STRAGGLER_MODELS = {
    "none": _none,
    "exponential": _exponential,
    "lognormal": _lognormal,
    "pareto": _pareto,
    "slow_worker": _slow_worker,
}


def make_stragglers(cfg, workers: int, rngs) -> list[Straggler]:
    """One Straggler per worker from a StragglerConfig; only cfg.worker is slow under slow_worker."""
    out = []
    for w in range(workers):
        model = cfg.model
        if model == "slow_worker" and w != cfg.worker:
            model = "none"
        out.append(Straggler(model, rngs.generator(f"stragglers/{w}"), mean_s=cfg.mean_s, mu=cfg.mu,
                             sigma=cfg.sigma, scale_s=cfg.scale_s, alpha=cfg.alpha, factor=cfg.factor))
    return out
