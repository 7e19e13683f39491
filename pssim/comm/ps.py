"""Push and pull between workers and sharded parameter servers, over the flow network.

The model is cut into `servers` contiguous ranges of equal bytes (as ps-lite partitions its key range);
a push sends each shard its slice of the gradient, a pull fetches each shard's slice of the parameters.
Slices move concurrently, so a pull from k shards is k flows sharing the worker's NIC. What a shard does
with an arriving gradient (accumulate, apply at once) is the policy's `on_arrival`; this module only
moves bytes, charges server CPU and keeps the per-step record.

Keys. A shard owns numerics parameters [lo, hi) and, on the wire, the same share of the timing profile's
bytes. Expressed in the profile's terms, it holds `Key`s: the profile's layers laid end to end in bytes,
cut at boundary_j = profile.nbytes * lo_j / n_params, give each shard the pieces of the layers between
its boundaries (a layer cut by a boundary gives each shard its piece). A dense key's push carries its
bytes; a sparse key's (a piece of an embedding table) carries only the rows the batch touched
(`Key.push_bytes`). Shard j's bytes stay exactly `ServerShard.nbytes` (= the profile's share, as before)
whenever no sparse key is pushed with a row count, so profiles without sparse layers move the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from pssim.comm.server import ServerShard


def shard_ranges(n_params: int, servers: int) -> list[tuple[int, int]]:
    """Contiguous [lo, hi) ranges of near-equal size (they differ by at most one parameter)."""
    edges = np.linspace(0, n_params, servers + 1).round().astype(int)
    return list(zip(edges[:-1].tolist(), edges[1:].tolist()))


@dataclass(frozen=True)
class Key:
    """A piece of one profile layer held by one shard: bytes [offset, offset + nbytes) of the layer.

    A piece of a sparse layer (an embedding table of `layer_rows` rows of `row_bytes` each) holds `rows`
    of them, rows [first_row, first_row + rows): row r lives in the piece that holds its first byte.
    A dense piece has layer_rows = rows = 0. Boundaries fall where the numerics model's shard ranges put
    them, so `offset` and `nbytes` may be fractional; a shard's pieces add up to its bytes.
    """

    layer: int  # index of the layer in the timing profile
    offset: float  # bytes into the layer where this piece starts
    nbytes: float
    rows: int = 0
    first_row: int = 0
    layer_rows: int = 0
    row_bytes: int = 0

    @property
    def sparse(self) -> bool:
        return self.layer_rows > 0

    def touched(self, rows_touched: int) -> int:
        """This piece's share of `rows_touched` rows of its layer, spread evenly over the layer's rows.

        With t = min(rows_touched, layer_rows) and C the rows of the layer before this piece, the share is
        floor(t * (C + rows) / layer_rows) - floor(t * C / layer_rows): integers, never above `rows`, and
        over the layer's pieces they sum to exactly t.
        """
        t = min(max(rows_touched, 0), self.layer_rows)
        end = self.first_row + self.rows
        return min(t * end // self.layer_rows - t * self.first_row // self.layer_rows, self.rows)

    def push_bytes(self, rows_touched: int | None = None) -> float:
        """Bytes a push of this key carries: all of them for a dense key, or when the rows touched are not
        given (None); for a sparse key with `rows_touched` rows of its layer touched, its share of them
        (`touched`) times row_bytes."""
        if not self.sparse or rows_touched is None:
            return self.nbytes
        return self.touched(rows_touched) * self.row_bytes


def shard_keys(profile, ranges: list[tuple[int, int]], n_params: int) -> list[list[Key]]:
    """The keys of each shard: the profile's byte layout cut at profile.nbytes * lo_j / n_params."""
    total = profile.nbytes
    bounds = [total * lo / n_params for lo, _ in ranges] + [float(total)]
    starts = np.cumsum([0] + [layer.nbytes for layer in profile.layers]).tolist()
    keys: list[list[Key]] = []
    for a, b in zip(bounds, bounds[1:]):
        pieces = []
        for i, layer in enumerate(profile.layers):
            lo, hi = max(a, starts[i]), min(b, starts[i + 1])
            if hi <= lo:
                continue
            offset, end = lo - starts[i], hi - starts[i]
            if layer.sparse:
                rb = layer.row_bytes
                first, last = -int(-offset // rb), -int(-end // rb)  # ceil: a row lives with its first byte
                pieces.append(Key(i, offset, hi - lo, last - first, first, layer.rows, rb))
            else:
                pieces.append(Key(i, offset, hi - lo))
        keys.append(pieces)
    return keys


class ParameterServers:
    """The group of shards and the push/pull primitives policies use.

    Args:
        env, network: the simulation's clock and flow network.
        shards: the shards, covering the model in order.
        receive_cpu_s_per_byte: server CPU per byte received (transport plus aggregation).
        send_cpu_s_per_byte: server CPU per byte sent (transport).
        on_version: called after any shard applies an update (the run tracks global progress).
        keys: each shard's keys by shard index (`shard_keys`); a shard without keys is one dense block
            of its `nbytes`.
    """

    def __init__(self, env, network, shards: list[ServerShard], receive_cpu_s_per_byte: float,
                 send_cpu_s_per_byte: float, on_version: Callable[[], None],
                 keys: dict[int, list[Key]] | None = None):
        self.env = env
        self.network = network
        self.shards = shards
        self.receive_cpu = receive_cpu_s_per_byte
        self.send_cpu = send_cpu_s_per_byte
        self._on_version = on_version
        self.keys: dict[int, list[Key]] = dict(keys or {})
        # Server crashes (bounded_delay's replicated ranges): a shard's `host` is the server that owns it
        # now; a push or pull whose server lost the range before it completed is sent again to the new
        # owner, and `on_resend(nbytes)` (if set) is told of the bytes sent again.
        self.on_resend: Callable[[float], None] | None = None
        self._assembled: tuple[list, torch.Tensor] | None = None  # the last pull's (snapshots, vector)

    def push_bytes(self, shard: ServerShard, rows_touched: dict[int, int] | None = None) -> float:
        """Bytes a push to `shard` carries: its `nbytes` unless it holds sparse keys and `rows_touched`
        (rows touched per sparse profile layer index) names their layer; then its dense keys' bytes plus
        each sparse key's `Key.push_bytes`. A sparse layer missing from `rows_touched` is pushed whole."""
        keys = self.keys.get(shard.index, ())
        if not rows_touched or not any(k.sparse and k.layer in rows_touched for k in keys):
            return shard.nbytes
        return sum(k.push_bytes(rows_touched.get(k.layer)) for k in keys)

    def apply(self, shard: ServerShard, grad, scale: float = 1.0) -> None:
        """Apply one optimizer step on a shard and tell the run its version moved."""
        shard.apply(grad, scale)
        self._on_version()

    def push(self, worker, grad: torch.Tensor | None, on_arrival: Callable,
             rows_touched: dict[int, int] | None = None):
        """Send every shard its slice of `grad`; returns what each shard's on_arrival returned.

        `rows_touched` maps a sparse profile layer's index to the rows of it this step's batch touched:
        its keys then carry only their share of those rows (`push_bytes`); None pushes every key whole.
        Only bytes change: on_arrival still gets the dense gradient slice.
        """
        worker.current.comm_start = self.env.now
        parts = _Parts(self.env, len(self.shards))
        for j, shard in enumerate(self.shards):
            self._push_shard(worker, worker.current, shard, self.push_bytes(shard, rows_touched), grad, on_arrival,
                             parts, j)
        return (yield parts.event)

    def _push_shard(self, worker, rec, shard: ServerShard, nbytes: float, grad, on_arrival: Callable,
                    parts: "_Parts", j: int) -> None:
        """One shard's part of a push, driven by callbacks (no process of its own): the bytes cross the
        network, the shard's CPU takes them in (FIFO), then on_arrival. If the shard's server lost the
        range meanwhile (a crash), the part is sent again to the range's new primary. The step's record
        is updated as each shard takes the gradient (bytes_sent; push_end at the last), so it is right
        even if that apply ends the run."""
        host = shard.host  # `rec`: the step's record as the push began; a resend keeps it (the worker may
        # have crashed since, leaving worker.current None or another step's record)

        def landed(event) -> None:
            if parts.failed(event):
                return
            if not shard.up:  # a shard marked down refuses the push
                parts.fail(shard.refusal())
                return
            shard.cpu.then(nbytes * self.receive_cpu, f"recv w{worker.index}", taken)

        def taken() -> None:
            if shard.host != host:  # its server crashed meanwhile: send it again to the range's new primary
                self._resent(nbytes)
                self._push_shard(worker, rec, shard, nbytes, grad, on_arrival, parts, j)
                return
            rec.bytes_sent += nbytes
            worker.delivered += 1
            if worker.delivered == len(self.shards):
                rec.push_end = self.env.now
            try:
                result = on_arrival(shard, worker, None if grad is None else grad[shard.lo:shard.hi])
            except Exception as error:  # noqa: BLE001 - the pusher gets it, as from a process of its own
                parts.fail(error)
                return
            parts.put(j, result)

        self.network.send(worker.host, host, nbytes, f"push w{worker.index}").callbacks.append(landed)

    def pull(self, worker, min_version: int = 0):
        """Fetch every shard once its version is >= min_version; returns (params, per-shard versions).

        The worker keeps what it pulled as its local parameters (`worker.params`, `worker.version`: the
        oldest shard's version). A pull carries every shard's full bytes.
        """
        parts = _Parts(self.env, len(self.shards))
        for j, shard in enumerate(self.shards):
            self._pull_shard(worker, shard, min_version, parts, j)
        parts = yield parts.event
        if worker.current is not None:
            worker.current.bytes_received += sum(s.nbytes for s in self.shards)
        versions = [v for _, v in parts]
        params = self._assemble([p for p, _ in parts])
        worker.params, worker.version = params, min(versions)  # the worker's local copy, as pulled
        return params, versions

    def _assemble(self, snapshots: list) -> torch.Tensor | None:
        """The whole parameter vector from the shards' snapshots: the same tensor as the last pull's when
        every shard handed out the same snapshot (`ServerShard.snapshot`), so the workers that pulled one
        version share one tensor (one copy in memory, not one per worker); a new one otherwise. Nobody
        writes to it."""
        if snapshots[0] is None:
            return None
        last = self._assembled
        if last is not None and len(last[0]) == len(snapshots) and all(a is b for a, b in zip(last[0], snapshots)):
            return last[1]
        params = snapshots[0] if len(snapshots) == 1 else torch.cat(snapshots)
        self._assembled = (snapshots, params)
        return params

    def _pull_shard(self, worker, shard: ServerShard, min_version: int, parts: "_Parts", j: int) -> None:
        """One shard's part of a pull, by callbacks: the request crosses the network, waits for the
        shard's version, the shard's CPU sends (FIFO) a snapshot taken when it is done, and the bytes
        cross back. Asked again of the range's new primary if its server crashed before they landed."""
        host = shard.host

        def asked(event) -> None:
            if parts.failed(event):
                return
            shard.reached(min_version).callbacks.append(ready)

        def ready(event) -> None:
            if parts.failed(event):  # the shard went down (ShardDown)
                return
            shard.cpu.then(shard.nbytes * self.send_cpu, f"send w{worker.index}", send)

        def send() -> None:
            snapshot, version = shard.snapshot(), shard.version
            self.network.send(host, worker.host, shard.nbytes, f"pull w{worker.index}").callbacks.append(
                lambda event: landed(event, snapshot, version))

        def landed(event, snapshot, version) -> None:
            if parts.failed(event):
                return
            if shard.host == host:
                parts.put(j, (snapshot, version))
            else:  # its server crashed before the reply landed: ask the new primary
                self._resent(shard.nbytes)
                self._pull_shard(worker, shard, min_version, parts, j)

        self.network.send(worker.host, host, 0, f"pull-req w{worker.index}").callbacks.append(asked)

    def _resent(self, nbytes: float) -> None:
        if self.on_resend is not None:
            self.on_resend(nbytes)


class _Parts:
    """One event for the per-shard parts of a push or a pull: it succeeds with the parts in shard order
    once every part is in, or fails with the first error (the other parts go on; later errors are
    dropped, as the waiter has been told)."""

    def __init__(self, env, count: int):
        self.event = env.event()
        # A waiter that was interrupted (its worker crashed) no longer listens: a part failing after
        # that must not stop the run. A waiter still yielding on it gets the error as before.
        self.event.defused = True
        self.parts: list = [None] * count
        self.left = count

    def put(self, j: int, value) -> None:
        self.parts[j] = value
        self.left -= 1
        if not self.left and not self.event.triggered:
            self.event.succeed(self.parts)

    def fail(self, error: BaseException) -> None:
        if not self.event.triggered:
            self.event.fail(error)

    def failed(self, event) -> bool:
        """If a part's `event` failed (a network error, ShardDown), take its error as this push's or
        pull's (`fail`; the event itself is handled) and say so."""
        if event.ok:
            return False
        event.defused = True
        self.fail(event.value)
        return True
