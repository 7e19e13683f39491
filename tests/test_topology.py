"""Topologies: racks with oversubscribed uplinks, leaf-spine multipath, machines with several GPUs."""

import pytest
import simpy

from pssim.cluster.layout import Layout
from pssim.cluster.topologies import Star
from pssim.network import FlowNetwork, leaf_spine
from test_network import GB, run_flows, transport


def two_racks(oversubscription, spines=1, hosts_per_rack=4, **kw):
    hosts = [f"h{i}" for i in range(2 * hosts_per_rack)]
    return leaf_spine(hosts, transport(latency_s=0, hop_latency_s=0, **kw), hosts_per_rack, spines, oversubscription)


def test_cross_rack_flows_share_the_oversubscribed_uplink_exactly():
    """4 hosts per rack at B each, oversubscription 4: the rack uplink carries 4B/4 = B.

    Four concurrent rack0 -> rack1 flows get B/4 each (time 4S/B); inside a rack each flow gets B.
    """
    topo = two_racks(oversubscription=4)
    s, b = 1e9, 10 * GB
    cross, _ = run_flows(topo, [(f"h{i}", f"h{4 + i}", s) for i in range(4)])
    assert cross == pytest.approx([4 * s / b] * 4, rel=1e-12)
    local, _ = run_flows(topo, [("h0", "h1", s), ("h2", "h3", s)])
    assert local == pytest.approx([s / b] * 2, rel=1e-12)
    # Non-blocking racks (oversubscription 1): the uplink is 4B, so the NICs limit again.
    cross, _ = run_flows(two_racks(oversubscription=1), [(f"h{i}", f"h{4 + i}", s) for i in range(4)])
    assert cross == pytest.approx([s / b] * 4, rel=1e-12)


def test_oversubscribed_uplink_through_the_whole_simulator():
    """8 workers and 4 servers in racks of 3 behind a 3:1 core: pushes of ResNet-50's 102 MB cross racks
    through uplinks of B, so iterations are slower than with non-blocking racks."""
    from pssim import simulate
    from conftest import fast

    base = fast(cluster__workers=8, cluster__servers=4, train__numerics=False, train__steps=5, topology="two_tier",
                topology__hosts_per_rack=3, profile="resnet50")
    blocking = simulate(**base, **{"topology.oversubscription": 3.0})
    fair = simulate(**base, **{"topology.oversubscription": 1.0})
    assert blocking.summary["sim_time_s"] > fair.summary["sim_time_s"]
    links = blocking.links.set_index("link")
    assert links.loc["tor0->spine0", "bandwidth_Bps"] == pytest.approx(3 * 10 / 8 * 1e9 / 3.0)


def test_multipath_sprays_over_every_spine_while_ecmp_picks_one():
    """One host per rack, two spines, uplinks B/2 each: ECMP pins a flow to one uplink (S/(B/2));
    EFA's SRD splits it over both (S/B)."""
    s, b = 1e9, 10 * GB
    single, _ = run_flows(two_racks(1.0, spines=2, hosts_per_rack=1), [("h0", "h1", s)])
    assert single == pytest.approx([s / (b / 2)], rel=1e-12)
    hosts = ["h0", "h1"]
    t = transport(latency_s=0, hop_latency_s=0)
    from dataclasses import replace
    spray = leaf_spine(hosts, replace(t, multipath=True), 1, 2, 1.0)
    env = simpy.Environment()
    net = FlowNetwork(env, spray)
    done = net.send("h0", "h1", s)
    env.run(until=done)
    assert env.now == pytest.approx(s / b, rel=1e-12)
    assert len(net.completed) == 2 and all(f.size == s / 2 for f in net.completed)


def test_machines_with_several_gpus_reach_each_other_over_the_intra_node_fabric():
    layout = Layout.build(workers=8, gpus_per_machine=4, cpu_machines=1, servers=0)
    assert layout.machines == ("machine0", "machine1") and layout.cpu_machines == ("cpu0",)
    assert layout.gpus[5] == "machine1.gpu1" and list(layout.local_workers(1)) == [4, 5, 6, 7]
    nic, nvlink = transport(name="nic"), transport(bandwidth=150 * GB, name="nvlink")
    topo = layout.topology(Star(), nic, nvlink)
    inside = [l.transport.name for l in topo.route("machine0.gpu0", "machine0.gpu3")]
    across = [l.transport.name for l in topo.route("machine0.gpu0", "machine1.gpu0")]
    assert inside == ["nvlink", "nvlink"]
    assert across == ["nvlink", "nic", "nic", "nvlink"]
