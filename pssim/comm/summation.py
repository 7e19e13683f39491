"""A summation service: a CPU-only server that adds the machines' pushes of a key as they land and
returns the sum to every machine (BytePS's summation service, Herring's servers).

    summed = service.push(src, key, nbytes, machines)   # src's bytes go to the service
    summed.landed                                       # fires when they are there (a network event)
    yield summed                                        # the sum of every machine's push is back at src

A push's bytes cross the network to the service, which adds them on one of its `cores` CPU threads
(FIFO behind earlier work) for message + nbytes * (sum + transport) seconds, transport only if they
came over the network. Once the pushes of `key` from all `machines` are added, the service sends the
sum to each machine in `machines` order, paying message (+ nbytes * transport for a remote machine) of
CPU before each send. `message` is the fixed cost of handling one message (receiving or sending a
shard: the messaging stack, the bookkeeping, launching the sum), so a service that handles many small
shards is bound by its threads, not its bytes. So one remote push on an idle service, alone in the
network, takes
    2 * (latency + nbytes / bandwidth) + 2 * message + nbytes * (sum + 2 * transport).
Messages travel as `carrier.send(src, dst, nbytes, tag)`: the network itself (each message its own
flow) or `pssim.comm.connections.Connections` (each peer's messages one at a time, in order).
If the push or the return fails in the network (a link down), the push's event fails with that error.
"""

from __future__ import annotations

import simpy

from pssim.comm.cpu import Threads


class Push(simpy.Event):
    """The event `SummationService.push` returns: fires when the summed key lands back at the pusher.
    `landed` is the network event of the push's own bytes reaching the service (a sender's credit
    comes back then)."""

    def __init__(self, env: simpy.Environment, key, src: str, landed: simpy.Event):
        super().__init__(env)
        self.key, self.src, self.landed = key, src, landed


class SummationService:
    """Sums, never optimizes. Adding a push costs `message_s` plus `sum_s_per_byte` of CPU per byte, plus
    `transport_s_per_byte` when it came over the network; returning the sum costs `message_s`, plus
    `transport_s_per_byte` per byte to another machine. `cores` threads work at once."""

    def __init__(self, env, network, host: str, cores: int, sum_s_per_byte: float, transport_s_per_byte: float,
                 tag: str, message_s: float = 0.0, carrier=None, name: str | None = None):
        self.env = env
        self.network = network
        self.carrier = network if carrier is None else carrier
        self.host = host
        self.cpu = Threads(env, name or host, cores)  # `name`: the CPU's name in the trace (default the host)
        self.sum_cpu = sum_s_per_byte
        self.transport_cpu = transport_s_per_byte
        self.message_cpu = message_s
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
        landed = self.carrier.send(src, self.host, nbytes, tag or f"{self.tag}-push")
        summed = pushes[src] = Push(self.env, key, src, landed)
        landed.callbacks.append(lambda event: self._landed(event, summed, nbytes, machines))
        return summed

    def _landed(self, event: simpy.Event, summed: Push, nbytes: float, machines: list[str]) -> None:
        if not event.ok:  # the push never arrived: its sum never comes
            event.defused = True
            del self._pushes[summed.key][summed.src]
            summed.fail(event.value)
            return
        self._add(summed.key, summed.src, nbytes, machines)

    def _add(self, key, src: str, nbytes: float, machines: list[str]) -> None:
        """Add src's push of `key` on a thread; the last machine's push sends the sum to every machine."""
        remote = src != self.host
        seconds = self.message_cpu + nbytes * (self.sum_cpu + remote * self.transport_cpu)
        self.cpu.then(seconds, "sum", lambda: self._added(key, nbytes, machines))

    def _added(self, key, nbytes: float, machines: list[str]) -> None:
        self._arrived[key] = self._arrived.get(key, 0) + 1
        if self._arrived[key] == len(machines):
            del self._arrived[key]
            pushes = self._pushes.pop(key)
            for host in machines:
                self._return(host, nbytes, pushes[host])

    def _return(self, host: str, nbytes: float, summed: Push) -> None:
        """Send the sum to `host` after its CPU cost (none for the service's own machine without a
        per-message cost)."""
        def send() -> None:
            self.carrier.send(self.host, host, nbytes, f"{self.tag}-pull").callbacks.append(
                lambda event: _settle(summed, event))

        remote = host != self.host
        if remote or self.message_cpu > 0:
            self.cpu.then(self.message_cpu + remote * nbytes * self.transport_cpu, "send", send)
        else:
            send()


def _settle(target: simpy.Event, source: simpy.Event) -> None:
    """Fire `target` as `source` went: succeed, or fail with its error."""
    if source.ok:
        target.succeed()
    else:
        source.defused = True
        target.fail(source.value)
