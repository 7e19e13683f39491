"""Fusion buffers: gradients grouped in backward order into buffers of about `fusion_bytes` each."""

from __future__ import annotations

from dataclasses import dataclass


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
