"""The trained model's state: its flat parameters and optimizer state, owned in one place.

Parameter-server shards hold `slice(lo, hi)` views of it, the replicated-model policies step it
whole; either way one object owns the numbers, so no copy can drift from another.
"""

from __future__ import annotations

import torch


class ModelState:
    """Parameters (a flat vector or a view of one) and the optimizer's state buffers (`state`: one per
    name in `optimizer.state_names`, each the shape of the parameters), stepped by `optimizer`. `steps`
    counts the updates this state (a whole model, or one shard's slice) has applied."""

    def __init__(self, params: torch.Tensor, optimizer, state: dict[str, torch.Tensor] | None = None,
                 steps: int = 0, warmup_steps: int = 0):
        self.params = params
        self.optimizer = optimizer
        self.warmup_steps = warmup_steps  # lr x min(1, t / warmup_steps) at the t-th update (0: none)
        self.state = state if state is not None else {name: torch.zeros_like(params)
                                                      for name in optimizer.state_names}
        self.steps = steps

    @property
    def momentum(self) -> torch.Tensor:
        """SGD's momentum buffer (its only state)."""
        return self.state["momentum"]

    def step(self, grad: torch.Tensor | None, scale: float = 1.0) -> None:
        """One optimizer step; `scale` weighs it (pssim.workload.optimizer: SGD scales its direction,
        Adam and RMSProp their step size)."""
        if grad is not None:
            self.steps += 1
            factor = min(1.0, self.steps / self.warmup_steps) if self.warmup_steps else 1.0
            self.optimizer.step(self.params, grad, self.state, scale, self.steps, factor)

    def slice(self, lo: int, hi: int) -> "ModelState":
        """A view of parameters [lo, hi) and their optimizer state; stepping it steps this state."""
        return ModelState(self.params[lo:hi], self.optimizer, {k: v[lo:hi] for k, v in self.state.items()},
                          self.steps, self.warmup_steps)

    def state_snapshot(self) -> tuple[dict[str, torch.Tensor], int]:
        """A copy of the optimizer state and the step count (a server handing its range over)."""
        return {k: v.clone() for k, v in self.state.items()}, self.steps

    def restore(self, snapshot: tuple[dict[str, torch.Tensor], int] | None) -> None:
        """Put back a `state_snapshot` (None: a fresh state, zeros and no steps)."""
        if snapshot is None:
            for buf in self.state.values():
                buf.zero_()
            self.steps = 0
            return
        state, steps = snapshot
        for k, buf in self.state.items():
            buf.copy_(state[k])
        self.steps = steps

    def snapshot(self) -> torch.Tensor:
        return self.params.clone()
