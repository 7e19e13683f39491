"""A small convolutional network on generated images: for claims about model depth and structure that an
MLP cannot make (Dai et al. ran CNNs).

`SmallCNN` reads a `side` x `side` one-channel image (the `features` = side^2 inputs, row by row), runs
3x3 convolutions (padding 1, ReLU) of the `hidden` channel widths, averages each channel over the image,
and classifies with a dense layer. `shifted_patterns` generates the images: each class is a random smooth
template, and a sample is its class's template shifted cyclically by a random offset, plus noise, so that
the label is a pattern anywhere in the image (what convolutions are for).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from pssim.workload.data import DATASETS, Dataset
from pssim.workload.models import MODELS, FlatModel, TensorSpec
from pssim.workload.profiles import BYTES_PER_PARAM, Layer, Profile


class SmallCNN(FlatModel):
    """Convolutions of `channels` widths on side x side images, global average pooling, a dense layer, as
    one flat vector (`FlatModel`, whose He-uniform init takes a kernel's fan-in), with its timing profile."""

    def __init__(self, features: int, classes: int, channels: list[int]):
        side = math.isqrt(features)
        if side * side != features or not channels:
            raise ValueError(f"workload.features ({features}) must be a square number of pixels and "
                             f"workload.hidden ({channels}) at least one channel width for cnn")
        self.side, self.channels = side, list(channels)
        pixels = side * side
        specs, cin = [], 1
        for i, cout in enumerate(channels):
            specs += [TensorSpec(f"conv{i}.weight", (cout, cin, 3, 3), 9 * cin * cout * pixels),
                      TensorSpec(f"conv{i}.bias", (cout,), cout * pixels)]
            cin = cout
        specs += [TensorSpec("fc.weight", (cin, classes), cin * classes), TensorSpec("fc.bias", (classes,), classes)]
        super().__init__("cnn", specs)

    def forward_tensors(self, params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        h = x.view(-1, 1, self.side, self.side)
        for i in range(len(self.channels)):
            h = F.relu(F.conv2d(h, params[2 * i], params[2 * i + 1], padding=1))
        return h.mean(dim=(2, 3)) @ params[-2] + params[-1]

    def timing_profile(self) -> Profile:
        """Each convolution (with its bias) a conv3x3 layer, its output channels x pixels of activations
        with one ReLU on them; the dense layer a GEMM."""
        pixels, layers = self.side * self.side, []
        for i, cout in enumerate(self.channels):
            w, b = self.tensors[2 * i], self.tensors[2 * i + 1]
            layers.append(Layer(f"conv{i}", w.numel + b.numel, w.macs, cout * pixels * BYTES_PER_PARAM,
                                op="conv3x3", elementwise=cout * pixels))
        w, b = self.tensors[-2], self.tensors[-1]
        layers.append(Layer("fc", w.numel + b.numel, w.macs + b.macs, w.shape[1] * BYTES_PER_PARAM,
                            elementwise=w.shape[1]))
        return Profile(self.name, tuple(layers))


def cnn(features: int, classes: int, hidden: list[int], **_) -> SmallCNN:
    return SmallCNN(features, classes, hidden)


def shifted_patterns(rng: np.random.Generator, features: int, classes: int, train: int, evaluation: int,
                     dtype: torch.dtype, separation: float = 2.0, **_) -> Dataset:
    """side x side images (features = side^2): class c's template is smoothed Gaussian noise (a 3x3 box
    blur, scaled to unit variance, times `separation`); a sample is its class's template rolled by a
    uniform random offset in both directions, plus unit Gaussian noise."""
    side = math.isqrt(features)
    if side * side != features:
        raise ValueError(f"workload.features ({features}) must be a square number of pixels")
    raw = rng.standard_normal((classes, side, side))
    blurred = sum(np.roll(raw, (dy, dx), axis=(1, 2)) for dy in (-1, 0, 1) for dx in (-1, 0, 1))
    templates = separation * blurred / blurred.std(axis=(1, 2), keepdims=True)
    n = train + evaluation
    y = rng.integers(0, classes, size=n)
    shifts = rng.integers(0, side, size=(n, 2))
    rows = (np.arange(side)[None, :] - shifts[:, :1]) % side  # rolled row index per sample
    cols = (np.arange(side)[None, :] - shifts[:, 1:]) % side
    x = templates[y[:, None, None], rows[:, :, None], cols[:, None, :]] + rng.standard_normal((n, side, side))
    xt = torch.as_tensor(x.reshape(n, features), dtype=dtype)
    yt = torch.as_tensor(y, dtype=torch.long)
    return Dataset(xt[:train], yt[:train], xt[train:], yt[train:])


MODELS["cnn"] = cnn
DATASETS["shifted_patterns"] = shifted_patterns
