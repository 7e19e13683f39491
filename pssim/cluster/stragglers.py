"""Straggler models: a per-step slowdown of one worker's compute, each worker with its own generator.

A model maps a step's ideal compute time c to its actual time. Every worker draws from its own
numpy Generator (spawned from the run's seed), so adding a worker never changes another's draws.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pssim.config import StragglerConfig


@dataclass
class Straggler:
    """The slowdown of one worker: `model` names one of STRAGGLER_MODELS, `cfg` holds its parameters."""

    model: str
    rng: np.random.Generator
    cfg: StragglerConfig

    def __call__(self, compute_s: float) -> float:
        """The actual duration of a step whose ideal compute time is `compute_s`."""
        return STRAGGLER_MODELS[self.model](self, compute_s)


def _none(s: Straggler, c: float) -> float:
    return c


def _exponential(s: Straggler, c: float) -> float:
    """c + Exp(rate 1/mean_s): BSP's iteration then grows like c + H_n * mean_s."""
    return c + (s.rng.exponential(s.cfg.mean_s) if s.cfg.mean_s > 0 else 0.0)


def _lognormal(s: Straggler, c: float) -> float:
    """c + exp(N(mu, sigma)): a heavy right tail (occasional long stalls)."""
    return c + float(s.rng.lognormal(s.cfg.mu, s.cfg.sigma))


def _pareto(s: Straggler, c: float) -> float:
    """c + scale_s * Lomax(alpha): a power-law tail; infinite variance for alpha <= 2."""
    return c + s.cfg.scale_s * float(s.rng.pareto(s.cfg.alpha))


def _slow_worker(s: Straggler, c: float) -> float:
    """Persistently slow: every step takes `factor` times as long (a slower or throttled device)."""
    return c * s.cfg.factor


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
        out.append(Straggler(model, rngs.generator(f"stragglers/{w}"), cfg))
    return out
