"""Shared helpers: small, fast configurations and an independent plain-torch reference model."""

import pytest
import torch
import torch.nn as nn
from hypothesis import settings

from pssim import to_config
from pssim.seeding import Streams
from pssim.workload import Workload

# Property-based tests draw the same examples on every run (a seed derived from each test), so a CI run
# is reproducible; draw new ones locally with --hypothesis-profile=default.
settings.register_profile("pssim", derandomize=True)
settings.load_profile("pssim")

FAST = {
    "train.steps": 24,
    "eval.every": 8,
    "workload.train_samples": 2048,
    "workload.eval_samples": 256,
    "output.progress": False,
    "output.trace": False,
}


def fast(**overrides):
    """Keyword overrides with dots written as '__': fast(cluster__workers=4)."""
    merged = dict(FAST)
    merged.update({k.replace("__", "."): v for k, v in overrides.items()})
    return merged


def workload_for(cfg):
    """The Workload a run with this config uses (same seed, so the same data, shards and init)."""
    return Workload(cfg.workload, cfg.cluster.workers, cfg.train.batch_size, Streams(cfg.seed))


def torch_mlp(flat: torch.Tensor, widths: list[int]) -> nn.Sequential:
    """An nn.Sequential of Linear/ReLU whose weights are read from pssim's flat layout.

    pssim stores each weight as (fan_in, fan_out) then its bias; nn.Linear keeps weight as
    (fan_out, fan_in), hence the transpose. Used as an independent reference for the numerics.
    """
    layers, offset = [], 0
    for i, (fan_in, fan_out) in enumerate(zip(widths, widths[1:])):
        lin = nn.Linear(fan_in, fan_out, dtype=flat.dtype)
        with torch.no_grad():
            lin.weight.copy_(flat[offset:offset + fan_in * fan_out].view(fan_in, fan_out).T)
            offset += fan_in * fan_out
            lin.bias.copy_(flat[offset:offset + fan_out])
            offset += fan_out
        layers.append(lin)
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def flatten_torch(model: nn.Sequential) -> torch.Tensor:
    """Back to pssim's layout: each weight transposed to (fan_in, fan_out), then its bias."""
    parts = []
    for m in model:
        if isinstance(m, nn.Linear):
            parts += [m.weight.detach().T.reshape(-1), m.bias.detach()]
    return torch.cat(parts)


@pytest.fixture
def config():
    return lambda **kw: to_config(**fast(**kw))
