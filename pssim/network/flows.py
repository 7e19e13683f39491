"""The flow-level network model: messages are flows sharing links max-min fairly.

A message of S bytes from a to b first pays its route's latency (propagation of every link plus the
transport's per-message overhead), then becomes a flow over the route's links. All active flows share
every link max-min fairly (progressive filling, with each flow's own rate cap as one more constraint);
rates are recomputed when a flow starts or ends or a link's capacity changes. The network needs no
process: one timeout waits for the next completion, and a new flow or a capacity change triggers one
reshare event per instant that reschedules it (no per-flow processes, no interrupts, no per-packet
events).

A pipelined ring phase sends its r messages as one flow (`send(..., messages=r)`): one latency before
the first byte moves, the other r-1 after the last byte lands, so it shares its links from the moment
its first message could.

A collective sends its flows together and waits for all of them: `send_all` is `all_of` over one `send`
each, with the same flows, rates and order of events as seen by everyone else, but it costs no SimPy
event per flow: flows whose first byte is due at one instant are admitted by one timeout, and the
collective's event is triggered from a counter, with the same two hops of the event queue (the last
flow's event, then the condition's) that `all_of` takes, so every other process sees the same order
(a 1,024-GPU ring all-reduce is 2,048 flows; its events were two per flow).

Failures. `set_capacity` (and `set_link_capacity`, `fail_link`, `restore_link`) change a link's capacity
mid-run: every flow is advanced to now at its old rate and the flows are reshared at once. A link at
capacity zero is down: each flow crossing it leaves the network and its event fails with `LinkDown`
(the survivors are reshared and speed up), as does a flow still paying its latency when it finds a down
link on its route. Routes avoid down links; a send with no route of up links fails with `NoRoute`. So
once links can fail, whoever yields on a send's event must expect these exceptions (SimPy stops the run
on a failed event that nobody handles). A failed flow's bytes so far count in `link_bytes` (the links
carried them) but not as sent, received or delivered. A ring flow whose last byte has landed is
delivered: a link failure during its trailing latency does not touch it.

Capacities are state of the topology's `Link`s, shared by every network built on that topology;
change them through the one `FlowNetwork` that carries the traffic, which also drops its route cache
(it keeps each link's capacity in an array, read when the link first carries a flow and updated by its
own capacity changes).

Representation (for speed at thousands of GPUs; the numbers are the model's, not the layout's). The
active flows live in numpy arrays indexed by slot: bytes remaining, rate, cap, admission number, and
the ids of the links they cross (a (hops, slots) array, one column per slot, padded with link 0, which
no flow is limited by); links are numbered as they first carry a flow, with their capacity, number of
active flows and busy seconds in arrays too. A `Flow` is a handle on its slot while active (its `rate`
and `remaining` read the arrays) and keeps its last values once it leaves. Flows admitted at one
instant join the arrays together at the next advance (at that instant, at rate 0, as before). So an
event costs a few numpy passes over the slots rather than Python loops over the flows: moving every
flow to now, finding the next completion, retiring the flows that landed (in admission order), and the
sharing itself (`max_min_rates`: water-filling that freezes the flows of every link tied at the
smallest share in one round, so the rounds are the distinct rate levels, not the links; the max-min
allocation is unique, so these are progressive filling's rates up to rounding). Sixteen flows or fewer
are shared in plain Python by the same rounds (`water_fill_small`), which costs less than the numpy
calls. Every active flow is reshared at each change: max-min sharing decomposes over connected
components, so flows away from the change keep their rates (to the last bit or so), and finding the
component would cost as much as resharing it (in a parameter-server job nearly every flow is in it).
"""

from __future__ import annotations

import math
from collections import defaultdict
from functools import lru_cache
from itertools import chain

import numpy as np
import simpy

from pssim.network.errors import LinkDown, NoRoute
from pssim.network.topology import Link, Topology, check_capacity

_INF = math.inf
_SMALL = 16  # at most this many active flows: share them in plain Python (`water_fill_small`)


