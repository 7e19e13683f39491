"""SGD with momentum and weight decay, applied in place to a slice of the parameters.

It follows torch.optim.SGD (dampening 0, no Nesterov) exactly, so a server shard applying it to its
slice produces the same numbers as torch applying it to the whole vector.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SGD:
    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0

    def step(self, param: torch.Tensor, grad: torch.Tensor, buf: torch.Tensor) -> None:
        """param -= lr * (momentum * buf + grad + weight_decay * param), updating buf in place."""
        d = grad.add(param, alpha=self.weight_decay) if self.weight_decay else grad
        if self.momentum:
            buf.mul_(self.momentum).add_(d)
            d = buf
        param.add_(d, alpha=-self.lr)
