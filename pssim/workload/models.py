"""Models as a flat parameter vector plus a forward function, so servers can shard by byte ranges.

A model is a list of named tensors (in forward order) laid out back to back in one flat vector; the
forward pass views slices of that vector. The same layout gives the per-tensor sizes and FLOPs that
timing needs, and backward order is simply the reverse.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pssim.registry import Registry


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    # Multiply-accumulates this tensor costs per sample in the forward pass.
    macs: int

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape))


class FlatModel:
    """A model laid out as one flat parameter vector: its tensors (`TensorSpec`s, in forward order) back to
    back at `offsets`, `views` of them, and a forward pass on the tensors (`forward_tensors`, which a
    subclass writes). Dense layers, the sparse bag of words and the small CNN share this layout."""

    def __init__(self, name: str, tensors: list[TensorSpec]):
        self.name = name
        self.tensors = tensors
        self.offsets = np.cumsum([0] + [t.numel for t in tensors]).tolist()
        self.n_params = self.offsets[-1]

    @property
    def train_flops_per_sample(self) -> float:
        """Forward is 2 FLOPs per MAC; backward costs twice the forward: 6 FLOPs per MAC in all."""
        return 6.0 * sum(t.macs for t in self.tensors)

    def views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        return [flat[a:b].view(t.shape) for t, a, b in zip(self.tensors, self.offsets, self.offsets[1:])]

    def forward(self, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.forward_tensors(self.views(flat), x)

    def forward_tensors(self, params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """The forward pass on the tensors themselves (`views(flat)`, or leaves of their own): a
        gradient then needs no backward through the slicing of one flat vector (`Workload.gradient`)."""
        raise NotImplementedError

    def init(self, generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
        """Every tensor's initial values (`init_tensor`), in order, as one flat vector."""
        return torch.cat([self.init_tensor(t, generator).reshape(-1) for t in self.tensors]).to(dtype)

    def init_tensor(self, t: TensorSpec, generator: torch.Generator) -> torch.Tensor:
        """He-uniform weights (fan-in: the rows of a matrix, in x 3 x 3 of a convolution's kernel), zero
        biases, in float64."""
        if len(t.shape) in (2, 4):
            fan_in = t.shape[0] if len(t.shape) == 2 else int(np.prod(t.shape[1:]))
            bound = float(np.sqrt(6.0 / fan_in))
            return (torch.rand(t.shape, generator=generator, dtype=torch.float64) * 2 - 1) * bound
        return torch.zeros(t.shape, dtype=torch.float64)


class Model(FlatModel):
    """Dense layers (weight, bias) with ReLU between them; no hidden layer is softmax regression."""

    def __init__(self, name: str, widths: list[int]):
        self.widths = list(widths)
        specs = []
        for i, (fan_in, fan_out) in enumerate(zip(widths, widths[1:])):
            specs.append(TensorSpec(f"layer{i}.weight", (fan_in, fan_out), fan_in * fan_out))
            specs.append(TensorSpec(f"layer{i}.bias", (fan_out,), fan_out))
        super().__init__(name, specs)

    def forward_tensors(self, params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        layers = len(params) // 2
        h = x
        for i in range(layers):
            h = h @ params[2 * i] + params[2 * i + 1]
            if i < layers - 1:
                h = F.relu(h)
        return h


def softmax(features: int, classes: int, hidden: list[int], **_) -> Model:
    """Multinomial logistic regression: one dense layer (the `hidden` widths are ignored)."""
    return Model("softmax", [features, classes])


def mlp(features: int, classes: int, hidden: list[int], **_) -> Model:
    return Model("mlp", [features, *hidden, classes])


MODELS = Registry("workload.name")
MODELS.update(softmax=softmax, mlp=mlp)


def build_model(workload):
    """The model a workload config (`workload.*`) names, with its widths."""
    return MODELS.lookup(workload.name)(workload.features, workload.classes, list(workload.hidden),
                                        context=workload.context)
