"""HetPipe's allocation policies: which GPUs of a heterogeneous cluster form each virtual worker (VW).

A VW is k GPUs running one pipeline of k stages (Park et al., USENIX ATC'20, section 6). With G GPUs
listed machine by machine (`cluster.gpu_devices`, g = gpus_per_machine each), G / k VWs are formed:

- `np` (node partition): VW i is GPUs i*k .. i*k + k - 1, so with k = g a VW is one whole node. VWs
  of different nodes differ in speed (their GPU types), but a VW's activations never leave its node.
- `ed` (equal distribution): every VW gets one GPU of each type (k must equal the number of types and
  each type must have one GPU per VW): identical VWs, but every stage boundary crosses the network
  when the types sit in different nodes.
- `hd` (hybrid distribution): the types are paired, fastest with slowest, second fastest with second
  slowest (speed: the device's peak fp32 FLOP/s), and each VW gets k/2 GPUs of each type of one pair:
  VWs of similar speed, half of whose stage boundaries stay inside a node.

Stages follow the order given here: in `ed` the types in the order they first appear in the cluster,
in `hd` the faster type's GPUs first; within a type, GPUs in index order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

ALLOCATIONS = ("np", "ed", "hd")


@dataclass(frozen=True)
class Placement:
    """Where each worker runs: its GPU indices in stage order, and each stage's profile layers."""

    gpus: tuple[tuple[int, ...], ...]
    layers: tuple[tuple[range, ...], ...]


def _types(devices: Sequence[str]) -> dict[str, list[int]]:
    """Each device type's GPU indices, types in the order they first appear."""
    out: dict[str, list[int]] = {}
    for i, d in enumerate(devices):
        out.setdefault(d, []).append(i)
    return out


def allocate(policy: str, devices: Sequence[str], k: int, speed: Callable[[str], float]) -> tuple[tuple[int, ...], ...]:
    """The VWs (each a tuple of GPU indices in stage order) that `policy` forms from the GPUs `devices`
    (one device name per GPU, in GPU order) with k GPUs per VW. ValueError says why it cannot."""
    g = len(devices)
    if k < 1 or g % k:
        raise ValueError(f"{g} GPUs do not split into virtual workers of {k}")
    vws = g // k
    if policy == "np":
        return tuple(tuple(range(i * k, (i + 1) * k)) for i in range(vws))
    types = _types(devices)
    if policy == "ed":
        if len(types) != k or any(len(ids) != vws for ids in types.values()):
            counts = ", ".join(f"{len(ids)} {t}" for t, ids in types.items())
            raise ValueError(f"ed gives every virtual worker one GPU of each type: it needs k = {len(types)} GPUs "
                             f"per worker and {vws} GPUs of each type, not k = {k} with {counts}")
        return tuple(tuple(ids[i] for ids in types.values()) for i in range(vws))
    if policy == "hd":
        order = sorted(types, key=lambda t: (-speed(t), list(types).index(t)))
        half = k // 2
        if k % 2 or len(order) % 2:
            raise ValueError(f"hd pairs GPU types two by two, half a virtual worker each: it needs an even k (not "
                             f"{k}) and an even number of types (not {len(order)})")
        out = []
        for fast, slow in zip(order[:len(order) // 2], reversed(order[len(order) // 2:])):
            a, b = types[fast], types[slow]
            if len(a) != len(b) or len(a) % half:
                raise ValueError(f"hd pairs {fast} ({len(a)} GPUs) with {slow} ({len(b)}): each needs the same "
                                 f"number of GPUs, a multiple of k/2 = {half}")
            out += [tuple(a[i:i + half] + b[i:i + half]) for i in range(0, len(a), half)]
        return tuple(out)
    raise ValueError(f"unknown allocation policy {policy!r}; allowed values are {', '.join(ALLOCATIONS)}")
