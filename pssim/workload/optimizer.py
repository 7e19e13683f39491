"""The optimizers the servers (or every replica) run: SGD with momentum, Adam and RMSProp, applied in place
to a slice of the parameters with their state.

Each follows its torch.optim counterpart (SGD: dampening 0, no Nesterov; Adam: L2 weight decay added to
the gradient, no AMSGrad; RMSprop: not centered) operation for operation, so a server shard applying it
to its slice produces the numbers torch produces on the whole vector. An optimizer names its state
tensors (`state_names`: one buffer the shape of the parameters each), which `ModelState` keeps and
slices with the parameters, so they shard across servers as the parameters do; a state's step count
(Adam's bias correction) is the number of updates its slice has applied.

A learning-rate warm-up (`warmup_steps` w, Goyal et al. 2017) multiplies lr by min(1, t / w) at a
state's t-th update (t = 1, 2, ...), as torch's LambdaLR(lambda k: min(1, (k + 1) / w)) does.

`scale` weighs one update (an asynchronous rule's 1/n, or 1/staleness): SGD multiplies the direction it
adds to its momentum (gradient plus weight decay), so n updates at 1/n move the model as one BSP step
does; Adam and RMSProp, whose steps do not depend on the gradient's scale, multiply their step size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pssim.config import OPTIMIZERS  # noqa: F401  (the names `make_optimizer` builds)


@dataclass(frozen=True)
class SGD:
    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0
    state_names = ("momentum",)

    def step(self, param: torch.Tensor, grad: torch.Tensor, state: dict, scale: float = 1.0, t: int = 1,
             lr_factor: float = 1.0) -> None:
        """param -= lr * (momentum * buf + d), d = scale * (grad + weight_decay * param); buf updated in place.
        `lr_factor` multiplies lr (a schedule: warm-up), as torch's schedulers set it before a step.

        `scale` multiplies the whole direction, weight decay included: an asynchronous server that
        applies each of n gradients at 1/n must also decay at 1/n, or it decays n times too strongly.
        """
        d = grad.add(param, alpha=self.weight_decay) if self.weight_decay else grad
        if scale != 1.0:
            d = d * scale
        if self.momentum:
            buf = state["momentum"]
            buf.mul_(self.momentum).add_(d)
            d = buf
        param.add_(d, alpha=-self.lr * lr_factor)


@dataclass(frozen=True)
class Adam:
    """torch.optim.Adam: m = b1 m + (1-b1) g, v = b2 v + (1-b2) g^2, p -= lr/(1-b1^t) m / (sqrt(v)/sqrt(1-b2^t) + eps)."""

    lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    state_names = ("exp_avg", "exp_avg_sq")

    def step(self, param: torch.Tensor, grad: torch.Tensor, state: dict, scale: float = 1.0, t: int = 1,
             lr_factor: float = 1.0) -> None:
        """One step, the t-th of this state (t >= 1); the step size is scaled by `scale` and `lr_factor`."""
        beta1, beta2 = self.betas
        g = grad.add(param, alpha=self.weight_decay) if self.weight_decay else grad
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.lerp_(g, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(g, g.conj(), value=1 - beta2)
        step_size = self.lr * lr_factor * scale / (1 - beta1 ** t)
        denom = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2 ** t)).add_(self.eps)
        param.addcdiv_(exp_avg, denom, value=-step_size)


@dataclass(frozen=True)
class RMSprop:
    """torch.optim.RMSprop: v = a v + (1-a) g^2; with momentum buf = mu buf + g / (sqrt(v) + eps), p -= lr buf;
    without, p -= lr g / (sqrt(v) + eps)."""

    lr: float
    alpha: float = 0.99
    eps: float = 1e-8
    momentum: float = 0.0
    weight_decay: float = 0.0
    state_names = ("square_avg", "momentum")

    def step(self, param: torch.Tensor, grad: torch.Tensor, state: dict, scale: float = 1.0, t: int = 1,
             lr_factor: float = 1.0) -> None:
        g = grad.add(param, alpha=self.weight_decay) if self.weight_decay else grad
        square_avg = state["square_avg"]
        square_avg.mul_(self.alpha).addcmul_(g, g, value=1 - self.alpha)
        avg = square_avg.sqrt().add_(self.eps)
        if self.momentum > 0:
            buf = state["momentum"]
            buf.mul_(self.momentum).addcdiv_(g, avg)
            param.add_(buf, alpha=-self.lr * lr_factor * scale)
        else:
            param.addcdiv_(g, avg, value=-self.lr * lr_factor * scale)


def make_optimizer(train):
    """The optimizer a train config (`train.*`) names, with its hyperparameters."""
    if train.optimizer == "adam":
        return Adam(train.lr, tuple(train.betas), train.eps, train.weight_decay)
    if train.optimizer == "rmsprop":
        return RMSprop(train.lr, train.alpha, train.eps, train.momentum, train.weight_decay)
    return SGD(train.lr, train.momentum, train.weight_decay)
