"""The vectorised flow network against plain references written from the model's definition.

1. `max_min_rates` (the water-filling the network runs at every change) against progressive filling
   in exact rational arithmetic, on thousands of random instances: random links and capacities (0: a
   failed link), routes, per-flow caps (inf and 0 included), tied shares, padding and inactive columns.
2. Whole runs of `FlowNetwork` (random topologies, transports, messages, ring flows, multipath, capacity
   changes and link failures at random times) against a fluid simulation written here: the same
   flows' rates at every instant, completion and failure times, bytes per link, busy time per link,
   sent/received, and the rate_log.
3. The handles: a `Flow`'s rate and remaining while active and after, admission order, determinism.
"""

from __future__ import annotations

import math
from fractions import Fraction

import networkx as nx
import numpy as np
import pytest
import simpy
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pssim.network import FlowNetwork, LinkDown, NetworkError, NoRoute, Topology, Transport
from pssim.network.flows import max_min_rates

INF = math.inf


# -- the reference: progressive filling from its definition ---------------------------------------------
def reference_rates(routes: list[list[int]], caps: list[float], capacity, exact: bool = True) -> list:
    """Max-min fair rates by progressive filling: every unfrozen flow's rate rises at the same pace from
    0; a flow freezes once it reaches its own cap or once a link it crosses is full (the rates of the
    flows on it add up to its capacity). Capacity 0 (a failed link) is full at once. Every flow
    crosses at least one link, none twice. Exact (Fractions), or in floats with a link full to within
    1e-12 of its capacity (fast enough to drive the fluid simulation below)."""
    num = Fraction if exact else float
    tol = 0 if exact else 1e-12
    n = len(routes)
    rate = [num(0)] * n
    frozen = [False] * n
    cap = [None if c == INF else num(c) for c in caps]
    users: dict[int, list[int]] = {}
    for i, route in enumerate(routes):
        for link in route:
            users.setdefault(link, []).append(i)
    size = {link: num(capacity[link]) for link in users}
    while not all(frozen):
        rise = [(size[link] - sum(rate[i] for i in fs)) / sum(not frozen[i] for i in fs)
                for link, fs in users.items() if any(not frozen[i] for i in fs)]
        rise += [cap[i] - rate[i] for i in range(n) if not frozen[i] and cap[i] is not None]
        step = max(min(rise), num(0))
        for i in range(n):
            if not frozen[i]:
                rate[i] += step
        full = {link for link, fs in users.items() if size[link] - sum(rate[i] for i in fs) <= tol * size[link]}
        for i in range(n):
            if not frozen[i] and ((cap[i] is not None and cap[i] - rate[i] <= tol * cap[i])
                                  or full.intersection(routes[i])):
                frozen[i] = True
    return rate


def assert_rates_match(got, expected, scale: float) -> None:
    """Equal to 1e-12 relative; a rate left over after a cancellation (a link less nearly all of it)
    to 1e-12 of the instance's largest capacity."""
    for i, (g, e) in enumerate(zip(got, expected)):
        e = float(e)
        assert abs(g - e) <= 1e-12 * max(abs(e), scale), (i, g, e)


