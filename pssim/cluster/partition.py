"""Stage partitioning for a pipeline of heterogeneous GPUs (HetPipe, section 4.1).

The model's layers are cut into k consecutive, non-empty stages, stage s running on GPU s of the
virtual worker. Stage s's time is its GPU's fixed overhead plus the per-layer times of its layers on
that GPU's type (pssim/cluster/compute.py); its memory is

    weights, their gradient and momentum (WEIGHT_COPIES x 4 bytes per parameter)
    + the output activations of its layers for `in_flight` minibatches (each stage keeps a minibatch's
      activations from its forward to its backward, and up to Nm minibatches are in flight).

`balance` picks, among the cuts whose every stage fits its GPU's memory, one that minimises the slowest
stage's time (the pipeline's throughput is set by its slowest stage): an exact dynamic programme over
(stage, first layer of the next stage), ties to the earliest cut. `NoFit` says which stage's GPU could
not hold any part of the model that the stages before it leave to it.
"""

from __future__ import annotations

import math
from typing import Sequence

WEIGHT_COPIES = 3  # weights, gradient, momentum (fp32)
BYTES = 4


class NoFit(ValueError):
    """No cut fits the GPUs' memory: `stage` is the first stage whose GPU cannot hold what the stages
    before it can leave to it; `need` the fewest bytes it would need (over those options)."""

    def __init__(self, stage: int, need: float, capacity: float):
        super().__init__(stage, need, capacity)
        self.stage, self.need, self.capacity = stage, need, capacity


def stage_bytes(params: Sequence[int], activations: Sequence[float], in_flight: int) -> list[float]:
    """Per layer, the memory it takes on its stage's GPU: its weights (with gradient and momentum) and
    its output activations (per minibatch, `activations`) for `in_flight` minibatches."""
    return [WEIGHT_COPIES * BYTES * p + in_flight * a for p, a in zip(params, activations)]


def balance(times: Sequence[Sequence[float]], overheads: Sequence[float], memory: Sequence[float],
            capacities: Sequence[float]) -> tuple[range, ...]:
    """Cut n layers into k = len(times) consecutive non-empty stages, minimising the slowest stage.

    times[s][l]: layer l's seconds on stage s's GPU; overheads[s]: stage s's fixed seconds; memory[l]:
    layer l's bytes (`stage_bytes`); capacities[s]: stage s's GPU memory in bytes. Raises NoFit.
    """
    k, n = len(times), len(memory)
    if not 1 <= k <= n:
        raise ValueError(f"cannot cut {n} layers into {k} non-empty stages")
    pre_t = [[0.0] for _ in range(k)]
    for s in range(k):
        for t in times[s]:
            pre_t[s].append(pre_t[s][-1] + t)
    pre_m = [0.0]
    for m in memory:
        pre_m.append(pre_m[-1] + m)
    inf = math.inf
    # best[s][b]: the least slowest-stage time of stages 0..s covering layers [0, b); arg: where s began.
    best = [[inf] * (n + 1) for _ in range(k)]
    arg = [[-1] * (n + 1) for _ in range(k)]
    prev = [0.0] + [inf] * n  # stages "before 0" cover nothing
    for s in range(k):
        ends = [n] if s == k - 1 else range(s + 1, n - (k - 1 - s) + 1)  # the last stage ends the model
        for b in ends:
            for a in range(s, b):
                if prev[a] == inf or pre_m[b] - pre_m[a] > capacities[s]:
                    continue
                cost = max(prev[a], overheads[s] + pre_t[s][b] - pre_t[s][a])
                if cost < best[s][b]:
                    best[s][b], arg[s][b] = cost, a
        if all(best[s][b] == inf for b in ends):
            need = min((pre_m[b] - pre_m[a] for b in ends for a in range(s, b) if prev[a] < inf), default=inf)
            raise NoFit(s, need, capacities[s])
        prev = best[s]
    cuts, b = [n], n
    for s in reversed(range(k)):
        b = arg[s][b]
        cuts.append(b)
    cuts.reverse()
    return tuple(range(a, b) for a, b in zip(cuts, cuts[1:]))
