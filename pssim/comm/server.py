"""A parameter-server shard: a contiguous range of the model, its optimizer state, version and CPU."""

from __future__ import annotations

import simpy
import torch  # noqa: F401  (annotations)

from pssim.comm.cpu import Threads
from pssim.comm.gates import Clock
from pssim.workload.state import ModelState


class ShardDown(Exception):
    """A request reached a parameter-server shard that is down (or was waiting on it when it went down).

    Its fields are its `args`, so it survives SimPy's copy of an unhandled failure and pickling.
    """

    def __init__(self, shard: int, host: str, at: float):
        super().__init__(shard, host, at)
        self.shard = shard  # the shard's index
        self.host = host
        self.at = at  # simulated time of the refusal

    def __str__(self) -> str:
        return f"server shard {self.shard} on {self.host} is down (t={self.at!r})"


class ServerShard:
    """Owns params[lo:hi] of the global vector; applies the optimizer to it; counts its versions.

    The shard's CPU is one thread (`Threads`): receiving, aggregating and sending bytes take CPU time in
    FIFO order, so a busy server delays both pushes and pulls, as a real one does.

    The version is a `Clock`: `reached(v)` fires once v updates are applied. Failures: `mark_down()`
    takes the shard down: every `reached` event still waiting fails with `ShardDown`, and while it is
    down every new request fails the same way (`reached` returns an already-failed event, `apply` and
    `check_up` raise) instead of waiting forever. `mark_up()` brings it back with its parameters and
    version as they were. So once shards can go down, whoever yields on `reached` (or pushes to a
    shard) must expect `ShardDown`; SimPy stops the run on a failed event nobody handles.
    """

    def __init__(self, env: simpy.Environment, index: int, host: str, lo: int, hi: int, nbytes: float,
                 state: ModelState | None):
        self.env = env
        self.index = index
        self.host = host
        self.lo, self.hi = lo, hi
        self.nbytes = nbytes  # on the wire (the timing profile's share), not the numerics' size
        self.state = state  # a view of the model's parameters [lo, hi) and their optimizer state
        self.clock = Clock(env)  # the version: updates applied so far
        self.up = True
        self.cpu = Threads(env, host, 1)
        self._snapshot: tuple[tuple[int, int], torch.Tensor] | None = None  # ((version, in-place writes), copy)

    @property
    def version(self) -> int:
        return self.clock.value

    def apply(self, grad: torch.Tensor | None, scale: float = 1.0) -> None:
        """One optimizer step with grad * scale (skipped in timing-only runs); the version advances.
        Raises ShardDown while the shard is down."""
        self.check_up()
        if self.state is not None:
            self.state.step(grad, scale)
        self.clock.advance()

    def reached(self, version: int) -> simpy.Event:
        """An event that fires once this shard's version is at least `version`; it fails with
        ShardDown if the shard is down now (yield on it at once: a failed event nobody waits on by the
        time SimPy processes it stops the run) or goes down before then."""
        if not self.up:
            event = self.env.event()
            event.fail(self.refusal())
            return event
        return self.clock.reached(version)

    def check_up(self) -> None:
        """Raise ShardDown if the shard is down (a request arriving now is refused)."""
        if not self.up:
            raise self.refusal()

    def mark_down(self) -> None:
        """The shard fails: its waiters fail with ShardDown, and so will new requests until mark_up."""
        self.up = False
        self.clock.fail(self.refusal())

    def mark_up(self) -> None:
        """The shard is back, with the parameters and version it had."""
        self.up = True

    def refusal(self) -> ShardDown:
        """The error a request to this shard gets while it is down."""
        return ShardDown(self.index, self.host, self.env.now)

    def snapshot(self) -> torch.Tensor | None:
        """A copy of the shard's parameters as they are now (None in timing-only runs). The same copy is
        handed out until they change (an update, or `overwrite`), so every pull of one version gets the
        same tensor (one copy in memory however many workers hold it). "Change" is read off
        torch's in-place write counter of the parameters (shared with the model's flat vector they view),
        so no write can leave a stale copy behind, whoever makes it."""
        if self.state is None:
            return None
        key = (self.clock.value, self.state.params._version)
        if self._snapshot is None or self._snapshot[0] != key:
            self._snapshot = (key, self.state.snapshot())
        return self._snapshot[1]

    def overwrite(self, params: torch.Tensor, optimizer_state) -> None:
        """Replace the parameters and optimizer state in place, the version unchanged (a replica taking
        over a crashed server's range)."""
        self.state.params.copy_(params)
        self.state.restore(optimizer_state)