# -- 1. the water-filling against the reference ---------------------------------------------------------
@st.composite
def instances(draw):
    links = draw(st.integers(1, 10))
    scale = draw(st.sampled_from([1.0, 1e-3, 1e9, 1.25e10]))
    unit = st.one_of(st.sampled_from([0.0, 1.0, 2.0, 3.0, 4.0]),  # ties (and failed links)
                     st.sampled_from([1.0 + 1e-9, 2.0 - 3e-8, 3.0 + 2e-7]),  # near ties
                     st.floats(0.01, 100.0, allow_nan=False, allow_infinity=False))
    capacity = [draw(st.floats(0.0, 1e12))] + [scale * draw(unit) for _ in range(links)]  # [0]: padding
    n = draw(st.integers(0, 24))
    routes = [draw(st.lists(st.integers(1, links), min_size=1, max_size=min(links, 5), unique=True))
              for _ in range(n)]
    cap = st.one_of(st.just(INF), st.just(0.0), st.sampled_from([0.5 * scale, scale, 2 * scale]),
                    st.sampled_from([0.5 + 1e-9, 1.0 - 2e-8, 1.5 + 1e-7]).map(lambda x: x * scale),
                    st.floats(0.0, 100.0).map(lambda x: x * scale))
    caps = [draw(cap) for _ in range(n)]
    inactive = draw(st.lists(st.integers(0, 3), max_size=4))  # columns of no flow, anywhere
    return capacity, routes, caps, inactive


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instances(), st.integers(0, 2))
def test_water_filling_equals_progressive_filling(instance, extra_width):
    capacity, routes, caps, inactive = instance
    expected = reference_rates(routes, caps, capacity)
    # Lay the flows out as the network does: one column per flow, padded with link 0, with inactive
    # columns (stale link ids in them) spread among the flows.
    width = max((len(r) for r in routes), default=1) + extra_width
    columns, cap_of, active = [], [], []
    order = list(range(len(routes)))
    for k, position in enumerate(sorted(inactive)):
        order.insert(min(position + k, len(order)), None)
    for i in order:
        route = routes[i] if i is not None else list(range(1, len(capacity)))[:width]
        columns.append(route + [0] * (width - len(route)))
        cap_of.append(caps[i] if i is not None else 1.0)
        active.append(i is not None)
    hops = np.array(columns, dtype=np.intp).T.reshape(width, len(columns))
    act = np.array(active, dtype=bool)
    got = max_min_rates(hops, np.array(cap_of, dtype=float), np.array(capacity), active=act)
    assert np.all(got[~act] == 0.0) and np.all(got >= 0.0)  # never below 0, even where rounding left a link
    scale = max(capacity[1:])
    assert_rates_match(got[act], [expected[i] for i in order if i is not None], scale)
    # The link counts the network keeps give the same rates.
    count = np.bincount(hops[:, act].ravel(), minlength=len(capacity))
    again = max_min_rates(hops, np.array(cap_of, dtype=float), np.array(capacity), count=count, active=act)
    assert np.array_equal(got, again)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instances(), st.lists(st.integers(1, 4), min_size=24, max_size=24))
def test_weighted_classes_get_the_rates_their_flows_get_one_by_one(instance, copies):
    """A column standing for m identical flows (weight m) gets the rate each of those m flows gets when
    they are laid out one by one: the progressive-filling reference's, to 1e-12; and without caps the
    very same bits as the one-by-one water-filling (a link's count of frozen flows is the same integer)."""
    capacity, routes, caps, _ = instance
    if not routes:
        return
    m = copies[:len(routes)]
    width = max(len(r) for r in routes)

    def layout(rs):
        return np.array([r + [0] * (width - len(r)) for r in rs], dtype=np.intp).T.reshape(width, len(rs))
    one_by_one = [i for i in range(len(routes)) for _ in range(m[i])]
    expanded = max_min_rates(layout([routes[i] for i in one_by_one]), np.array([caps[i] for i in one_by_one]),
                             np.array(capacity))
    hops, weight = layout(routes), np.array(m)
    count = np.bincount(np.repeat(hops, weight, axis=1).ravel(), minlength=len(capacity))
    classes = max_min_rates(hops, np.array(caps, dtype=float), np.array(capacity), count=count,
                            active=np.ones(len(routes), dtype=bool), weight=weight)
    expected = reference_rates([routes[i] for i in one_by_one], [caps[i] for i in one_by_one], capacity)
    assert_rates_match(classes[one_by_one], expected, max(capacity[1:]))
    if all(c == INF for c in caps):
        assert np.array_equal(classes[one_by_one], expanded)


