"""The trained model's state: its flat parameters and optimizer state, owned in one place.

Parameter-server shards hold `slice(lo, hi)` views of it, the replicated-model policies step it
whole; either way one object owns the numbers, so no copy can drift from another.
"""

from __future__ import annotations

import torch

from pssim.workload.optimizer import SGD


class ModelState:
    """Parameters (a flat vector or a view of one) and their momentum buffer, stepped by `optimizer`."""

    def __init__(self, params: torch.Tensor, optimizer: SGD, momentum: torch.Tensor | None = None):
        self.params = params
        self.optimizer = optimizer
        self.momentum = torch.zeros_like(params) if momentum is None else momentum

    def step(self, grad: torch.Tensor | None, scale: float = 1.0) -> None:
        """One optimizer step with `scale` times the update direction (gradient plus weight decay)."""
        if grad is not None:
            self.optimizer.step(self.params, grad, self.momentum, scale)

    def slice(self, lo: int, hi: int) -> "ModelState":
        """A view of parameters [lo, hi) and their optimizer state; stepping it steps this state."""
        return ModelState(self.params[lo:hi], self.optimizer, self.momentum[lo:hi])

    def snapshot(self) -> torch.Tensor:
        return self.params.clone()
