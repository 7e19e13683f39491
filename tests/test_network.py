"""Closed-form checks of the flow-level network model (max-min fair sharing, latency, caps, duplex)."""

import networkx as nx
import pytest
import simpy

from pssim.network import FlowNetwork, Topology, Transport, star

GB = 1e9


def transport(bandwidth=10 * GB, efficiency=1.0, latency_s=20e-6, hop_latency_s=1e-6,
              flow_cap=float("inf"), name="t") -> Transport:
    return Transport(name, "tcp", bandwidth, efficiency, latency_s, hop_latency_s, flow_cap, 0.0)


def run_flows(topo, sends):
    """Start every (src, dst, bytes) at t=0; return each flow's completion time."""
    env = simpy.Environment()
    net = FlowNetwork(env, topo)
    events = [net.send(s, d, b) for s, d, b in sends]
    ends = {}
    for i, ev in enumerate(events):
        ev.callbacks.append(lambda e, i=i: ends.__setitem__(i, env.now))
    env.run()
    return [ends[i] for i in range(len(sends))], net


def test_one_flow_costs_latency_plus_bytes_over_effective_bandwidth():
    t = transport(bandwidth=1.25 * GB, efficiency=0.9, latency_s=25e-6, hop_latency_s=0.5e-6)
    size = 10e6
    (end,), _ = run_flows(star(["a", "b"], t), [("a", "b", size)])
    route_latency = 2 * 0.5e-6 + 25e-6  # two links (host->switch->host) plus the transport overhead
    assert end == pytest.approx(route_latency + size / (1.25 * GB * 0.9), rel=1e-12)


def test_two_flows_on_one_link_get_half_each_and_the_survivor_speeds_up():
    t = transport()
    lat = FlowNetwork.latency(star(["a", "b"], t).route("a", "b"))
    cap = 10 * GB
    s = 5e6
    # Both leave host a: its uplink is the shared bottleneck. The small one ends at 2s/C; then the
    # big one has s bytes left and the whole link.
    (small, big), _ = run_flows(star(["a", "b", "c"], t), [("a", "b", s), ("a", "c", 2 * s)])
    assert small == pytest.approx(lat + 2 * s / cap, rel=1e-12)
    assert big == pytest.approx(lat + 3 * s / cap, rel=1e-12)


@pytest.mark.parametrize("n", [2, 5, 16])
def test_incast_of_n_senders_ends_at_n_times_s_over_b(n):
    t = transport()
    hosts = ["server"] + [f"w{i}" for i in range(n)]
    topo = star(hosts, t)
    s = 1e6
    ends, net = run_flows(topo, [(f"w{i}", "server", s) for i in range(n)])
    lat = FlowNetwork.latency(topo.route("w0", "server"))
    assert ends == pytest.approx([lat + n * s / (10 * GB)] * n, rel=1e-12)
    downlink = topo.graph.edges["switch", "server"]["link"]
    assert net.link_bytes[downlink] == n * s
    assert net.link_busy_s[downlink] == pytest.approx(n * s / (10 * GB), rel=1e-12)


def test_multi_hop_allocation_is_max_min_fair():
    """a -L1-> x -L2-> b with L1 = 1 GB/s and L2 = 2 GB/s.

    Flow A crosses L1 and L2, B only L1, C and D only L2. Progressive filling: L1's share 1/2 is the
    tightest, so A = B = 0.5; L2 then has 1.5 left for C and D: 0.75 each.
    """
    slow, fast = transport(bandwidth=1 * GB, latency_s=0), transport(bandwidth=2 * GB, latency_s=0)
    topo = Topology(nx.DiGraph(), ["a", "x", "b", "c", "d"])
    topo.add_duplex("a", "x", slow)
    topo.add_duplex("x", "b", fast)
    env = simpy.Environment()
    net = FlowNetwork(env, topo)
    flows = [net.send("a", "b", 1e9), net.send("a", "x", 1e9), net.send("x", "b", 1e9), net.send("x", "b", 1e9)]
    env.run(until=1e-3)
    rate_of = {f.done: f.rate for f in net.active}
    rates = [rate_of[done] for done in flows]
    assert rates == pytest.approx([0.5 * GB, 0.5 * GB, 0.75 * GB, 0.75 * GB], rel=1e-12)


def test_the_two_directions_of_a_link_are_independent():
    t = transport()
    s = 8e6
    (ab, ba), _ = run_flows(star(["a", "b"], t), [("a", "b", s), ("b", "a", s)])
    lat = 2e-6 + 20e-6
    assert ab == pytest.approx(lat + s / (10 * GB), rel=1e-12)
    assert ba == pytest.approx(lat + s / (10 * GB), rel=1e-12)


def test_tcp_per_flow_cap_limits_one_flow_but_many_flows_fill_the_link():
    cap = 20 / 8 * GB  # a 20 Gb/s stream on a 25 Gb/s link
    t = transport(bandwidth=25 / 8 * GB, latency_s=0, hop_latency_s=0, flow_cap=cap)
    s = 1e9
    (one,), _ = run_flows(star(["a", "b"], t), [("a", "b", s)])
    assert one == pytest.approx(s / cap, rel=1e-12)
    # Two flows: each link share (12.5 Gb/s) is below the cap, so the link is full.
    two, _ = run_flows(star(["a", "b"], t), [("a", "b", s), ("a", "b", s)])
    assert two == pytest.approx([2 * s / (25 / 8 * GB)] * 2, rel=1e-12)


def test_flow_joining_midway_slows_the_first_exactly():
    """Flow 1 (size s) runs alone for time T, then shares: it ends at T + 2(s - C T)/C."""
    t = transport(latency_s=0, hop_latency_s=0)
    topo = star(["a", "b"], t)
    env = simpy.Environment()
    net = FlowNetwork(env, topo)
    cap, s, join = 10 * GB, 1e9, 0.02
    first = net.send("a", "b", s)
    env.run(until=join)
    second = net.send("a", "b", s)
    env.run(until=first)
    assert env.now == pytest.approx(join + 2 * (s - cap * join) / cap, rel=1e-12)
    env.run(until=second)
    assert env.now == pytest.approx(2 * s / cap, rel=1e-12)  # the link never idled