def test_a_network_of_many_flows_on_few_routes_shares_their_classes(monkeypatch):
    """On a star of 10 GB/s NICs, 1 GB flows: 10 from h0 to h1 (A), 10 from h2 to h1 (B), 5 from h0 to
    h3 (C): three classes of 25 flows, so the network shares the classes, weighted. h1's downlink holds
    A and B at 10/20 = 0.5 GB/s each (h0's uplink would give 10/15); h0's uplink then has 10 - 10 x 0.5
    left for C's 5 flows: 1 GB/s. C lands at 1 s, A and B at 2 s."""
    env = simpy.Environment()
    t = Transport(name="t", kind="rdma", bandwidth=10e9, efficiency=1.0, latency_s=0.0, hop_latency_s=0.0,
                  flow_cap=INF, cpu_s_per_byte=0.0)
    from pssim.network import star
    net = FlowNetwork(env, star([f"h{i}" for i in range(4)], t))
    ends, columns = {}, []
    from pssim.network import flows

    def spy(routes, *args, **kw):
        columns.append(routes.shape[1])
        return max_min_rates(routes, *args, **kw)
    monkeypatch.setattr(flows, "max_min_rates", spy)

    def send(src, dst, k):
        yield net.send(src, dst, 1e9)
        ends[src, dst, k] = env.now
    for src, dst, flows in (("h0", "h1", 10), ("h2", "h1", 10), ("h0", "h3", 5)):
        for k in range(flows):
            env.process(send(src, dst, k))
    env.run()
    assert len(net._class_of) == 3 and max(columns) <= 16  # shared over the classes' columns, not 25 flows'
    assert sorted(set(round(t, 12) for t in ends.values())) == [1.0, 2.0]
    assert all(t == pytest.approx(1.0 if dst == "h3" else 2.0, rel=1e-12) for (_, dst, _), t in ends.items())


def test_water_filling_by_hand():
    """Links 1 (capacity 1) and 2 (capacity 2). Flow A crosses 1 and 2, B only 1, C and D only 2:
    1 is the bottleneck at 1/2 (A, B); 2 then has 1.5 for C and D. With C capped at 0.25, D takes 1.25."""
    hops = np.array([[1, 1, 2, 2], [2, 0, 0, 0]])
    rates = max_min_rates(hops, np.full(4, INF), np.array([INF, 1.0, 2.0]))
    assert rates.tolist() == [0.5, 0.5, 0.75, 0.75]
    rates = max_min_rates(hops, np.array([INF, INF, 0.25, INF]), np.array([INF, 1.0, 2.0]))
    assert rates.tolist() == [0.5, 0.5, 0.25, 1.25]
    # Tied bottlenecks: two links of capacity 3 shared by three flows each, one flow on both.
    hops = np.array([[1, 1, 1, 2, 2], [2, 0, 0, 0, 0]])
    assert max_min_rates(hops, np.full(5, INF), np.array([0.0, 3.0, 3.0])).tolist() == [1.0] * 5
    # A cap of 0 and a failed link: both rate 0, the rest unaffected.
    hops = np.array([[1, 1, 2]])
    assert max_min_rates(hops, np.array([0.0, INF, INF]), np.array([0.0, 4.0, 0.0])).tolist() == [0.0, 4.0, 0.0]


# -- 2. whole runs against a fluid simulation -------------------------------------------------------------
def _transport(draw, name):
    bandwidth = draw(st.sampled_from([1e9, 2e9, 1.25e9, 3e9, 2e9 * (1 + 3e-9)]))
    cap = draw(st.sampled_from([INF, INF, INF, 0.5e9, 0.8e9, 1e9, 0.5e9 * (1 + 1e-9)]))
    latency = draw(st.sampled_from([0.0, 1e-6, 2e-5]))
    hop = draw(st.sampled_from([0.0, 1e-6]))
    multipath = draw(st.booleans()) and draw(st.booleans())
    return Transport(name, "tcp", bandwidth, 1.0, latency, hop, cap, 0.0, multipath)


