"""The flow-level network model: messages are flows sharing links max-min fairly.

A message of S bytes from a to b first pays its route's latency (propagation of every link plus the
transport's per-message overhead), then becomes a flow over the route's links. All active flows share
every link max-min fairly (progressive filling, with each flow's own rate cap as one more constraint);
rates are recomputed, for the flows connected to the change only, when a flow starts or ends or a link's
capacity changes. One SimPy process owns the flows and sleeps until the next completion; a new flow or a
capacity change wakes it by triggering an event (no per-flow processes, no interrupts, no per-packet
events).

A pipelined ring phase sends its r messages as one flow (`send(..., messages=r)`): one latency before
the first byte moves, the other r-1 after the last byte lands, so it shares its links from the moment
its first message could.

Failures. `set_capacity` (and `set_link_capacity`, `fail_link`, `restore_link`) change a link's capacity
mid-run: every flow is advanced to now at its old rate and the link's component is reshared at once. A
link at capacity zero is down: each flow crossing it leaves the network and its event fails with
`LinkDown` (the survivors are reshared and speed up), as does a flow still paying its latency when it
finds a down link on its route. Routes avoid down links; a send with no route of up links fails with
`NoRoute`. So once links can fail, whoever yields on a send's event must expect these exceptions
(SimPy stops the run on a failed event that nobody handles). A failed flow's bytes so far count in
`link_bytes` (the links carried them) but not as sent, received or delivered. A ring flow whose last
byte has landed is delivered: a link failure during its trailing latency does not touch it.

Capacities are state of the topology's `Link`s, shared by every network built on that topology;
change them through the one `FlowNetwork` that carries the traffic, which also drops its route cache.
"""

from __future__ import annotations

import heapq
import math
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache

import simpy

from pssim.network.errors import LinkDown, NoRoute
from pssim.network.topology import Link, Topology, check_capacity


@dataclass(eq=False)
class Flow:
    """One message in flight (or the r messages of a pipelined ring phase).

    `start` is when its first byte moves (after one latency), `end` when its last byte lands or it
    failed; `done` fires `tail` seconds after `end` (the latency of the phase's r-1 later messages).
    """

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
    tail: float = 0.0
    error: Exception | None = None  # why it failed (LinkDown), None while it has not


