"""Closed-form checks of ring latency placement, link capacity changes, link failures and rerouting."""

import math
from dataclasses import replace

import networkx as nx
import pytest
import simpy

from pssim.network import FlowNetwork, LinkDown, NetworkError, NoRoute, Topology, leaf_spine, star
from test_network import GB, transport

B = 10 * GB  # the default test transport's capacity (efficiency 1)
ALPHA = 2 * 1e-6 + 20e-6  # a star route: two hops of 1 us plus 20 us of overhead


def outcome(env, event) -> dict:
    """What became of a send, filled in when its event fires: {'at': time, 'error': None or the error}."""
    record = {}
    env.process(_wait(env, event, record))
    return record


def send_at(env, when, net, *args, **kwargs) -> dict:
    """`net.send(*args, **kwargs)` at simulated time `when`; its outcome, filled in as `outcome`'s."""
    record = {}

    def later():
        yield env.timeout(when - env.now)
        yield from _wait(env, net.send(*args, **kwargs), record)

    env.process(later())
    return record


def _wait(env, event, record):
    try:
        yield event
        record.update(at=env.now, error=None)
    except NetworkError as error:
        record.update(at=env.now, error=error)


def at(env, when, action):
    """Call action() at simulated time `when` (how a fault model would drive the network)."""
    def fire():
        yield env.timeout(when - env.now)
        action()

    env.process(fire())


def network(topology):
    env = simpy.Environment()
    return env, FlowNetwork(env, topology)


# -- 1. ring latency: one latency before the first byte, the rest after the last ------------------------
def test_a_lone_ring_flow_still_takes_r_latencies_plus_bytes_over_bandwidth():
    env, net = network(star(["a", "b"], transport()))
    r, s = 6, 3e6
    done = outcome(env, net.send("a", "b", s, "ring", messages=r))
    env.run()
    assert done == {"at": pytest.approx(r * ALPHA + s / B, rel=1e-12), "error": None}
    (flow,) = net.completed
    assert flow.start == pytest.approx(ALPHA, rel=1e-12)  # the first byte moves after one latency
    assert flow.end == pytest.approx(ALPHA + s / B, rel=1e-12)  # the last lands; r-1 latencies follow
    assert net.sent["a"] == net.received["b"] == s
    assert net.link_bytes[net.topology.link("a", "switch")] == s


def test_a_ring_flow_shares_its_link_from_its_first_latency_on():
    """Ring flow R (r = 8 messages, S bytes, a->b) at t=0; flow X (S bytes, a->c) at t0 = 5 us.

    Both leave host a, so its uplink is shared. R moves from alpha, alone until X arrives at t0 + alpha
    (B t0 bytes), then both get B/2: R's last byte lands at t0 + alpha + 2(S - B t0)/B and its event
    fires 7 alpha later; X then has B t0 left at B: it ends at alpha + 2S/B (the link never idled).
    (Were all 8 latencies paid up front, R would start only at 8 alpha = 176 us, after X had finished
    alone at t0 + alpha + S/B = 127 us.)
    """
    env, net = network(star(["a", "b", "c"], transport()))
    r, s, t0 = 8, 1e6, 5e-6
    ring = outcome(env, net.send("a", "b", s, "ring", messages=r))
    other = send_at(env, t0, net, "a", "c", s, "other")
    env.run()
    ring_lands = t0 + ALPHA + 2 * (s - B * t0) / B
    assert ring["at"] == pytest.approx(ring_lands + (r - 1) * ALPHA, rel=1e-12)
    assert other["at"] == pytest.approx(ALPHA + 2 * s / B, rel=1e-12)
    assert net.link_busy_s[net.topology.link("a", "switch")] == pytest.approx(2 * s / B, rel=1e-12)