def max_min_rates(routes: np.ndarray, caps: np.ndarray, capacity: np.ndarray, count: np.ndarray | None = None,
                  active: np.ndarray | None = None, weight: np.ndarray | None = None) -> np.ndarray:
    """Max-min fair rates of n flows: progressive filling over their links, with per-flow caps.

    routes: (w, n) integer link ids, one column per flow (its route's links, each once), padded with
    link 0 (padding: whatever its capacity, no flow is constrained by it). caps: (n,) each flow's own
    most bytes/s (inf: none; 0 allowed). capacity: (L,) bytes/s of each link id. count: (L,) how many
    active flows cross each link (computed if not given). active: (n,) which columns are flows (the
    others get rate 0; all if not given). Every active flow must cross a link. weight: (n,) how many
    identical flows (the same route and cap) each column stands for, at least 1 where active (None: 1
    each); they get one rate, as they would one by one.

    Water-filling: while flows are unfrozen, a link's share is its spare capacity over its unfrozen
    flows; with m the smallest share (0 if rounding made it negative), freeze at their caps all the
    unfrozen flows whose cap is below m (freezing a flow below m only raises the shares of its links,
    so they may all go at once), else freeze at m every unfrozen flow crossing a link whose share is m
    (a tied link's share stays m whichever of them goes first; when every unfrozen flow crosses one such
    link, they all go at once without looking at the routes). The max-min fair allocation is unique, so
    these are progressive filling's rates up to rounding. Rounds: one per distinct level of rates, not
    one per link; once most flows are frozen, the rest are carried on alone. With weights the same
    rounds give the same rates: to the bit while no flow freezes at its cap (a link's count of frozen
    flows is the same integer), to rounding otherwise (k flows' caps on a link are summed as k x cap).
    """
    width, n = routes.shape
    links = len(capacity)
    rates = np.zeros(n)
    free = np.ones(n, dtype=bool) if active is None else np.array(active, dtype=bool)
    columns = int(np.count_nonzero(free))  # unfrozen columns
    if not columns:
        return rates
    left = columns if weight is None else int(weight[free].sum())  # unfrozen flows
    if count is None:
        count = np.bincount(routes[:, free].ravel(), None if weight is None else np.concatenate([weight[free]] * width),
                            minlength=links)
    spare = np.array(capacity, dtype=np.float64)
    count = count.astype(np.float64)
    count[0] = 0.0
    index = None  # the columns' positions in the caller's arrays, once frozen columns are dropped
    capped = free & (caps < _INF)
    any_capped = bool(capped.any())
    share = np.empty(links)
    while True:
        if 2 * columns < len(free):  # most columns are empty or frozen: carry only the free ones on
            keep = np.flatnonzero(free)
            index = keep if index is None else index[keep]
            routes, caps, capped, free = np.take(routes, keep, axis=1), caps[keep], capped[keep], free[keep]
            if weight is not None:
                weight = weight[keep]
        share.fill(_INF)
        np.divide(spare, count, out=share, where=count > 0)
        tightest = int(share.argmin())
        lowest = share[tightest]
        if lowest == _INF:
            raise ValueError("an active flow crosses no link")
        level = lowest if lowest > 0.0 else 0.0
        rate = None
        if any_capped:
            frozen = capped & (caps < level)
            if frozen.any():
                rate = caps[frozen]
        if rate is None and count[tightest] == left:  # every unfrozen flow crosses it: all freeze at level
            rates[free if index is None else index[free]] = level
            return rates
        if rate is None:
            bottleneck = share == lowest
            bottleneck[0] = False
            frozen = bottleneck[routes].any(axis=0)
            frozen &= free
            rate = level
        if index is None:
            rates[frozen] = rate
        else:
            rates[index[frozen]] = rate
        frozen_now = int(np.count_nonzero(frozen))
        if not frozen_now:
            raise AssertionError("water-filling froze no flow")  # cannot happen: a bottleneck has flows
        columns -= frozen_now
        left -= frozen_now if weight is None else int(weight[frozen].sum())
        if not left:
            return rates
        free &= ~frozen
        if any_capped:
            capped &= free
            any_capped = bool(capped.any())
        hops = np.compress(frozen, routes, axis=1).ravel()
        many = None if weight is None else np.concatenate([weight[frozen]] * width)  # each hop's flows
        used = np.bincount(hops, many, minlength=links)
        if isinstance(rate, np.ndarray):
            each = np.concatenate([rate] * width)
            spare -= np.bincount(hops, each if many is None else each * many, minlength=links)
        else:
            spare -= used * rate
        count -= used
        count[0] = 0.0


def water_fill_small(routes: list[tuple[int, ...]], caps: list[float], capacity) -> list[float]:
    """`max_min_rates` in plain Python, for a handful of flows (a few numpy calls cost more): the same
    rounds, with each flow's route a tuple of link ids (no padding) and capacity indexable by id."""
    spare: dict[int, float] = {}
    count: dict[int, int] = {}
    for route in routes:
        for link in route:
            if link in count:
                count[link] += 1
            else:
                count[link] = 1
                spare[link] = capacity[link]
    rates = [0.0] * len(routes)
    free = list(range(len(routes)))
    any_capped = any(cap < _INF for cap in caps)
    while free:
        lowest = min(spare[link] / k for link, k in count.items() if k)
        level = lowest if lowest > 0.0 else 0.0
        frozen = [i for i in free if caps[i] < level] if any_capped else None
        if frozen:
            for i in frozen:
                rate = rates[i] = caps[i]
                for link in routes[i]:
                    spare[link] -= rate
                    count[link] -= 1
        else:
            bottleneck = {link for link, k in count.items() if k and spare[link] / k == lowest}
            frozen = [i for i in free if not bottleneck.isdisjoint(routes[i])]
            for i in frozen:
                rates[i] = level
                for link in routes[i]:
                    spare[link] -= level
                    count[link] -= 1
        if not frozen:
            raise AssertionError("water-filling froze no flow")  # cannot happen: a bottleneck has flows
        gone = set(frozen)
        free = [i for i in free if i not in gone]
    return rates