@st.composite
def scenarios(draw):
    """A random connected topology, messages sent at random times, and link events."""
    nodes = draw(st.integers(3, 7))
    graph_edges = {(i, i + 1) for i in range(nodes - 1)}  # a path keeps it connected
    for _ in range(draw(st.integers(0, 6))):
        a, b = sorted(draw(st.lists(st.integers(0, nodes - 1), min_size=2, max_size=2, unique=True)))
        graph_edges.add((a, b))
    transports = [_transport(draw, f"t{k}") for k in range(2)]
    edges = [(a, b, transports[draw(st.integers(0, 1))]) for a, b in sorted(graph_edges)]
    sends = []
    for _ in range(draw(st.integers(1, 30))):
        src, dst = draw(st.lists(st.integers(0, nodes - 1), min_size=2, max_size=2, unique=True))
        sends.append((draw(st.floats(0.0, 0.004)), src, dst,
                      draw(st.sampled_from([0.0, 1e5, 1e6, 4e6, 1e7, 3e7])) * draw(st.sampled_from([1.0, 1.37])),
                      draw(st.sampled_from([1, 1, 3]))))
    changes = []
    for _ in range(draw(st.integers(0, 4))):
        a, b, _t = edges[draw(st.integers(0, len(edges) - 1))]
        fraction = draw(st.sampled_from([0.0, 0.0, 0.25, 0.5, 1.0]))
        changes.append((draw(st.floats(0.0, 0.01)) + 1.2345e-7, a, b, fraction))  # never at a send's instant
    return nodes, edges, sends, changes


def build(nodes, edges):
    topology = Topology(nx.DiGraph(), [f"n{i}" for i in range(nodes)])
    for a, b, transport in edges:
        topology.add_duplex(f"n{a}", f"n{b}", transport)
    return topology


def route_latency(links) -> float:
    if not links:
        return 0.0
    return sum(l.transport.hop_latency_s for l in links) + max(l.transport.latency_s for l in links)


class Checker:
    """Runs a scenario on a FlowNetwork, checking the rates at each of its events against the reference,
    and records what became of every flow."""

    def __init__(self, scenario):
        nodes, edges, sends, changes = scenario
        self.env = env = simpy.Environment()
        self.net = net = FlowNetwork(env, build(nodes, edges))
        self.outcomes = []  # (send time, event outcome dict)
        self.schedule = []  # (time, link, capacity): every capacity change, as the network saw it
        for when, src, dst, size, messages in sends:
            env.process(self._send(when, f"n{src}", f"n{dst}", size, messages))
        for when, a, b, fraction in changes:
            env.process(self._change(when, f"n{a}", f"n{b}", fraction))
        times = sorted({when for when, *_ in sends} | {when for when, *_ in changes})
        env.process(self._watch(times))
        self.checks = 0

    def _send(self, when, src, dst, size, messages):
        yield self.env.timeout(when)
        record = {"sent": self.env.now}
        self.outcomes.append(record)
        try:
            yield self.net.send(src, dst, size, "m", messages=messages)
            record["at"] = self.env.now
        except NetworkError as error:
            record["at"], record["error"] = self.env.now, error

    def _change(self, when, a, b, fraction):
        yield self.env.timeout(when)
        topology = self.net.topology
        for link in (topology.link(a, b), topology.link(b, a)):
            self.schedule.append((self.env.now, link, link.nominal_capacity * fraction))
        self.net.set_link_capacity(a, b, topology.link(a, b).nominal_capacity * fraction)

    def _watch(self, times):
        """Compare the active flows' rates with the reference a little after each send and change (off
        the events' times, once the network has reshared), and a few times later on."""
        later = [times[-1] + k * 1e-3 * math.pi for k in range(1, 4)] if times else []
        for when in [t + 1e-7 * math.pi for t in times] + later:
            yield self.env.timeout(when - self.env.now)
            self.check_rates()

    def check_rates(self):
        flows = self.net.active
        ids: dict = {}
        routes = [[ids.setdefault(l, len(ids)) for l in f.links] for f in flows]
        capacity = [l.capacity for l in ids]
        expected = reference_rates(routes, [f.cap for f in flows], capacity)
        assert_rates_match([f.rate for f in flows], expected, max(capacity, default=1.0))
        assert all(f.rate >= 0.0 for f in flows)
        self.checks += 1
        # The rate_log's last entry per link (while recording) is the link's allocated rate now.
        last = {}
        for t, name, rate, cap in self.net.rate_log:
            last[name] = (rate, cap)
        for link in ids:
            carried = sum(f.rate for f in flows if link in f.links)
            rate, cap = last[link.name]
            assert cap == link.capacity
            assert abs(rate - carried) <= 1e-9 * link.capacity
        for name, (rate, cap) in last.items():
            if all(link.name != name for link in ids):
                assert rate == 0.0  # a link left without flows is logged at 0