# -- 2a. capacity changes ------------------------------------------------------------------------------
def test_a_capacity_drop_slows_the_flow_from_that_instant_and_a_restore_speeds_it_up():
    """S bytes over a->switch->b. At t1 a->switch drops to B/4, so the flow, which moved B(t1 - alpha),
    finishes the rest at B/4; restored at t2 it finishes at B again."""
    s, t1, t2 = 1e9, 0.04, 0.08
    env, net = network(star(["a", "b"], transport()))
    uplink = net.topology.link("a", "switch")
    slowed = outcome(env, net.send("a", "b", s))
    rate_after_drop = []
    at(env, t1, lambda: (net.set_capacity(uplink, B / 4), rate_after_drop.append(net.active[0].rate)))
    env.run()
    assert rate_after_drop == [pytest.approx(B / 4, rel=1e-12)]  # reshared at once, not at the next event
    assert slowed["at"] == pytest.approx(t1 + (s - B * (t1 - ALPHA)) / (B / 4), rel=1e-12)
    assert uplink.capacity == B / 4 and uplink.nominal_capacity == B

    env, net = network(star(["a", "b"], transport()))
    uplink = net.topology.link("a", "switch")
    restored = outcome(env, net.send("a", "b", s))
    at(env, t1, lambda: net.set_capacity(uplink, B / 4))
    at(env, t2, lambda: net.set_capacity(uplink, uplink.nominal_capacity))
    env.run()
    left_at_t2 = s - B * (t1 - ALPHA) - B / 4 * (t2 - t1)
    assert restored["at"] == pytest.approx(t2 + left_at_t2 / B, rel=1e-12)
    assert net.link_bytes[uplink] == s and net.sent["a"] == s


def test_set_link_capacity_changes_both_directions_and_restore_link_brings_back_the_nominal_rate():
    s = 1e8
    env, net = network(star(["a", "b"], transport()))
    net.set_link_capacity("a", "switch", B / 2)
    there, back = outcome(env, net.send("a", "b", s)), outcome(env, net.send("b", "a", s))
    env.run()
    assert there["at"] == back["at"] == pytest.approx(ALPHA + s / (B / 2), rel=1e-12)
    net.restore_link("switch", "a")
    assert net.topology.link("a", "switch").capacity == net.topology.link("switch", "a").capacity == B
    again = outcome(env, net.send("a", "b", s))
    start = env.now
    env.run()
    assert again["at"] == pytest.approx(start + ALPHA + s / B, rel=1e-12)


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_an_unusable_capacity_is_refused_and_changes_nothing(bad):
    env, net = network(star(["a", "b"], transport()))
    with pytest.raises(ValueError):
        net.set_link_capacity("a", "switch", bad)
    assert net.topology.link("a", "switch").capacity == net.topology.link("switch", "a").capacity == B


# -- 2b. link down ------------------------------------------------------------------------------------
def test_a_link_going_down_fails_its_flows_and_the_flows_that_shared_with_them_speed_up():
    """F1 a->b and F2 a->c share a's uplink at B/2. At t, b's NIC link goes down: F1 fails there and
    then, and F2, which moved B/2 (t - alpha), finishes the rest alone at B. A message sent to b at
    t - alpha/2 is still paying its latency: it fails when its first byte is due, at t + alpha/2."""
    s, t = 1e9, 0.05
    env, net = network(star(["a", "b", "c"], transport()))
    f1, f2 = outcome(env, net.send("a", "b", s, "f1")), outcome(env, net.send("a", "c", s, "f2"))
    late = send_at(env, t - ALPHA / 2, net, "a", "b", s, "late")
    at(env, t, lambda: net.fail_link("b", "switch"))
    env.run()
    assert isinstance(f1["error"], LinkDown) and f1["at"] == t
    assert f1["error"].link == "switch->b" and f1["error"].at == t
    assert f2 == {"at": pytest.approx(t + (s - B / 2 * (t - ALPHA)) / B, rel=1e-12), "error": None}
    assert isinstance(late["error"], LinkDown) and late["at"] == pytest.approx(t + ALPHA / 2, rel=1e-12)
    assert [f.tag for f in net.failed] == ["f1", "late"]
    # a's uplink carried all of F2 and F1's bytes until the failure; only F2 was delivered.
    uplink = net.topology.link("a", "switch")
    assert net.link_bytes[uplink] == pytest.approx(s + B / 2 * (t - ALPHA), rel=1e-12)
    assert net.sent["a"] == s and net.received["b"] == 0 and net.bytes_delivered == s


