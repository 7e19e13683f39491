"""Gates on a counter or on time: a process waits until a clock (or the simulated time) gets there.

`Clock` is a monotone counter (a shard's version, a worker's clock, a pipeline's wave): `reached(v)`
is an event that fires once the value is at least v. `MinClock` keeps one clock per member and gates
on their minimum (the slowest member): SSP's staleness bound, bounded delay, waves that wait for every
stage. `wait_until(env, t)` is the same gate on simulated time.

Waiters are released in the order they started waiting (never re-sorted), so a run's event order, and
hence its numbers, do not depend on how a gate stores them. A gate can also break (`Clock.fail`): every
pending waiter's event fails with the given exception, and whoever yields on `reached` must expect it
where a gate can break (a parameter-server shard going down, say).
"""

from __future__ import annotations

import simpy


class Clock:
    """A monotone counter; `reached(v)` fires once `value >= v`.

    Args:
        env: the simulation's clock.
        value: the starting value.
    """

    def __init__(self, env: simpy.Environment, value: int = 0):
        self.env = env
        self.value = value
        self._waiters: list[tuple[int, simpy.Event]] = []  # (target, event), in the order they came

    def advance(self, to: int | None = None) -> None:
        """Move the counter forward, by one or to `to` (equal to the value: nothing happens), then
        release, in arrival order, every waiter whose target it reached. A clock never moves back."""
        target = self.value + 1 if to is None else to
        if target < self.value:
            raise ValueError(f"a clock only moves forward: {self.value} -> {target}")
        if target == self.value:
            return
        self.value = target
        if not self._waiters:
            return
        ready = [w for w in self._waiters if w[0] <= target]
        if ready:
            self._waiters = [w for w in self._waiters if w[0] > target]
            for _, event in ready:
                event.succeed()

    def reached(self, v: int) -> simpy.Event:
        """An event that fires once the value is at least v (already triggered if it is)."""
        event = self.env.event()
        if self.value >= v:
            event.succeed()
        else:
            self._waiters.append((v, event))
        return event

    @property
    def waiting(self) -> int:
        """How many `reached` events have not fired yet."""
        return len(self._waiters)

    def fail(self, error: BaseException) -> int:
        """Fail every pending waiter's event with `error` (the clock breaks); returns how many.
        The value stays; later `reached` calls wait again as usual."""
        waiters, self._waiters = self._waiters, []
        for _, event in waiters:
            event.fail(error)
        return len(waiters)


class MinClock:
    """n member clocks gated on their minimum: SSP's and bounded delay's "the slowest worker's clock".

    `tick(member, to)` moves one member's clock; `value` is the minimum over members; `reached(v)`
    fires once every member is at v or beyond; `lead(member)` is how far that member is ahead of the
    slowest. `members[i]` is member i's own Clock (wait on one member with `members[i].reached(v)`).
    """

    def __init__(self, env: simpy.Environment, n: int, value: int = 0):
        if n < 1:
            raise ValueError(f"a MinClock needs at least one member, not {n}")
        self.env = env
        self.members = [Clock(env, value) for _ in range(n)]
        self._min = Clock(env, value)
        self._at_min = n  # how many members are at the minimum (it moves only when the last of them does)

    def __len__(self) -> int:
        return len(self.members)

    def __getitem__(self, member: int) -> int:
        """Member's clock value."""
        return self.members[member].value

    @property
    def value(self) -> int:
        """The slowest member's clock."""
        return self._min.value

    def tick(self, member: int, to: int | None = None) -> None:
        """Move `member`'s clock forward (by one, or to `to`); if the minimum moves, release its waiters.
        The minimum is recomputed only when the last member at it moves on: O(n) per move of the minimum,
        not per tick."""
        clock = self.members[member]
        was = clock.value
        clock.advance(to)
        if was != self._min.value or clock.value == was:
            return
        self._at_min -= 1
        if self._at_min:
            return
        slowest = min(c.value for c in self.members)
        self._at_min = sum(1 for c in self.members if c.value == slowest)
        self._min.advance(slowest)

    def reached(self, v: int) -> simpy.Event:
        """An event that fires once every member's clock is at least v."""
        return self._min.reached(v)

    def lead(self, member: int) -> int:
        """How many ticks `member` is ahead of the slowest member (0 for the slowest)."""
        return self.members[member].value - self._min.value

    def fail(self, error: BaseException) -> int:
        """Fail every pending `reached` waiter (of the minimum and of each member) with `error`."""
        return self._min.fail(error) + sum(c.fail(error) for c in self.members)


def wait_until(env: simpy.Environment, t: float):
    """A generator (`yield from wait_until(env, t)`): sleep until simulated time t, if it is still ahead."""
    if env.now < t:
        yield env.timeout(t - env.now)