class Flow:
    """One message in flight (or the r messages of a pipelined ring phase).

    `start` is when its first byte moves (after one latency), `end` when its last byte lands or it
    failed; `done` fires `tail` seconds after `end` (the latency of the phase's r-1 later messages).
    A flow of a `send_all` has no event of its own: its `done` is the `Batch` it belongs to.
    While the flow moves bytes, `rate` and `remaining` are read from its network's arrays.
    """

    __slots__ = ("src", "dst", "size", "tag", "links", "cap", "done", "submitted", "start", "end", "tail",
                 "error", "_remaining", "_rate", "_net", "_slot", "_ids", "_class")

    def __init__(self, src: str, dst: str, size: float, tag: str, links: tuple[Link, ...], cap: float,
                 done: simpy.Event, submitted: float, start: float = math.nan, end: float = math.nan,
                 remaining: float = 0.0, rate: float = 0.0, tail: float = 0.0,
                 error: Exception | None = None):
        self.src, self.dst, self.size, self.tag, self.links, self.cap = src, dst, size, tag, links, cap
        self.done, self.submitted, self.start, self.end, self.tail = done, submitted, start, end, tail
        self.error = error  # why it failed (LinkDown), None while it has not
        self._remaining, self._rate = remaining, rate
        self._net: FlowNetwork | None = None  # the network whose arrays hold it while active
        self._slot = -1
        self._ids = None
        self._class = -1  # its class of identical flows in the network (FlowNetwork._class)

    @property
    def remaining(self) -> float:
        """Bytes still to move (as of the network's last advance)."""
        return float(self._net._rem[self._slot]) if self._slot >= 0 else self._remaining

    @remaining.setter
    def remaining(self, value: float) -> None:
        if self._slot >= 0:
            self._net._rem[self._slot] = value
        else:
            self._remaining = value

    @property
    def rate(self) -> float:
        """Bytes/s now: the max-min fair share while active, the last one once landed, 0 once failed."""
        return float(self._net._rate[self._slot]) if self._slot >= 0 else self._rate

    @rate.setter
    def rate(self, value: float) -> None:
        if self._slot >= 0:
            self._net._rate[self._slot] = value
        else:
            self._rate = value

    def __repr__(self) -> str:
        return (f"Flow({self.src!r}->{self.dst!r}, size={self.size!r}, tag={self.tag!r}, "
                f"remaining={self.remaining!r}, rate={self.rate!r}, start={self.start!r}, end={self.end!r})")


class Batch:
    """The flows of one `send_all` and its event: how many have not landed yet (`left`); `defused` as
    on the flows' own events (a failed batch flow never stops the run by itself)."""

    __slots__ = ("event", "left", "defused")

    def __init__(self, event: simpy.Event, left: int):
        self.event, self.left, self.defused = event, left, True

    def landed(self, count: int) -> None:
        """`count` more flows landed (their events would fire now): once all have, the event fires
        after one more hop of the queue, as `all_of`'s condition does after its last event."""
        self.left -= count
        if self.left == 0 and not self.event.triggered:
            self._after_a_hop(self._succeed)

    def failed(self, error: Exception) -> None:
        """A flow failed: the event fails after one hop (unless it already failed), as `all_of`'s does."""
        if not self.event.triggered:
            self._after_a_hop(lambda _: self.event.triggered or self.event.fail(error))

    def _succeed(self, _) -> None:
        if not self.event.triggered:
            self.event.succeed()

    def _after_a_hop(self, callback) -> None:
        hop = simpy.Event(self.event.env)
        hop.callbacks.append(callback)
        hop.succeed()