def fluid(flows, schedule):
    """Replay the run's flows (route, cap, admission time) and capacity changes in a fluid model of our
    own: rates from `reference_rates` between events, a flow on a link that goes down (or is down
    when it is admitted) fails. Returns per flow (end, failed), bytes and busy seconds per link."""
    capacity = {}
    for f in flows:
        for link in f.links:
            capacity[link] = link.nominal_capacity
    events = sorted([(t, 0, k) for k, (t, _, _) in enumerate(schedule)] +
                    [(f.submitted + route_latency(f.links), 1, k) for k, f in enumerate(flows)])
    left = {k: f.size for k, f in enumerate(flows)}
    active: list[int] = []
    outcome = {}
    carried = {}
    busy = {}
    rates: dict[int, float] = {}
    now = 0.0

    def reshare():
        rates.clear()
        if active:
            index = {link: i for i, link in enumerate(capacity)}
            got = reference_rates([[index[l] for l in flows[k].links] for k in active],
                                  [flows[k].cap for k in active], list(capacity.values()), exact=False)
            rates.update({k: float(r) for k, r in zip(active, got)})

    def advance(to):
        nonlocal now
        dt = to - now
        for k in active:
            left[k] -= rates[k] * dt
        for link in {l for k in active for l in flows[k].links}:
            busy[link] = busy.get(link, 0.0) + dt
        now = to

    queue = list(events)
    while queue or active:
        landing = min(((now + left[k] / rates[k], k) for k in active if rates[k] > 0), default=(INF, None))
        if queue and queue[0][0] <= landing[0]:
            t, kind, k = queue.pop(0)
            advance(t)
            landed = [j for j in active if left[j] <= rates[j] * 1e-12]  # delivered before the change
            for j in landed:
                active.remove(j)
                outcome[j] = (now, False)
                for l in flows[j].links:
                    carried[l] = carried.get(l, 0.0) + flows[j].size
            if kind == 0:
                _, link, value = schedule[k]
                capacity[link] = value
                if value == 0:
                    for j in [j for j in active if link in flows[j].links]:
                        active.remove(j)
                        outcome[j] = (now, True)
                        for l in flows[j].links:
                            carried[l] = carried.get(l, 0.0) + flows[j].size - left[j]
            else:
                f = flows[k]
                if any(capacity[l] == 0 for l in f.links):
                    outcome[k] = (now, True)
                elif f.size <= 0 or not f.links:
                    outcome[k] = (now, False)
                else:
                    active.append(k)
            reshare()
            continue
        if landing[1] is None:
            break  # only flows at rate 0 left: they never land
        advance(landing[0])
        horizon = max(1e-12, 4 * math.ulp(now))  # the model's rule: a sub-picosecond remainder has landed
        for k in [k for k in active if left[k] <= rates[k] * horizon]:
            active.remove(k)
            outcome[k] = (now, False)
            for l in flows[k].links:
                carried[l] = carried.get(l, 0.0) + flows[k].size
        reshare()
    return outcome, carried, busy


_CAPPED = Transport("t0", "tcp", 1e9, 1.0, 0.0, 1e-6, 0.5e9, 0.0)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
@example((3, [(0, 1, _CAPPED), (1, 2, _CAPPED)],  # the second lands 1 ps after the first: with it (within
          [(0.0, 0, 1, 1e5, 1), (1e-12, 0, 1, 1e5, 1), (5.2e-05, 0, 1, 0.0, 1)], []))  # a rounding)
