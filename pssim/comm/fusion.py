"""Fusion buffers: gradients grouped in backward order into buffers, by size alone (`fusion_buffers`:
PyTorch DDP's buckets, Herring's buffers) or by size and readiness on a cycle (`cycle_buffers`: Horovod)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Buffer:
    layers: tuple[int, ...]  # profile layer indices, in backward order
    nbytes: float
    ready: float  # fraction of the step elapsed when its last gradient is ready


def fusion_buffers(profile, fusion_bytes: float) -> list[Buffer]:
    """Fill a buffer with gradients as backward produces them; close it once it holds >= fusion_bytes.

    The last buffer takes whatever remains when backward ends.
    """
    buffers, layers, size = [], [], 0.0
    for index, ready in profile.backward_ready():
        layers.append(index)
        size += profile.layers[index].nbytes
        if size >= fusion_bytes:
            buffers.append(Buffer(tuple(layers), size, ready))
            layers, size = [], 0.0
    if layers:
        buffers.append(Buffer(tuple(layers), size, 1.0))
    return buffers


def cycle_buffers(profile, fusion_bytes: float, cycle_s: float,
                  ready_at: Callable[[float], float]) -> list[tuple[float, Buffer]]:
    """Horovod's tensor fusion (v0.16, horovod/common/operations.cc, RunLoopOnce): (send time, buffer)
    for one step, in the order the buffers are all-reduced.

    A background loop wakes every `cycle_s` (HOROVOD_CYCLE_TIME, 5 ms until v0.21) of the simulated
    clock, from time 0. At each tick the coordinator takes the gradients every rank has reported ready
    since the last tick (`ready_at(fraction)`: when every rank holds a gradient ready that fraction into
    its step) in backward order, and fuses them greedily: a gradient joins the current buffer while the
    buffer stays within `fusion_bytes` (HOROVOD_FUSION_THRESHOLD), else it opens the next one (a larger
    gradient goes alone). So buffers depend on when gradients are ready, not only on their sizes.
    """
    ticks: dict[int, list[tuple[int, float]]] = {}
    for index, ready in profile.backward_ready():
        tick = math.ceil(ready_at(ready) / cycle_s - 1e-9)  # the first tick at or after it is ready
        ticks.setdefault(tick, []).append((index, ready))
    out = []
    for tick in sorted(ticks):
        layers, size, last = [], 0.0, 0.0
        for index, ready in ticks[tick]:
            nbytes = profile.layers[index].nbytes
            if layers and size + nbytes > fusion_bytes:
                out.append((tick * cycle_s, Buffer(tuple(layers), size, last)))
                layers, size = [], 0.0
            layers.append(index)
            size += nbytes
            last = ready
        out.append((tick * cycle_s, Buffer(tuple(layers), size, last)))
    return out
