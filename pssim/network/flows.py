"""The flow-level network model: messages are flows sharing links max-min fairly.

A message of S bytes from a to b first pays its route's latency (propagation of every link plus the
transport's per-message overhead), then becomes a flow over the route's links. All active flows share
every link max-min fairly (progressive filling, with each flow's own rate cap as one more constraint);
rates are recomputed only when a flow starts or ends. One SimPy process owns the flows and sleeps until
the next completion; a new flow wakes it by triggering an event (no per-flow processes, no interrupts,
no per-packet events).
"""

from __future__ import annotations

import heapq
import math
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache

import simpy

from pssim.network.topology import Link, Topology


@dataclass(eq=False)
class Flow:
    """One message in flight. `start` is when its first byte moves (after the latency)."""

    src: str
    dst: str
    size: float
    tag: str
    links: tuple[Link, ...]
    cap: float
    done: simpy.Event
    submitted: float
    start: float = float("nan")
    end: float = float("nan")
    remaining: float = 0.0
    rate: float = 0.0


class FlowNetwork:
    """Carries messages between hosts of a `Topology` and accounts bytes and busy time per link."""

    def __init__(self, env: simpy.Environment, topology: Topology):
        self.env = env
        self.topology = topology
        self.link_bytes: dict[Link, float] = defaultdict(float)
        self.link_busy_s: dict[Link, float] = defaultdict(float)
        self.completed: list[Flow] = []  # kept while `record` is on (for the trace)
        self.record = True
        self.bytes_delivered = 0.0  # every completed message, recorded or not
        self.sent: dict[str, float] = defaultdict(float)  # bytes of completed messages, by source
        self.received: dict[str, float] = defaultdict(float)  # and by destination
        self._flows: dict[Flow, None] = {}  # active flows, in admission order
        self._on_link: dict[Link, dict[Flow, None]] = {}  # the active flows on each busy link
        self._changed: set[Link] = set()  # links whose flows changed since the last allocation
        self._last = env.now
        self._wake = env.event()
        self._paths = lru_cache(maxsize=None)(self._paths_uncached)
        env.process(self._run())

    # -- public -------------------------------------------------------------------------------------
    def send(self, src: str, dst: str, nbytes: float, tag: str = "", messages: int = 1) -> simpy.Event:
        """Send `nbytes` from src to dst; the returned event fires when the last byte lands.

        `messages` > 1 sends the bytes as that many back-to-back messages (a pipelined ring phase):
        one flow that pays the per-message latency `messages` times. A multipath transport (EFA's SRD)
        cuts the message into one equal subflow per equal-cost path.
        """
        paths = self._paths(src, dst)
        if len(paths) == 1:
            return self._start(src, dst, nbytes, tag, paths[0], messages)
        parts = [self._start(src, dst, nbytes / len(paths), tag, path, messages) for path in paths]
        return self.env.all_of(parts)

    def _paths_uncached(self, src: str, dst: str) -> tuple[tuple[tuple[Link, ...], float, float], ...]:
        """(links, per-message latency, flow cap) of each path a message from src to dst uses."""
        links = self.topology.route(src, dst) if src != dst else ()
        paths = self.topology.routes(src, dst) if any(l.transport.multipath for l in links) else (links,)
        return tuple((p, self.latency(p), min((l.transport.flow_cap for l in p), default=math.inf))
                     for p in paths)

    def _start(self, src: str, dst: str, nbytes: float, tag: str, path, messages: int) -> simpy.Event:
        links, latency, cap = path
        done = self.env.event()
        flow = Flow(src, dst, float(nbytes), tag, links, cap, done, submitted=self.env.now,
                    remaining=float(nbytes))
        latency *= messages
        if latency > 0:
            self.env.timeout(latency).callbacks.append(lambda _event: self._admit(flow))
        else:
            self._admit(flow)
        return done

    @staticmethod
    def latency(links: tuple[Link, ...]) -> float:
        """Per-message latency of a route: every link's propagation plus the transport's overhead."""
        if not links:
            return 0.0
        return sum(l.transport.hop_latency_s for l in links) + max(l.transport.latency_s for l in links)

    @property
    def active(self) -> list[Flow]:
        """The flows moving bytes now (their `rate` is the current max-min fair share)."""
        return list(self._flows)

    # -- the model ----------------------------------------------------------------------------------
    def _admit(self, flow: Flow) -> None:
        flow.start = self.env.now
        if flow.size <= 0 or not flow.links:
            self._finish([flow])
            return
        self._advance()
        flow.rate = 0.0
        self._flows[flow] = None
        for link in flow.links:
            self._on_link.setdefault(link, {})[flow] = None
        self._changed.update(flow.links)
        if not self._wake.triggered:  # the network process reallocates once, after every flow of this instant
            self._wake.succeed()

    def _run(self):
        """The network's one process: sleep until the next completion or until a flow is admitted."""
        while True:
            if self._wake.triggered:  # flows joined since the last look: share anew
                self._wake = self.env.event()
                self._advance()
                self._allocate()
            if not self._flows:
                yield self._wake
                continue
            delay = max(0.0, min(f.remaining / f.rate for f in self._flows))
            yield self.env.timeout(delay) | self._wake
            if self._wake.triggered:
                continue
            self._advance()
            # Done: flows within a float rounding of their end (a sub-picosecond remainder, or one so
            # small that now + remaining/rate == now, which would otherwise spin forever).
            horizon = max(1e-12, 4 * math.ulp(self.env.now))
            finished = [f for f in self._flows if f.remaining <= f.rate * horizon]
            for f in finished:
                del self._flows[f]
                for link in f.links:
                    del self._on_link[link][f]
                    if not self._on_link[link]:
                        del self._on_link[link]
                self._changed.update(f.links)
            self._allocate()
            self._finish(finished)

    def _advance(self) -> None:
        """Move every active flow forward to now at its current rate; accumulate link busy time."""
        dt = self.env.now - self._last
        self._last = self.env.now
        if dt <= 0:
            return
        for f in self._flows:
            f.remaining -= f.rate * dt
        for link in self._on_link:
            self.link_busy_s[link] += dt

    def _affected(self) -> list[Flow]:
        """The flows whose rates may change: every flow connected, through shared links, to a link
        whose set of flows changed. Max-min sharing decomposes over such components, so the rest keep
        their rates. Returned in admission order, so the arithmetic (and the result) is deterministic."""
        component: set[Flow] = set()
        seen = set(self._changed)
        frontier = list(self._changed)
        self._changed = set()
        while frontier:
            for f in self._on_link.get(frontier.pop(), ()):
                if f not in component:
                    component.add(f)
                    for link in f.links:
                        if link not in seen:
                            seen.add(link)
                            frontier.append(link)
        if len(component) == len(self._flows):
            return list(self._flows)
        return [f for f in self._flows if f in component]

    def _allocate(self) -> None:
        """Max-min fair rates by progressive filling over every link of every route and each flow's cap.

        Repeatedly take the tightest constraint, the link with the smallest equal share of its spare
        capacity (a lazy heap: stale entries are skipped) or a flow's own cap if smaller, freeze its
        flows at that rate and charge them to every link they cross.
        """
        flows = self._affected()
        users: dict[Link, list[Flow]] = defaultdict(list)
        for f in flows:
            for link in f.links:
                users[link].append(f)
        spare = {link: link.capacity for link in users}
        count = {link: len(fs) for link, fs in users.items()}
        order = {link: i for i, link in enumerate(users)}  # tie-break: links are not comparable
        heap = [(spare[l] / count[l], order[l], l) for l in users]
        heapq.heapify(heap)
        capped = sorted((f for f in flows if f.cap != math.inf), key=lambda f: f.cap)
        next_capped = 0
        done: set[Flow] = set()
        while len(done) < len(flows):
            share, _, link = heap[0]
            if not count[link] or share != spare[link] / count[link]:
                heapq.heappop(heap)  # stale: the link changed since this entry was pushed
                continue
            share = max(0.0, share)
            while next_capped < len(capped) and capped[next_capped] in done:
                next_capped += 1
            if next_capped < len(capped) and capped[next_capped].cap < share:
                frozen, rate = [capped[next_capped]], capped[next_capped].cap
            else:
                frozen, rate = [f for f in users[link] if f not in done], share
            touched = set()
            for f in frozen:
                f.rate = rate
                done.add(f)
                for l in f.links:
                    spare[l] -= rate
                    count[l] -= 1
                    touched.add(l)
            for l in touched:
                if count[l]:
                    heapq.heappush(heap, (spare[l] / count[l], order[l], l))

    def _finish(self, flows: list[Flow]) -> None:
        for f in flows:
            f.end = self.env.now
            f.remaining = 0.0
            for link in f.links:
                self.link_bytes[link] += f.size
            if f.links:
                self.sent[f.src] += f.size
                self.received[f.dst] += f.size
            self.bytes_delivered += f.size
            if self.record:
                self.completed.append(f)
            f.done.succeed(f)
