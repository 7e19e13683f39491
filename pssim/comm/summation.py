"""A summation service: a CPU-only server that adds the machines' pushes of a key as they land and
returns the sum to every machine (BytePS's summation service, Herring's servers).

    summed = service.push(src, key, nbytes, machines)   # src's bytes go to the service
    summed.landed                                       # fires when they are there (a network event)
    yield summed                                        # the sum of every machine's push is back at src

A push's bytes cross the network to the service, which adds them on one of its `cores` CPU cores
(FIFO behind earlier work) for nbytes * (sum + transport) seconds, transport only if they came over
the network. Once the pushes of `key` from all `machines` are added, the service sends the sum to each
machine in `machines` order, paying nbytes * transport of CPU before each remote send. So one remote
push on an idle service, alone in the network, takes
    2 * (latency + nbytes / bandwidth) + nbytes * (sum + 2 * transport).
If the push or the return fails in the network (a link down), the push's event fails with that error.
"""

from __future__ import annotations

import simpy

from pssim.comm.server import Cpu


class Push(simpy.Event):
    """The event `SummationService.push` returns: fires when the summed key lands back at the pusher.
    `landed` is the network event of the push's own bytes reaching the service (a sender's credit
    comes back then)."""

    def __init__(self, env: simpy.Environment, key, src: str, landed: simpy.Event):
        super().__init__(env)
        self.key, self.src, self.landed = key, src, landed


class SummationService:
    """Sums, never optimizes. Adding a push costs `sum_s_per_byte` of CPU, plus `transport_s_per_byte`
    when it came over the network; returning the sum to another machine costs `transport_s_per_byte`."""

    def __init__(self, env, network, host: str, cores: int, sum_s_per_byte: float, transport_s_per_byte: float,
                 tag: str):
        self.env = env
        self.network = network
        self.host = host
        self.cpu = Cpu(env, host, cores)
        self.sum_cpu = sum_s_per_byte
        self.transport_cpu = transport_s_per_byte
        self.tag = tag
        self._arrived: dict[object, int] = {}  # key -> pushes added so far
        self._pushes: dict[object, dict[str, Push]] = {}  # key -> machine -> its push, until the sum is back

    def push(self, src: str, key, nbytes: float, machines: list[str], tag: str | None = None) -> Push:
        """Send src's `nbytes` of `key` to the service; the returned event fires when the sum over every
        machine's push of `key` lands back at src. `machines` (src among them) is the same list for every
        push of the key; `tag` names the push's network message (default "<service tag>-push")."""
        if src not in machines:
            raise ValueError(f"{src} pushes {key!r} but is not one of the machines {machines}")
        pushes = self._pushes.setdefault(key, {})
        if src in pushes:
            raise ValueError(f"{src} pushed {key!r} twice before its sum came back")
        landed = self.network.send(src, self.host, nbytes, tag or f"{self.tag}-push")
        summed = pushes[src] = Push(self.env, key, src, landed)
        landed.callbacks.append(lambda event: self._landed(event, summed, nbytes, machines))
        return summed

    def _landed(self, event: simpy.Event, summed: Push, nbytes: float, machines: list[str]) -> None:
        if not event.ok:  # the push never arrived: its sum never comes
            event.defused = True
            del self._pushes[summed.key][summed.src]
            summed.fail(event.value)
            return
        self.env.process(self._add(summed.key, summed.src, nbytes, machines))

    def _add(self, key, src: str, nbytes: float, machines: list[str]):
        """Add src's push of `key` on a core; the last machine's push sends the sum to every machine."""
        remote = src != self.host
        yield from self.cpu.work(nbytes * (self.sum_cpu + remote * self.transport_cpu), "sum")
        self._arrived[key] = self._arrived.get(key, 0) + 1
        if self._arrived[key] == len(machines):
            del self._arrived[key]
            pushes = self._pushes.pop(key)
            for host in machines:
                self.env.process(self._return(host, nbytes, pushes[host]))

    def _return(self, host: str, nbytes: float, summed: Push):
        if host != self.host:
            yield from self.cpu.work(nbytes * self.transport_cpu, "send")
        self.network.send(self.host, host, nbytes, f"{self.tag}-pull").callbacks.append(
            lambda event: _settle(summed, event))


def _settle(target: simpy.Event, source: simpy.Event) -> None:
    """Fire `target` as `source` went: succeed, or fail with its error."""
    if source.ok:
        target.succeed()
    else:
        source.defused = True
        target.fail(source.value)
