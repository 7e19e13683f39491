"""Push and pull between workers and sharded parameter servers, over the flow network.

The model is cut into `servers` contiguous ranges of equal bytes (as ps-lite partitions its key range);
a push sends each shard its slice of the gradient, a pull fetches each shard's slice of the parameters.
Slices move concurrently, so a pull from k shards is k flows sharing the worker's NIC. What a shard does
with an arriving gradient (accumulate, apply at once) is the policy's `on_arrival`; this module only
moves bytes, charges server CPU and keeps the per-step record.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from pssim.comm.server import ServerShard


def shard_ranges(n_params: int, servers: int) -> list[tuple[int, int]]:
    """Contiguous [lo, hi) ranges of near-equal size (they differ by at most one parameter)."""
    edges = np.linspace(0, n_params, servers + 1).round().astype(int)
    return list(zip(edges[:-1].tolist(), edges[1:].tolist()))


class ParameterServers:
    """The group of shards and the push/pull primitives policies use.

    Args:
        env, network: the simulation's clock and flow network.
        shards: the shards, covering the model in order.
        receive_cpu_s_per_byte: server CPU per byte received (transport plus aggregation).
        send_cpu_s_per_byte: server CPU per byte sent (transport).
        on_version: called after any shard applies an update (the run tracks global progress).
    """

    def __init__(self, env, network, shards: list[ServerShard], receive_cpu_s_per_byte: float,
                 send_cpu_s_per_byte: float, on_version: Callable[[], None]):
        self.env = env
        self.network = network
        self.shards = shards
        self.receive_cpu = receive_cpu_s_per_byte
        self.send_cpu = send_cpu_s_per_byte
        self._on_version = on_version

    def apply(self, shard: ServerShard, grad, scale: float = 1.0) -> None:
        """Apply one optimizer step on a shard and tell the run its version moved."""
        shard.apply(grad, scale)
        self._on_version()

    def push(self, worker, grad: torch.Tensor | None, on_arrival: Callable):
        """Send every shard its slice of `grad`; returns what each shard's on_arrival returned."""
        rec = worker.current
        rec.comm_start = self.env.now
        procs = [self.env.process(self._push_shard(worker, s, grad, on_arrival)) for s in self.shards]
        results = yield self.env.all_of(procs)
        rec.push_end = self.env.now
        rec.bytes_sent += sum(s.nbytes for s in self.shards)
        return [results[p] for p in procs]

    def _push_shard(self, worker, shard: ServerShard, grad, on_arrival: Callable):
        yield self.network.send(worker.host, shard.host, shard.nbytes, f"push w{worker.index}")
        yield from shard.cpu.work(shard.nbytes * self.receive_cpu, f"recv w{worker.index}")
        result = on_arrival(shard, worker, None if grad is None else grad[shard.lo:shard.hi])
        worker.delivered += 1
        return result

    def pull(self, worker, min_version: int = 0):
        """Fetch every shard once its version is >= min_version; returns (params, per-shard versions)."""
        procs = [self.env.process(self._pull_shard(worker, s, min_version)) for s in self.shards]
        results = yield self.env.all_of(procs)
        parts = [results[p] for p in procs]
        if worker.current is not None:
            worker.current.bytes_received += sum(s.nbytes for s in self.shards)
        versions = [v for _, v in parts]
        if parts[0][0] is None:
            return None, versions
        return torch.cat([p for p, _ in parts]), versions

    def _pull_shard(self, worker, shard: ServerShard, min_version: int):
        yield self.network.send(worker.host, shard.host, 0, f"pull-req w{worker.index}")
        yield shard.reached(min_version)
        yield from shard.cpu.work(shard.nbytes * self.send_cpu, f"send w{worker.index}")
        snapshot, version = shard.snapshot(), shard.version
        yield self.network.send(shard.host, worker.host, shard.nbytes, f"pull w{worker.index}")
        return snapshot, version