def test_a_flow_landing_at_the_very_instant_its_link_goes_down_is_delivered():
    """2^20 bytes at 2^30 bytes/s, no latency: the last byte lands at exactly 2^-10 s, when the link
    goes down (the failure's event is processed before the network's completion)."""
    env, net = network(star(["a", "b"], transport(bandwidth=2.0 ** 30, latency_s=0, hop_latency_s=0)))
    at(env, 2.0 ** -10, lambda: net.fail_link("a", "switch"))
    done = outcome(env, net.send("a", "b", 2.0 ** 20))
    env.run()
    assert done == {"at": 2.0 ** -10, "error": None} and not net.failed


def test_a_send_to_a_host_whose_only_link_is_down_fails_with_no_route_until_the_link_is_back():
    s = 1e8
    env, net = network(star(["a", "b"], transport()))
    net.fail_link("b", "switch")
    there, back = net.send("a", "b", s), net.send("b", "a", s)
    assert there.triggered and not there.ok and isinstance(there.value, NoRoute)  # failed at once
    assert (there.value.src, there.value.dst, there.value.at) == ("a", "b", 0.0)
    outcomes = outcome(env, there), outcome(env, back)
    env.run()
    assert all(isinstance(o["error"], NoRoute) and o["at"] == 0.0 for o in outcomes)
    net.restore_link("b", "switch")
    again = outcome(env, net.send("a", "b", s))
    env.run()
    assert again == {"at": pytest.approx(ALPHA + s / B, rel=1e-12), "error": None}


def test_an_unhandled_link_failure_stops_the_run_with_the_link_and_the_time():
    env, net = network(star(["a", "b"], transport()))
    net.send("a", "b", 1e9)  # nobody waits on it
    at(env, 0.01, lambda: net.fail_link("a", "switch"))
    with pytest.raises(LinkDown) as failure:
        env.run()
    assert failure.value.link == "a->switch" and failure.value.at == 0.01


def test_a_flow_whose_fair_rate_is_zero_waits_without_stalling_the_others():
    """a's NIC caps every flow at 0 bytes/s: its flow to b gets rate 0 and just waits, while c's flow
    to b, sharing the switch->b link with it, gets the whole link."""
    s = 1e8
    topo = Topology(nx.DiGraph(), ["a", "b", "c"])
    topo.add_duplex("a", "switch", transport(flow_cap=0.0))
    topo.add_duplex("b", "switch", transport())
    topo.add_duplex("c", "switch", transport())
    env, net = network(topo)
    stalled, moving = outcome(env, net.send("a", "b", s)), outcome(env, net.send("c", "b", s))
    env.run(until=1.0)
    assert moving == {"at": pytest.approx(ALPHA + s / B, rel=1e-12), "error": None}
    assert stalled == {}
    (flow,) = net.active
    assert flow.rate == 0 and flow.remaining == s


# -- 2c. rerouting ------------------------------------------------------------------------------------
def racks_with_two_spines(multipath=False):
    """Two racks of one host, two spines: h0 - tor0 - spine0|spine1 - tor1 - h1, uplinks of B/2."""
    t = replace(transport(latency_s=0, hop_latency_s=0), multipath=multipath)
    return leaf_spine(["h0", "h1"], t, 1, 2, 1.0)


def spine_of(links) -> str:
    (spine,) = {link.dst for link in links if link.dst.startswith("spine")}
    return spine