class FlowNetwork:
    """Carries messages between hosts of a `Topology` and accounts bytes and busy time per link."""

    def __init__(self, env: simpy.Environment, topology: Topology):
        self.env = env
        self.topology = topology
        self.completed: list[Flow] = []  # kept while `record` is on (for the trace)
        # While `record` is on: (time, link name, bytes/s allocated on it, its capacity) each time a
        # link's total allocated rate or capacity changes (the trace's utilisation counters); a link's
        # entries are in time order. Names, not links: a log of plain values costs the GC nothing.
        self.rate_log: list[tuple[float, str, float, float]] = []
        self.failed: list[Flow] = []  # flows that a link going down ended (always kept: they are rare)
        self.record = True
        self.bytes_delivered = 0.0  # every completed message, recorded or not
        self.sent: dict[str, float] = defaultdict(float)  # bytes of completed messages, by source
        self.received: dict[str, float] = defaultdict(float)  # and by destination
        self._flows: dict[Flow, None] = {}  # active flows, in admission order
        # Links, by id (0: the padding of the hop columns), and per link id: capacity, active flows, busy
        # seconds, and its last (rate, capacity) in rate_log (logged: whether it has one).
        self._link_id: dict[Link, int] = {}
        self._links: list[Link | None] = [None]
        self._lcap = np.full(8, _INF)
        self._capacity: list[float] = [_INF]  # the same, as a list (for the small-instance path)
        self._lcount = np.zeros(8, dtype=np.int64)
        self._busy = np.zeros(8)
        self._bytes = np.zeros(8)  # bytes each link carried (failed flows' so far too), by link id
        self._bytes_view: defaultdict[Link, float] | None = None
        self._log_rate = np.zeros(8)
        self._log_cap = np.zeros(8)
        self._logged = np.zeros(8, dtype=bool)
        self._busy_view: defaultdict[Link, float] | None = None
        self._log_open: set[int] = set()  # links whose last rate_log entry has a rate above 0
        self._cap_changed: set[int] = set()  # links whose capacity changed since the last entries
        # Flows, by slot: bytes remaining, rate, cap, admission number, alive, link ids (a column each).
        self._rem = np.zeros(0)
        self._rate = np.zeros(0)
        self._fcap = np.zeros(0)
        self._seq = np.zeros(0, dtype=np.int64)
        self._alive = np.zeros(0, dtype=bool)
        self._hops = np.zeros((4, 0), dtype=np.intp)  # (hops, slots)
        self._slot_flow: list[Flow | None] = []
        self._free: list[int] = []  # free slots, the lowest last
        # Classes of identical flows (the same link ids and cap), which max-min gives one rate: where the
        # active flows are at least twice as many as their classes (many messages on few routes), a
        # reshare shares the classes, each weighted by its active flows. Per class: link ids (a column),
        # cap, active flows; per flow slot: its class.
        self._class_of: dict[tuple[tuple[int, ...], float], int] = {}
        self._chops = np.zeros((4, 0), dtype=np.intp)
        self._ccap = np.zeros(0)
        self._cflows = np.zeros(0, dtype=np.int64)
        self._fclass = np.zeros(0, dtype=np.intp)
        self._pending: list[Flow] = []  # admitted at this instant, not yet in the arrays (rate 0)
        self._admitted = 0
        self._dirty = False  # flows or capacities changed since the last allocation
        self._last = env.now
        self._wake: simpy.Event | None = None  # the pending reshare of this instant, once something changed
        self._due: simpy.Event | None = None  # the timeout of the next completion, and when it fires
        self._due_at = _INF
        self._paths = lru_cache(maxsize=None)(self._paths_uncached)
        # Timeout callbacks, bound once: a lambda per flow would be one more object for the GC to track.
        self._admit_after_latency = lambda event: self._admit(event.value)
        self._deliver_after_tail = lambda event: event.value.done.succeed(event.value)
        self._admit_all_after_latency = lambda event: self._admit_all(event.value)
        self._batch_after_tail = lambda event: event.value[0].landed(event.value[1])

    # -- public -------------------------------------------------------------------------------------
    def send(self, src: str, dst: str, nbytes: float, tag: str = "", messages: int = 1,
             cap: float = math.inf) -> simpy.Event:
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

        `cap` limits the flow's rate below what its route allows (bytes/s; e.g. NVLS's switch efficiency).
        """
        try:
            paths = self._paths(src, dst)
        except NoRoute:
            return self._failed_event(NoRoute(src, dst, at=self.env.now))
        if len(paths) == 1:
            return self._start(src, dst, nbytes, tag, paths[0], messages, cap)
        parts = [self._start(src, dst, nbytes / len(paths), tag, path, messages, cap) for path in paths]
        for part in parts:  # the condition reports the first failure; a second must not stop the run
            part.defused = True
        return self.env.all_of(parts)

    def send_all(self, transfers: list[tuple[str, str, float]], tag: str = "", messages: int = 1,
                 cap: float = math.inf) -> simpy.Event:
        """`all_of` over one `send(src, dst, nbytes, tag, messages, cap)` per transfer, each event defused (a
        collective reports its first failure; a second must not stop the run), in fewer SimPy events.

        Same flows, admitted in the same order at the same instants, and the returned event fires (or
        fails) at the same place in the event queue as the condition would (module docstring). Where
        that could not be kept exactly (a route of several paths, no route, a latency too small to move
        the clock), it is that `all_of`.
        """
        now = self.env.now
        regular = bool(transfers)
        paths, route = [], self._paths
        try:
            for src, dst, _ in transfers:
                p = route(src, dst)
                paths.append(p)
                if len(p) > 1 or 0 < p[0][1] and now + p[0][1] == now:
                    regular = False
        except NoRoute:
            regular = False
        if not regular:
            sends = [self.send(src, dst, nbytes, tag, messages, cap) for src, dst, nbytes in transfers]
            for send in sends:
                send.defused = True
            return self.env.all_of(sends)
        batch = Batch(self.env.event(), len(transfers))
        due: dict[float, list[Flow]] = {}  # first-byte time -> its flows, admitted by one timeout
        later = max(messages - 1, 0)
        for (src, dst, nbytes), ((links, latency, path_cap, ids, klass),) in zip(transfers, paths):
            nbytes = float(nbytes)
            if cap < path_cap:
                path_cap, klass = cap, self._class(ids, cap)
            flow = Flow(src, dst, nbytes, tag, links, path_cap, batch, now, math.nan, math.nan, nbytes, 0.0,
                        latency * later)
            flow._ids, flow._class = ids, klass
            if latency > 0:
                group = due.get(now + latency)
                if group is None:  # the timeout goes where the group's first flow's would have
                    group = due[now + latency] = []
                    self.env.timeout(latency, group).callbacks.append(self._admit_all_after_latency)
                group.append(flow)
            else:
                self._admit(flow)
        return batch.event

    def set_capacity(self, link: Link, bytes_per_s: float) -> None:
        """Change one directed link's usable bytes/s now; 0 takes it down (see the module docstring).

        Every flow moves to now at its old rate, then the flows are reshared at once. Taking the link
        down fails the flows crossing it with `LinkDown` and reroutes later sends around it; a
        capacity above zero brings it back into routing.
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

    @property
    def link_bytes(self) -> defaultdict[Link, float]:
        """Bytes each link carried: every delivered flow's size, and a failed flow's bytes up to its
        failure (links that never carried a flow: absent, or 0). A snapshot, rebuilt after changes."""
        if self._bytes_view is None:
            carried = self._bytes
            self._bytes_view = defaultdict(float, ((self._links[i], float(carried[i]))
                                                   for i in range(1, len(self._links))))
        return self._bytes_view

    @property
    def link_busy_s(self) -> defaultdict[Link, float]:
        """Seconds each link carried at least one flow (links that never did: absent, or 0)."""
        if self._busy_view is None:
            busy = self._busy
            self._busy_view = defaultdict(float, ((self._links[i], float(busy[i]))
                                                  for i in np.flatnonzero(busy[:len(self._links)] > 0)))
        return self._busy_view

    # -- sending ------------------------------------------------------------------------------------
    def _paths_uncached(self, src: str, dst: str):
        """(links, per-message latency, flow cap, link ids, class of its flows) of each path a message from
        src to dst uses. Raises `NoRoute` when no path of up links joins them (not cached: a link may come
        back)."""
        links = self.topology.route(src, dst) if src != dst else ()
        paths = self.topology.routes(src, dst) if any(l.transport.multipath for l in links) else (links,)
        found = []
        for p in paths:
            cap, ids = min((l.transport.flow_cap for l in p), default=math.inf), tuple(self._id(l) for l in p)
            found.append((p, self.latency(p), cap, ids, self._class(ids, cap) if ids else -1))
        return tuple(found)

    def _id(self, link: Link) -> int:
        """The link's id in the arrays (numbered as links first appear on a route)."""
        lid = self._link_id.get(link)
        if lid is None:
            lid = self._link_id[link] = len(self._links)
            self._links.append(link)
            if lid >= len(self._lcap):
                grow = len(self._lcap)
                self._lcap = np.concatenate([self._lcap, np.full(grow, _INF)])
                self._lcount = np.concatenate([self._lcount, np.zeros(grow, dtype=np.int64)])
                self._busy = np.concatenate([self._busy, np.zeros(grow)])
                self._bytes = np.concatenate([self._bytes, np.zeros(grow)])
                self._log_rate = np.concatenate([self._log_rate, np.zeros(grow)])
                self._log_cap = np.concatenate([self._log_cap, np.zeros(grow)])
                self._logged = np.concatenate([self._logged, np.zeros(grow, dtype=bool)])
            self._lcap[lid] = link.capacity
            self._capacity.append(link.capacity)
        return lid

    def _start(self, src: str, dst: str, nbytes: float, tag: str, path, messages: int,
               cap: float = math.inf) -> simpy.Event:
        """One flow on one path: admitted after one latency; the other messages' latency is its tail."""
        links, latency, path_cap, ids, klass = path
        if cap < path_cap:
            path_cap, klass = cap, self._class(ids, cap)
        done = self.env.event()
        flow = Flow(src, dst, float(nbytes), tag, links, path_cap, done, submitted=self.env.now,
                    remaining=float(nbytes), tail=latency * max(messages - 1, 0))
        flow._ids, flow._class = ids, klass  # the links' ids (a tuple) and the flow's class
        if latency > 0:
            self.env.timeout(latency, flow).callbacks.append(self._admit_after_latency)
        else:
            self._admit(flow)
        return done

    def _failed_event(self, error: Exception) -> simpy.Event:
        event = self.env.event()
        event.fail(error)
        return event

    # -- the model ----------------------------------------------------------------------------------
    def _admit_all(self, flows: list[Flow]) -> None:
        """`_admit` each flow, in order; at once when none has to finish or fail on arrival."""
        now = self.env.now
        regular = not self.topology.down_links
        for flow in flows:
            flow.start = now
            if flow.size <= 0 or not flow.links:
                regular = False
        if not regular:
            for flow in flows:
                self._admit(flow)
            return
        self._flows.update(dict.fromkeys(flows))
        self._pending += flows
        self._dirty = True
        self._wake_up()

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
        self._flows[flow] = None
        self._pending.append(flow)  # it joins the arrays at the next advance, at this instant
        self._dirty = True
        self._wake_up()  # the network reshares once, after every flow of this instant

    def _join(self) -> None:
        """Put the flows admitted since the last advance into the arrays, at rate 0, in admission order."""
        flows, self._pending = self._pending, []
        k = len(flows)
        while len(self._free) < k:
            self._grow()
        ids = [f._ids for f in flows]
        lengths = list(map(len, ids))
        width = max(lengths)
        if width > len(self._hops):
            self._hops = np.concatenate([self._hops, np.zeros((width - len(self._hops), self._hops.shape[1]),
                                                              dtype=np.intp)])
        free, slot_flow = self._free, self._slot_flow
        if k <= 6:  # a few numpy scalars cost less than the vectorised bookkeeping
            hops, lcount, rem, cap, seq, alive = (self._hops, self._lcount, self._rem, self._fcap, self._seq,
                                                  self._alive)
            for f in flows:
                slot, ids = free.pop(), f._ids
                hops[:len(ids), slot] = ids
                lcount[list(ids)] += 1
                klass = self._fclass[slot] = f._class
                self._cflows[klass] += 1
                rem[slot], cap[slot], seq[slot], alive[slot] = f._remaining, f.cap, self._admitted, True
                self._admitted += 1
                f._net, f._slot = self, slot
                slot_flow[slot] = f
            return
        slots = free[:-k - 1:-1]  # popped from the end, one after another
        del free[-k:]
        where = np.array(slots, dtype=np.intp)
        lengths = np.array(lengths, dtype=np.intp)
        flat = np.fromiter(chain.from_iterable(ids), dtype=np.intp, count=int(lengths.sum()))
        starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
        self._hops[np.arange(len(flat)) - starts, np.repeat(where, lengths)] = flat
        links = len(self._links)
        self._lcount[:links] += np.bincount(flat, minlength=links)
        self._rem[where] = [f._remaining for f in flows]
        self._fcap[where] = [f.cap for f in flows]
        classes = np.fromiter((f._class for f in flows), dtype=np.intp, count=k)
        self._fclass[where] = classes
        self._cflows += np.bincount(classes, minlength=len(self._cflows))
        self._seq[where] = np.arange(self._admitted, self._admitted + k)
        self._admitted += k
        self._alive[where] = True
        for f, slot in zip(flows, slots):
            f._net, f._slot = self, slot
            slot_flow[slot] = f

    def _grow(self) -> None:
        """Double the flow slots (the new ones go to the bottom of the free list)."""
        old = len(self._rem)
        new = max(16, 2 * old)
        pad = new - old
        self._rem = np.concatenate([self._rem, np.zeros(pad)])
        self._rate = np.concatenate([self._rate, np.zeros(pad)])
        self._fcap = np.concatenate([self._fcap, np.zeros(pad)])
        self._seq = np.concatenate([self._seq, np.zeros(pad, dtype=np.int64)])
        self._alive = np.concatenate([self._alive, np.zeros(pad, dtype=bool)])
        self._fclass = np.concatenate([self._fclass, np.zeros(pad, dtype=np.intp)])
        self._hops = np.concatenate([self._hops, np.zeros((len(self._hops), pad), dtype=np.intp)], axis=1)
        self._slot_flow += [None] * pad
        self._free[:0] = range(new - 1, old - 1, -1)

    def _class(self, ids: tuple[int, ...], cap: float) -> int:
        """The class of flows with these link ids and cap (a new one the first time)."""
        key = (ids, cap)
        klass = self._class_of.get(key)
        if klass is None:
            klass = self._class_of[key] = len(self._class_of)
            if klass == len(self._ccap):  # full: double the columns
                grow = max(16, klass)
                self._chops = np.concatenate([self._chops, np.zeros((len(self._chops), grow), dtype=np.intp)], axis=1)
                self._ccap = np.concatenate([self._ccap, np.zeros(grow)])
                self._cflows = np.concatenate([self._cflows, np.zeros(grow, dtype=np.int64)])
            if len(ids) > len(self._chops):
                self._chops = np.concatenate([self._chops, np.zeros((len(ids) - len(self._chops),
                                                                     self._chops.shape[1]), dtype=np.intp)])
            self._chops[:len(ids), klass] = ids
            self._ccap[klass] = cap
        return klass

    def _wake_up(self) -> None:
        """Something changed (flows joined, capacities moved): reshare once, later in this instant, after
        everything else due now has had its turn to add flows (one event per instant, however many)."""
        if self._wake is None:
            self._wake = self.env.event()
            self._wake.callbacks.append(self._reshare)
            self._wake.succeed()

    def _set_capacities(self, changes: list[tuple[Link, float]]) -> None:
        """Apply capacity changes now: advance the flows at their old rates, fail those on links that
        went down, reshare at once; the next completion is rescheduled later in the instant."""
        for _, bytes_per_s in changes:
            check_capacity(bytes_per_s)  # all or nothing
        self._advance()
        finished = self._retire_finished()  # a flow landing at this very instant is delivered, not failed
        self._apply_capacities(changes)
        cut = self._flows_crossing_down_links([link for link, _ in changes])
        self._remove(list(cut))
        self._allocate()
        self._finish(finished)
        for flow, link in cut.items():
            self._fail(flow, LinkDown(link.name, self.env.now))
        self._wake_up()

    def _apply_capacities(self, changes: list[tuple[Link, float]]) -> None:
        """Set the links' capacities and mark the flows for reallocation; drop the cached paths if a
        link went down or came back up (the topology drops its routes then too)."""
        rerouted = False
        for link, bytes_per_s in changes:
            rerouted |= self.topology.set_capacity(link, bytes_per_s)
            lid = self._link_id.get(link)
            if lid is not None:
                self._lcap[lid] = self._capacity[lid] = link.capacity
                self._cap_changed.add(lid)
        self._dirty = True
        if rerouted:
            self._paths.cache_clear()

    def _flows_crossing_down_links(self, links: list[Link]) -> dict[Flow, Link]:
        """Each active flow on one of these links that is down, with that link, in admission order."""
        down = [link for link in links if not link.up and link in self._link_id]
        if not down or not self._flows:
            return {}
        cut: dict[Flow, Link] = {}
        for link in down:
            crossing = self._alive & (self._hops == self._link_id[link]).any(axis=0)
            for slot in np.flatnonzero(crossing):
                cut.setdefault(self._slot_flow[slot], link)
        return {flow: cut[flow] for flow in sorted(cut, key=lambda f: self._seq[f._slot])}

    # The network has no process of its own: it runs from two kinds of event callbacks. A change (a flow
    # joins, a capacity moves) triggers one `_reshare` per instant; the next completion is one timeout
    # (`_due`), replaced whenever a reshare moves it (a replaced timeout still fires, and is ignored).
    def _reshare(self, _event) -> None:
        """The flows or capacities changed at this instant: move every flow to now, reshare, reschedule."""
        self._wake = None
        self._advance()
        self._allocate()
        self._schedule()

    def _schedule(self) -> None:
        """Set the timeout of the next completion at current rates (none while nothing moves); kept if
        it is already set for that very time."""
        delay = self._time_to_next_completion()
        at = self.env.now + delay
        if at == self._due_at and self._due is not None:
            return
        self._due_at = at
        self._due = None if delay == _INF else self.env.timeout(delay)
        if self._due is not None:
            self._due.callbacks.append(self._complete)

    def _complete(self, event) -> None:
        """The next completion is due (unless a reshare replaced this timeout): retire the flows that
        landed, reshare the rest, deliver the landed ones and reschedule."""
        if event is not self._due:
            return
        self._due, self._due_at = None, _INF
        self._advance()
        finished = self._retire_finished()
        self._allocate()
        self._finish(finished)
        self._schedule()

    def _time_to_next_completion(self) -> float:
        """Seconds until the first active flow lands at current rates (inf: none will). A flow whose
        max-min rate is 0 (a zero cap, say) just waits for a change; nothing divides by its rate."""
        if not self._flows:
            return math.inf
        rate = self._rate
        first = float(np.divide(self._rem, rate, out=np.full(len(rate), _INF), where=rate > 0).min())
        return first if first == _INF else max(0.0, first)

    def _retire_finished(self) -> list[Flow]:
        """Take out of the network the flows that have landed by now (in admission order), and return them.

        Done: flows within a float rounding of their end (a sub-picosecond remainder, or one so small
        that now + remaining/rate == now, which would otherwise spin forever).
        """
        if not self._flows:
            return []
        horizon = max(1e-12, 4 * math.ulp(self.env.now))
        slots = np.flatnonzero((self._rem <= self._rate * horizon) & self._alive)
        if not len(slots):
            return []
        if len(slots) > 1:
            slots = slots[np.argsort(self._seq[slots], kind="stable")]
        finished = [self._slot_flow[slot] for slot in slots.tolist()]
        self._remove(finished)
        return finished

    def _remove(self, flows: list[Flow]) -> None:
        """Take flows off their links (each keeps its last remaining and rate); reshare at the next
        allocation."""
        if not flows:
            return
        rem, rate, hops, slot_flow, active = self._rem, self._rate, self._hops, self._slot_flow, self._flows
        if len(flows) <= 4:  # a few numpy scalars cost less than the vectorised bookkeeping
            lcount, alive, free = self._lcount, self._alive, self._free
            for f in flows:
                slot, ids = f._slot, f._ids
                f._remaining, f._rate, f._slot = float(rem[slot]), float(rate[slot]), -1
                lcount[list(ids)] -= 1
                self._cflows[self._fclass[slot]] -= 1
                hops[:len(ids), slot] = 0
                alive[slot] = False
                rate[slot] = rem[slot] = 0.0
                slot_flow[slot] = None
                free.append(slot)
                del active[f]
            self._dirty = True
            return
        slots = np.array([f._slot for f in flows], dtype=np.intp)
        for f, left, r in zip(flows, rem[slots].tolist(), rate[slots].tolist()):
            f._remaining, f._rate, f._slot = left, r, -1
            del active[f]
        links = len(self._links)
        self._lcount[:links] -= np.bincount(hops[:, slots].ravel(), minlength=links)
        self._lcount[0] = 0
        self._cflows -= np.bincount(self._fclass[slots], minlength=len(self._cflows))
        hops[:, slots] = 0
        self._alive[slots] = False
        rate[slots] = 0.0
        rem[slots] = 0.0
        slot_list = slots.tolist()
        for slot in slot_list:
            slot_flow[slot] = None
        self._free.extend(sorted(slot_list, reverse=True))
        self._dirty = True

    def _advance(self) -> None:
        """Move every active flow forward to now at its current rate; accumulate link busy time."""
        dt = self.env.now - self._last
        self._last = self.env.now
        if dt > 0 and len(self._flows) > len(self._pending):
            self._rem -= self._rate * dt
            links = len(self._links)
            self._busy[:links][self._lcount[:links] > 0] += dt
            self._busy_view = None
        if self._pending:  # the flows admitted since then join now
            self._join()

    def _allocate(self) -> None:
        """Max-min fair rates of every active flow (`max_min_rates`, over the flows or their classes;
        `water_fill_small` for a handful), after flows or capacities changed."""
        if not self._dirty:
            return
        self._dirty = False
        if self._pending:
            self._join()
        if len(self._flows) <= _SMALL:
            flows = list(self._flows)
            rates = water_fill_small([f._ids for f in flows], [f.cap for f in flows], self._capacity)
            if flows:
                self._rate[[f._slot for f in flows]] = rates
            if self.record:
                self._log_few(flows, rates)
        else:
            links = len(self._links)
            classes = len(self._class_of)
            weight = self._cflows[:classes]
            if 2 * np.count_nonzero(weight) <= len(self._flows):  # many flows a class: share the classes
                rate = max_min_rates(self._chops[:, :classes], self._ccap[:classes], self._lcap[:links],
                                     self._lcount[:links], weight > 0, weight)[self._fclass]
                rate[~self._alive] = 0.0
                self._rate = rate
            else:
                self._rate = max_min_rates(self._hops, self._fcap, self._lcap[:links], self._lcount[:links],
                                           self._alive)
            if self.record:
                self._log_rates()

    # While recording, each allocation appends (now, link name, total allocated rate, capacity) for each
    # link whose rate moved by more than a rounding, or whose capacity changed, since its last entry (0
    # for a link left without flows). A link that never carried a flow has no entry. Reads the
    # allocation only: the model's numbers are the same without it. Two ways, as for the allocation.
    def _log_rates(self) -> None:
        """The log's entries, vectorised over every link."""
        n = len(self._links)
        capacity, busy, logged = self._lcap[:n], self._lcount[:n] > 0, self._logged[:n]
        hops = self._hops
        rate = np.bincount(hops.ravel(), np.tile(self._rate, len(hops)), minlength=n)[:n]
        rate[0] = 0.0
        last_rate, last_cap = self._log_rate[:n], self._log_cap[:n]
        moved = (last_cap != capacity) | (np.abs(rate - last_rate) > 1e-12 * capacity)
        carrying = busy & np.where(logged, moved, rate > 0)
        emptied = ~busy & logged & ((last_rate != 0.0) | (last_cap != capacity))
        self._cap_changed.clear()
        if not carrying.any() and not emptied.any():
            return
        now, log, links, open_ = self.env.now, self.rate_log.append, self._links, self._log_open
        for lid, r in zip(np.flatnonzero(carrying).tolist(), rate[carrying].tolist()):
            log((now, links[lid].name, r, float(capacity[lid])))
            if r != 0.0:
                open_.add(lid)
            else:
                open_.discard(lid)
        for lid in sorted(np.flatnonzero(emptied).tolist(), key=lambda i: links[i].name):
            log((now, links[lid].name, 0.0, float(capacity[lid])))
            open_.discard(lid)
        update = carrying | emptied
        last_rate[update] = rate[update]
        last_cap[update] = capacity[update]
        logged[update] = True

    def _log_few(self, flows: list[Flow], rates: list[float]) -> None:
        """The log's entries for a handful of flows, link by link in plain Python (same state, same
        entries as `_log_rates` up to the last bit of a sum)."""
        on_link: dict[int, float] = {}
        for f, r in zip(flows, rates):
            for lid in f._ids:
                on_link[lid] = on_link.get(lid, 0.0) + r
        now, log, links, capacity, open_ = self.env.now, self.rate_log.append, self._links, self._capacity, \
            self._log_open
        last_rate, last_cap, logged = self._log_rate, self._log_cap, self._logged
        for lid in sorted(on_link):
            rate, cap = on_link[lid], capacity[lid]
            if logged[lid]:
                if last_cap[lid] == cap and abs(rate - last_rate[lid]) <= 1e-12 * cap:
                    continue
            elif rate <= 0:
                continue
            log((now, links[lid].name, rate, cap))
            last_rate[lid], last_cap[lid], logged[lid] = rate, cap, True
            if rate != 0.0:
                open_.add(lid)
            else:
                open_.discard(lid)
        for lid in sorted((open_ | self._cap_changed) - on_link.keys(), key=lambda i: links[i].name):
            cap = capacity[lid]
            if logged[lid] and (last_rate[lid] != 0.0 or last_cap[lid] != cap):
                log((now, links[lid].name, 0.0, cap))
                last_rate[lid], last_cap[lid] = 0.0, cap
            open_.discard(lid)
        self._cap_changed.clear()

    def _finish(self, flows: list[Flow]) -> None:
        """The flows' last bytes landed now: account them, and fire each one's event after its tail.

        A batch's flows of one tail are told to it together, where the last of them would have told it
        (landed(count) then, or one timeout of the tail carrying the count): the earlier ones' events
        would only have been counted."""
        now = self.env.now
        groups: dict = {}  # (batch, tail) -> [flows, index of the last one]
        for i, f in enumerate(flows):
            if type(f.done) is Batch:
                group = groups.get((f.done, f.tail))
                if group is None:
                    groups[f.done, f.tail] = [1, i]
                else:
                    group[0] += 1
                    group[1] = i
        self._carried(flows)
        sent, received, completed = self.sent, self.received, self.completed if self.record else None
        delivered = self.bytes_delivered
        for i, f in enumerate(flows):
            f.end = now
            f._remaining = 0.0
            size = f.size
            if f.links:
                sent[f.src] += size
                received[f.dst] += size
            delivered += size
            if completed is not None:
                completed.append(f)
            done, tail = f.done, f.tail
            if type(done) is Batch:
                count, last = groups[done, tail]
                if i == last:
                    if tail <= 0:
                        done.landed(count)
                    else:
                        self.env.timeout(tail, (done, count)).callbacks.append(self._batch_after_tail)
            elif tail > 0:
                self.env.timeout(tail, f).callbacks.append(self._deliver_after_tail)
            else:
                done.succeed(f)
        self.bytes_delivered = delivered

    def _carried(self, flows: list[Flow], sizes: list[float] | None = None) -> None:
        """Add each flow's size (or sizes[i]) to the bytes of every link it crossed, flow after flow in
        order (np.add.at adds in that order, so the sums are the same bits as a loop's)."""
        if sizes is None:
            sizes = [f.size for f in flows]
        self._bytes_view = None
        if len(flows) <= 4:  # a few numpy scalars cost less than np.add.at
            carried = self._bytes
            for f, size in zip(flows, sizes):
                for i in f._ids:
                    carried[i] += size
            return
        lengths = [len(f._ids) for f in flows]
        if not any(lengths):
            return
        ids = [i for f in flows for i in f._ids]
        np.add.at(self._bytes, ids, np.repeat(sizes, lengths))

    def _fail(self, flow: Flow, error: Exception) -> None:
        """The flow will not be delivered: its links keep the bytes they carried; its event fails now."""
        flow.end = self.env.now
        flow._rate = 0.0
        flow.error = error
        carried = min(max(flow.size - flow._remaining, 0.0), flow.size)
        if carried > 0:
            self._carried([flow], [carried])
        self.failed.append(flow)
        if type(flow.done) is Batch:
            flow.done.failed(error)
        else:
            flow.done.fail(error)