def test_runs_match_a_fluid_simulation(scenario):
    check = Checker(scenario)
    check.env.run(until=100.0)
    net = check.net
    assert not net.active and check.checks > 0
    flows = [*net.completed, *net.failed]
    flows.sort(key=lambda f: (f.submitted, id(f)))
    # Each flow's first byte moves after one route latency; a ring flow's event fires r-1 latencies later.
    for f in flows:
        if f.error is None or not math.isnan(f.start):
            assert f.start == pytest.approx(f.submitted + route_latency(f.links), rel=1e-12, abs=1e-15)
    for f in net.active:
        assert f.start <= check.env.now
    outcome, carried, busy = fluid(flows, check.schedule)
    for k, f in enumerate(flows):
        end, failed = outcome.get(k, (INF, False))
        assert (f.error is not None) == failed, (f, end, failed)
        assert f.end == pytest.approx(end, rel=1e-9, abs=1e-11)
        if failed:
            assert isinstance(f.error, LinkDown)
    for link, nbytes in carried.items():
        assert net.link_bytes[link] == pytest.approx(nbytes, rel=1e-9, abs=1e-3)
    for link, seconds in busy.items():
        if seconds > 0:
            assert net.link_busy_s[link] == pytest.approx(seconds, rel=1e-9, abs=1e-12)
    delivered = [f for f in net.completed if f.links]
    assert sum(f.size for f in net.completed) == pytest.approx(net.bytes_delivered, rel=1e-12)
    for host in {f.src for f in delivered}:
        assert net.sent[host] == pytest.approx(sum(f.size for f in delivered if f.src == host), rel=1e-12)
    for host in {f.dst for f in delivered}:
        assert net.received[host] == pytest.approx(sum(f.size for f in delivered if f.dst == host), rel=1e-12)
    # Events: a delivered message's fires tail seconds after its last byte; NoRoute only with links down.
    for record in check.outcomes:
        if isinstance(record.get("error"), NoRoute):
            assert net.topology.down_links or check.schedule


def test_two_identical_runs_are_identical():
    scenario = (5, [(0, 1, Transport("a", "tcp", 1e9, 1.0, 1e-5, 1e-6, INF, 0.0)),
                    (1, 2, Transport("b", "tcp", 3e9, 1.0, 1e-5, 1e-6, 1e9, 0.0)),
                    (2, 3, Transport("a", "tcp", 1e9, 1.0, 1e-5, 1e-6, INF, 0.0)),
                    (1, 4, Transport("a", "tcp", 1e9, 1.0, 1e-5, 1e-6, INF, 0.0)),
                    (0, 4, Transport("a", "tcp", 1e9, 1.0, 1e-5, 1e-6, INF, 0.0))],
                [(i * 1e-4, i % 5, (3 * i + 1) % 5, 1e6 * (1 + i % 7), 1 + i % 3) for i in range(40)
                 if i % 5 != (3 * i + 1) % 5],
                [(2e-3, 1, 2, 0.5), (4e-3, 0, 4, 0.0), (6e-3, 0, 4, 1.0)])
    runs = []
    for _ in range(2):
        check = Checker(scenario)
        check.env.run(until=100.0)
        runs.append(([(f.submitted, f.start, f.end, f.rate) for f in check.net.completed],
                     list(check.net.rate_log), dict((l.name, b) for l, b in check.net.link_busy_s.items())))
    assert runs[0] == runs[1]
    assert runs[0][0]


# -- 3. the handles ---------------------------------------------------------------------------------------
def star(n=3, cap=INF):
    topology = Topology(nx.DiGraph(), [f"h{i}" for i in range(n)])
    for i in range(n):
        topology.add_duplex(f"h{i}", "s", Transport("t", "tcp", 1e9, 1.0, 0.0, 0.0, cap, 0.0))
    return topology