def test_sends_route_around_a_down_uplink_and_back_once_it_is_restored():
    s = 1e9
    env, net = network(racks_with_two_spines())
    usual = spine_of(net.topology.route("h0", "h1"))
    other = "spine1" if usual == "spine0" else "spine0"
    in_flight = outcome(env, net.send("h0", "h1", s, "in-flight"))
    at(env, 0.01, lambda: net.set_capacity(net.topology.link("tor0", usual), 0.0))
    rerouted = send_at(env, 0.02, net, "h0", "h1", s, "rerouted")
    env.run()
    assert isinstance(in_flight["error"], LinkDown) and in_flight["error"].link == f"tor0->{usual}"
    assert rerouted == {"at": pytest.approx(0.02 + s / (B / 2), rel=1e-12), "error": None}
    (flow,) = net.completed
    assert [l.name for l in flow.links] == ["h0->tor0", f"tor0->{other}", f"{other}->tor1", "tor1->h1"]

    net.set_capacity(net.topology.link("tor0", usual), B / 2)
    net.send("h0", "h1", s, "restored")
    env.run()
    assert spine_of(net.completed[-1].links) == usual
    assert spine_of(net.topology.route("h0", "h1")) == usual


def test_multipath_sprays_over_the_paths_that_are_left():
    s = 1e9
    env, net = network(racks_with_two_spines(multipath=True))
    net.set_capacity(net.topology.link("tor0", "spine0"), 0.0)
    done = outcome(env, net.send("h0", "h1", s))
    env.run()
    assert done == {"at": pytest.approx(s / (B / 2), rel=1e-12), "error": None}  # one uplink of B/2
    assert [spine_of(f.links) for f in net.completed] == ["spine1"]


def test_a_multipath_send_fails_with_its_first_failed_subflow_while_the_others_go_on():
    """Two subflows of S/2 at B/2 each. At t one spine's uplink goes down: the send fails then, the
    other subflow still lands at (S/2)/(B/2)."""
    s, t = 1e9, 0.02
    env, net = network(racks_with_two_spines(multipath=True))
    done = outcome(env, net.send("h0", "h1", s))
    at(env, t, lambda: net.set_capacity(net.topology.link("tor0", "spine0"), 0.0))
    env.run()
    assert isinstance(done["error"], LinkDown) and done["at"] == t
    (survivor,) = net.completed
    assert spine_of(survivor.links) == "spine1" and survivor.end == pytest.approx(s / B, rel=1e-12)


def test_a_multipath_send_whose_subflows_all_fail_at_once_fails_once_and_the_run_goes_on():
    s, t = 1e9, 0.02
    env, net = network(racks_with_two_spines(multipath=True))
    done = outcome(env, net.send("h0", "h1", s))
    at(env, t, lambda: net.fail_link("h0", "tor0"))  # both subflows cross h0's NIC link
    env.run()
    assert isinstance(done["error"], LinkDown) and done["at"] == t
    assert len(net.failed) == 2 and not net.completed


def test_a_ring_phase_fails_once_when_a_member_s_link_goes_down():
    """Both ring flows through host h1's NIC fail at the same instant: the phase fails with LinkDown
    once, and the simulation goes on (the second failure must not stop env.run)."""
    from pssim.comm.collectives import ring_allreduce
    from pssim.network.errors import LinkDown

    env = simpy.Environment()
    net = FlowNetwork(env, star(["h0", "h1", "h2"], transport(bandwidth=GB)))
    outcome = []

    def ring():
        try:
            yield from ring_allreduce(env, net, ["h0", "h1", "h2"], 3 * GB)
        except LinkDown as err:
            outcome.append((env.now, err))

    env.process(ring())
    env.timeout(0.5).callbacks.append(lambda _e: net.fail_link("h1", "switch"))
    env.run(until=5)
    assert len(outcome) == 1 and outcome[0][0] == 0.5