class FlowNetwork:
    """Carries messages between hosts of a `Topology` and accounts bytes and busy time per link."""

    def __init__(self, env: simpy.Environment, topology: Topology):
        self.env = env
        self.topology = topology
        self.link_bytes: dict[Link, float] = defaultdict(float)  # bytes each link carried, failed flows' too
        self.link_busy_s: dict[Link, float] = defaultdict(float)
        self.completed: list[Flow] = []  # kept while `record` is on (for the trace)
        # While `record` is on: (time, link name, bytes/s allocated on it, its capacity) each time a
        # link's total allocated rate or capacity changes (the trace's utilisation counters); a link's
        # entries are in time order. Names, not links: a log of plain values costs the GC nothing.
        self.rate_log: list[tuple[float, str, float, float]] = []
        self._logged: dict[Link, tuple[float, float]] = {}  # each link's last (rate, capacity) in rate_log
        self.failed: list[Flow] = []  # flows that a link going down ended (always kept: they are rare)
        self.record = True
        self.bytes_delivered = 0.0  # every completed message, recorded or not
        self.sent: dict[str, float] = defaultdict(float)  # bytes of completed messages, by source
        self.received: dict[str, float] = defaultdict(float)  # and by destination
        self._flows: dict[Flow, None] = {}  # active flows, in admission order
        self._on_link: dict[Link, dict[Flow, None]] = {}  # the active flows on each busy link
        self._changed: set[Link] = set()  # links whose flows or capacity changed since the last allocation
        self._last = env.now
        self._wake = env.event()
        self._paths = lru_cache(maxsize=None)(self._paths_uncached)
        env.process(self._run())

    # -- public -------------------------------------------------------------------------------------
    def send(self, src: str, dst: str, nbytes: float, tag: str = "", messages: int = 1) -> simpy.Event:
        """Send `nbytes` from src to dst; the returned event fires when the last byte lands.

        `messages` > 1 sends the bytes as that many back-to-back messages (a pipelined ring phase):
        one flow that pays one per-message latency before its first byte moves and the other
        `messages` - 1 after its last byte lands, before the event fires. A multipath transport (EFA's
        SRD) cuts the message into one equal subflow per equal-cost path; the event fires when all
        have landed.

        Once links can fail, the event may fail instead: with `NoRoute` at once when no path of up
        links joins src and dst, or with `LinkDown` when a link of its route goes down before the last
        byte lands (for a multipath send, the first subflow to fail fails the event; the others go on).
        Whoever yields on it must then catch these `NetworkError`s, or SimPy stops the run.
        """
        try:
            paths = self._paths(src, dst)
        except NoRoute:
            return self._failed_event(NoRoute(src, dst, at=self.env.now))
        if len(paths) == 1:
            return self._start(src, dst, nbytes, tag, paths[0], messages)
        parts = [self._start(src, dst, nbytes / len(paths), tag, path, messages) for path in paths]
        for part in parts:  # the condition reports the first failure; a second must not stop the run
            part.defused = True
        return self.env.all_of(parts)

    def set_capacity(self, link: Link, bytes_per_s: float) -> None:
        """Change one directed link's usable bytes/s now; 0 takes it down (see the module docstring).

        Every flow moves to now at its old rate, then the link's component is reshared at once. Taking
        the link down fails the flows crossing it with `LinkDown` and reroutes later sends around it;
        a capacity above zero brings it back into routing.
        """
        self._set_capacities([(link, bytes_per_s)])

    def set_link_capacity(self, a: str, b: str, bytes_per_s: float) -> None:
        """`set_capacity` on both directions of the physical link between nodes a and b."""
        both = (self.topology.link(a, b), self.topology.link(b, a))
        self._set_capacities([(link, bytes_per_s) for link in both])

    def fail_link(self, a: str, b: str) -> None:
        """Take the physical link between a and b down, both directions."""
        self.set_link_capacity(a, b, 0.0)

    def restore_link(self, a: str, b: str) -> None:
        """Bring both directions of the link between a and b back to their nominal capacity."""
        both = (self.topology.link(a, b), self.topology.link(b, a))
        self._set_capacities([(link, link.nominal_capacity) for link in both])

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

    # -- sending ------------------------------------------------------------------------------------
    def _paths_uncached(self, src: str, dst: str) -> tuple[tuple[tuple[Link, ...], float, float], ...]:
        """(links, per-message latency, flow cap) of each path a message from src to dst uses.
        Raises `NoRoute` when no path of up links joins them (not cached: a link may come back)."""
        links = self.topology.route(src, dst) if src != dst else ()
        paths = self.topology.routes(src, dst) if any(l.transport.multipath for l in links) else (links,)
        return tuple((p, self.latency(p), min((l.transport.flow_cap for l in p), default=math.inf))
                     for p in paths)

    def _start(self, src: str, dst: str, nbytes: float, tag: str, path, messages: int) -> simpy.Event:
        """One flow on one path: admitted after one latency; the other messages' latency is its tail."""
        links, latency, cap = path
        done = self.env.event()
        flow = Flow(src, dst, float(nbytes), tag, links, cap, done, submitted=self.env.now,
                    remaining=float(nbytes), tail=latency * max(messages - 1, 0))
        if latency > 0:
            self.env.timeout(latency).callbacks.append(lambda _event: self._admit(flow))
        else:
            self._admit(flow)
        return done

    def _failed_event(self, error: Exception) -> simpy.Event:
        event = self.env.event()
        event.fail(error)
        return event

    # -- the model ----------------------------------------------------------------------------------
    def _admit(self, flow: Flow) -> None:
        """The flow's first byte is due: it joins the flows (or fails, if its route has gone down)."""
        flow.start = self.env.now
        if self.topology.down_links and flow.links:
            down = next((link for link in flow.links if not link.up), None)
            if down is not None:
                self._fail(flow, LinkDown(down.name, self.env.now))
                return
        if flow.size <= 0 or not flow.links:
            self._finish([flow])
            return
        self._advance()
        flow.rate = 0.0
        self._flows[flow] = None
        for link in flow.links:
            self._on_link.setdefault(link, {})[flow] = None
        self._changed.update(flow.links)
        self._wake_up()  # the network process reallocates once, after every flow of this instant

    def _wake_up(self) -> None:
        if not self._wake.triggered:
            self._wake.succeed()

    def _set_capacities(self, changes: list[tuple[Link, float]]) -> None:
        """Apply capacity changes now: advance the flows at their old rates, fail those on links that
        went down, reshare the changed links' component at once and wake the network process to
        reschedule its next completion."""
        for _, bytes_per_s in changes:
            check_capacity(bytes_per_s)  # all or nothing
        self._advance()
        finished = self._retire_finished()  # a flow landing at this very instant is delivered, not failed
        self._apply_capacities(changes)
        cut = self._flows_crossing_down_links([link for link, _ in changes])
        for flow in cut:
            self._remove(flow)
        self._allocate()
        self._finish(finished)
        for flow, link in cut.items():
            self._fail(flow, LinkDown(link.name, self.env.now))
        self._wake_up()

    def _apply_capacities(self, changes: list[tuple[Link, float]]) -> None:
        """Set the links' capacities and mark them for reallocation; drop the cached paths if a link
        went down or came back up (the topology drops its routes then too)."""
        rerouted = False
        for link, bytes_per_s in changes:
            rerouted |= self.topology.set_capacity(link, bytes_per_s)
            self._changed.add(link)
        if rerouted:
            self._paths.cache_clear()

    def _flows_crossing_down_links(self, links: list[Link]) -> dict[Flow, Link]:
        """Each active flow on one of these links that is down, with that link, in admission order."""
        down = [link for link in links if not link.up]
        if not down:
            return {}
        cut: dict[Flow, Link] = {}
        for link in down:
            for flow in self._on_link.get(link, ()):
                cut.setdefault(flow, link)
        return {flow: cut[flow] for flow in self._flows if flow in cut}

    def _run(self):
        """The network's one process: sleep until the next completion or until something changes."""
        while True:
            if self._wake.triggered:  # flows joined or capacities changed since the last look: share anew
                self._wake = self.env.event()
                self._advance()
                self._allocate()
            delay = self._time_to_next_completion()
            if delay == math.inf:  # nothing moves: no flows, or only flows at rate 0
                yield self._wake
                continue
            yield self.env.timeout(delay) | self._wake
            if self._wake.triggered:
                continue
            self._advance()
            finished = self._retire_finished()
            self._allocate()
            self._finish(finished)

    def _time_to_next_completion(self) -> float:
        """Seconds until the first active flow lands at current rates (inf: none will). A flow whose
        max-min rate is 0 (a zero cap, say) just waits for a change; nothing divides by its rate."""
        return max(0.0, min((f.remaining / f.rate for f in self._flows if f.rate > 0), default=math.inf))

    def _retire_finished(self) -> list[Flow]:
        """Take out of the network the flows that have landed by now, and return them.

        Done: flows within a float rounding of their end (a sub-picosecond remainder, or one so small
        that now + remaining/rate == now, which would otherwise spin forever).
        """
        horizon = max(1e-12, 4 * math.ulp(self.env.now))
        finished = [f for f in self._flows if f.remaining <= f.rate * horizon]
        for f in finished:
            self._remove(f)
        return finished

    def _remove(self, flow: Flow) -> None:
        """Take a flow off its links; its links' component is reshared at the next allocation."""
        del self._flows[flow]
        for link in flow.links:
            on_link = self._on_link[link]
            del on_link[flow]
            if not on_link:
                del self._on_link[link]
        self._changed.update(flow.links)

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
        changed = self._changed if self.record else None  # links whose flows or capacity changed
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
        if changed is not None:
            self._log_rates(spare, changed)

    def _log_rates(self, spare: dict[Link, float], changed: set[Link]) -> None:
        """While recording: append (now, link name, total allocated rate, capacity) for each link just
        reshared (its capacity less its spare; 0 for a link left without flows) whose rate moved by more
        than a rounding, or whose capacity changed, since its last entry. A link that never carried a
        flow has no entry. Reads the allocation only: the model's numbers are the same without it."""
        now, logged, log = self.env.now, self._logged, self.rate_log.append
        for link, left in spare.items():
            capacity = link.capacity
            rate = capacity - left
            last = logged.get(link)
            if last is None and rate <= 0 or (
                    last is not None and last[1] == capacity and abs(rate - last[0]) <= 1e-12 * capacity):
                continue
            logged[link] = (rate, capacity)
            log((now, link.name, rate, capacity))
        for link in sorted(changed - spare.keys(), key=lambda l: l.name):  # left without flows
            last = logged.get(link)
            if last is not None and (last[0] != 0.0 or last[1] != link.capacity):
                logged[link] = (0.0, link.capacity)
                log((now, link.name, 0.0, link.capacity))

    def _finish(self, flows: list[Flow]) -> None:
        """The flows' last bytes landed now: account them, and fire each one's event after its tail."""
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
            if f.tail > 0:
                self.env.timeout(f.tail).callbacks.append(lambda _event, f=f: f.done.succeed(f))
            else:
                f.done.succeed(f)

    def _fail(self, flow: Flow, error: Exception) -> None:
        """The flow will not be delivered: its links keep the bytes they carried; its event fails now."""
        flow.end = self.env.now
        flow.rate = 0.0
        flow.error = error
        carried = min(max(flow.size - flow.remaining, 0.0), flow.size)
        if carried > 0:
            for link in flow.links:
                self.link_bytes[link] += carried
        self.failed.append(flow)
        flow.done.fail(error)