def test_flow_handles_read_the_arrays_while_active_and_keep_their_values_after():
    """`remaining` is as of the network's last event (it moves every flow at each one), as before."""
    env = simpy.Environment()
    net = FlowNetwork(env, star())
    first = net.send("h0", "h1", 1e6)
    net.send("h0", "h2", 3e6)
    env.run(until=1e-4)
    a, b = net.active
    assert (a.rate, b.rate) == (0.5e9, 0.5e9) and (a.remaining, b.remaining) == (1e6, 3e6)
    env.run(until=first)
    assert net.active == [b] and a.remaining == 0.0 and a.rate == 0.5e9 and a.end == pytest.approx(2e-3)
    assert b.rate == 1e9 and b.remaining == pytest.approx(2e6)
    net.set_capacity(net.topology.link("h0", "s"), 0.5e9)  # moves the flows to now, then reshares
    assert b.rate == 0.5e9 and b.remaining == pytest.approx(2e6)
    env.run(until=2.5e-3)
    net.set_capacity(net.topology.link("h0", "s"), 1e9)
    assert b.rate == 1e9 and b.remaining == pytest.approx(2e6 - 0.5e9 * 0.5e-3)
    b.remaining = 1e6  # a handle writes through to the arrays too
    env.run()
    assert net.active == [] and b.remaining == 0.0 and b.end == pytest.approx(3.5e-3)
    assert net.link_busy_s[net.topology.link("h0", "s")] == pytest.approx(3.5e-3)
    assert net.link_busy_s[net.topology.link("s", "h1")] == pytest.approx(2e-3)
    assert net.link_bytes[net.topology.link("h0", "s")] == 4e6


@pytest.mark.parametrize("per_wave", [4, 12])  # few flows join one by one, many as a batch
def test_flows_landing_together_fire_in_admission_order_and_slots_are_reused(per_wave):
    env = simpy.Environment()
    net = FlowNetwork(env, star(per_wave + 1))
    fired = []
    order = [(7 * k) % per_wave for k in range(per_wave)] if per_wave % 7 else list(range(per_wave))[::-1]
    for wave in range(3):
        for i in order:
            net.send(f"h{per_wave}", f"h{i}", 1e6).callbacks.append(lambda e, i=i, wave=wave: fired.append((wave, i)))
        env.run(until=(wave + 1) * 0.1)
    assert fired == [(w, i) for w in range(3) for i in order]
    assert len(net._rem) == 16  # the flows of one wave at a time never needed more slots


def test_many_flows_grow_the_arrays_and_a_long_route_widens_them():
    nodes = 12
    topology = Topology(nx.DiGraph(), [f"n{i}" for i in range(nodes)])
    for i in range(nodes - 1):
        topology.add_duplex(f"n{i}", f"n{i + 1}", Transport("t", "tcp", 1e9, 1.0, 0.0, 0.0, INF, 0.0))
    env = simpy.Environment()
    net = FlowNetwork(env, topology)
    events = [net.send(f"n{i % 3}", f"n{nodes - 1 - i % 2}", 1e5) for i in range(100)]
    env.run()
    assert all(e.ok for e in events)
    # 100 flows, 50 from each of n0/n1/n2 ... all cross the last links: 100 x 1e5 over 1e9 B/s
    assert max(f.end for f in net.completed) == pytest.approx(100 * 1e5 / 1e9, rel=1e-12)
    assert net._hops.shape[0] >= nodes - 1


def test_a_failed_link_fails_its_flows_at_once_and_the_rest_reshare():
    env = simpy.Environment()
    net = FlowNetwork(env, star(4))
    errors = []

    def send(dst):
        try:
            yield net.send("h0", dst, 1e6)
        except LinkDown as error:
            errors.append((dst, env.now, error))

    for dst in ("h1", "h2", "h3"):
        env.process(send(dst))
    env.run(until=1e-4)
    net.fail_link("s", "h3")
    assert [f.dst for f in net.active] == ["h1", "h2"]
    assert all(f.rate == 0.5e9 for f in net.active)
    env.run()
    assert [(dst, t) for dst, t, _ in errors] == [("h3", 1e-4)]
