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

    def step(self, param: torch.Tensor, grad: torch.Tensor, buf: torch.Tensor, scale: float = 1.0) -> None:
        """param -= lr * (momentum * buf + d), d = scale * (grad + weight_decay * param); buf updated in place.

        `scale` multiplies the whole direction, weight decay included: an asynchronous server that
        applies each of n gradients at 1/n must also decay at 1/n, or it decays n times too strongly.
        """
        d = grad.add(param, alpha=self.weight_decay) if self.weight_decay else grad
        if scale != 1.0:
            d = d * scale
        if self.momentum:
            buf.mul_(self.momentum).add_(d)
            d = buf
        param.add_(d, alpha=-self.lr)
