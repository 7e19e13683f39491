"""What makes large runs cheap changes no result: routes read off the block-cut tree are networkx's,
`send_all` is `all_of` over `send`s, leaf-view gradients are the flat-leaf gradients, and with the trace
off a run keeps no per-event records (so memory is flat in steps) and leaves the collector as it was."""

import gc
import random

import networkx as nx
import pytest
import simpy
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import fast
from pssim import simulate
from pssim.cluster.layout import Layout
from pssim.cluster.topologies import LeafSpine, Star, TwoTier
from pssim.network import FlowNetwork, Topology
from pssim.network.errors import LinkDown, NoRoute
from pssim.network.topology import Blocks
from pssim.simulation import Simulation
from pssim.presets import to_config
from test_network import GB, transport


def networkx_routes(topo: Topology, src: str, dst: str):
    """The routes as the per-pair networkx search gives them (the reference)."""
    graph = topo._up_graph()
    paths = sorted(nx.all_shortest_paths(graph, src, dst, weight=topo._weight))
    return tuple(tuple(graph.edges[u, v]["link"] for u, v in zip(p, p[1:])) for p in paths)


def assert_routes_are_networkx(topo: Topology, pairs=None) -> int:
    nodes = sorted(topo.graph.nodes)
    pairs = pairs or [(a, b) for a in nodes for b in nodes if a != b]
    for a, b in pairs:
        assert topo.routes(a, b) == networkx_routes(topo, a, b), (a, b)
    return len(pairs)


CLUSTERS = [Star(), TwoTier(hosts_per_rack=3, spines=1, oversubscription=2.0),
            LeafSpine(hosts_per_rack=2, spines=3, oversubscription=1.0),
            LeafSpine(hosts_per_rack=4, spines=2, oversubscription=1.0)]


@pytest.mark.parametrize("cfg", CLUSTERS, ids=lambda c: f"{c.name}-{getattr(c, 'spines', 0)}")
@pytest.mark.parametrize("gpus, pcie", [(1, False), (4, False), (4, True), (8, True)])
def test_structural_routes_are_networkx_shortest_paths_for_every_pair(cfg, gpus, pcie):
    """Every pair of nodes of a cluster (NICs, switches, GPUs with NVLink and PCIe): the same paths in
    the same order, so ECMP picks the same one."""
    nic, intra = transport(name="nic"), transport(bandwidth=100 * GB, name="nvlink")
    topo = Layout.build(4 * gpus, gpus, 2, 3).topology(cfg, nic, intra, transport(name="pcie") if pcie else None)
    assert_routes_are_networkx(topo)
    assert isinstance(topo._blocks, Blocks)  # the structural path answered, not the fallback


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 10_000), st.integers(4, 14), st.integers(0, 8), st.booleans())
def test_structural_routes_equal_networkx_on_random_graphs(seed, nodes, extra, weighted):
    """Random connected graphs (a random tree plus `extra` chords, so blocks of every size, with
    integer costs 1-3 or all 1) and a second component: every pair, including unreachable ones."""
    rng = random.Random(seed)
    topo = Topology(nx.DiGraph(), [])
    t = transport()
    for v in range(1, nodes):
        topo.add_duplex(f"n{v}", f"n{rng.randrange(v)}", t, cost=float(rng.randint(1, 3)) if weighted else 1.0)
    for _ in range(extra):
        a, b = rng.sample(range(nodes), 2)
        if not topo.graph.has_edge(f"n{a}", f"n{b}"):
            topo.add_duplex(f"n{a}", f"n{b}", t, cost=float(rng.randint(1, 3)) if weighted else 1.0)
    topo.add_duplex("x0", "x1", t)  # another component
    for a in sorted(topo.graph.nodes):
        for b in sorted(topo.graph.nodes):
            if a == b:
                continue
            try:
                expected = networkx_routes(topo, a, b)
            except nx.NetworkXNoPath:
                with pytest.raises(NoRoute):
                    topo.routes(a, b)
                continue
            assert topo.routes(a, b) == expected, (a, b)
    assert isinstance(topo._blocks, Blocks)


def test_graphs_without_the_structure_fall_back_to_networkx():
    """A one-way link, a fractional cost or a down link: networkx's search, the same answers."""
    t = transport()
    oneway = Topology(nx.DiGraph(), [])
    oneway.add_duplex("a", "b", t)
    oneway.add_duplex("b", "c", t)
    oneway.graph.add_edge("a", "c", link=oneway.link("a", "b"), cost=1.0)
    assert assert_routes_are_networkx(oneway) and oneway._blocks is False
    fractional = Topology(nx.DiGraph(), [])
    for a, b, cost in [("a", "b", 0.1), ("b", "c", 0.2), ("a", "c", 0.3)]:
        fractional.add_duplex(a, b, t, cost=cost)
    assert assert_routes_are_networkx(fractional) and fractional._blocks is False
    down = Layout.build(16, 4, 0, 4).topology(CLUSTERS[3], t, transport(name="nv"), transport(name="pcie"))
    down.set_capacity(down.link("tor0", "spine0"), 0.0)
    assert assert_routes_are_networkx(down)
    down.set_capacity(down.link("tor0", "spine0"), 1e9)  # back up: the structure answers again
    assert assert_routes_are_networkx(down) and isinstance(down._blocks, Blocks)


def test_adding_a_link_after_routes_were_read_changes_the_routes():
    t = transport()
    topo = Topology(nx.DiGraph(), [])
    for a, b in [("a", "b"), ("b", "c"), ("c", "d")]:
        topo.add_duplex(a, b, t)
    assert len(topo.route("a", "d")) == 3
    topo.add_duplex("a", "d", t)
    assert topo.route("a", "d") == (topo.link("a", "d"),)


# -- send_all ----------------------------------------------------------------------------------------
HOSTS = Layout.build(6, 1, 0, 0).endpoints  # six machines, two per rack, under two spines
def observe(batched: bool, transfers, messages: int, fail_at: float | None, seed: int):
    """Run `transfers` as one collective next to unrelated traffic; return what the world sees: when
    every event fired (in the order SimPy processed them), each flow's start/end/rate, the link bytes."""
    rng = random.Random(seed)
    hosts = HOSTS
    topo = Layout.build(6, 1, 0, 0).topology(TwoTier(hosts_per_rack=2, spines=2, oversubscription=2.0),
                                             transport(latency_s=rng.choice([0.0, 2e-6]), hop_latency_s=1e-6),
                                             transport(name="nv"))
    env = simpy.Environment()
    net = FlowNetwork(env, topo)
    seen = []

    def collective():
        if batched:
            event = net.send_all(transfers, "c", messages=messages)
        else:
            sends = [net.send(s, d, b, "c", messages) for s, d, b in transfers]
            for send in sends:
                send.defused = True
            event = env.all_of(sends)
        try:
            yield event
            seen.append(("collective", env.now))
        except LinkDown as err:
            seen.append(("collective failed", env.now, str(err)))

    def other(i):
        yield env.timeout(rng.choice([0.0, 1e-6, 5e-6]))
        try:
            yield net.send(hosts[i], hosts[(i + 3) % 6], rng.choice([0.0, 1e4, 1e6]), "o")
            seen.append((f"other{i}", env.now))
        except LinkDown:
            seen.append((f"other{i} failed", env.now))

    for i in range(3):
        env.process(other(i))
    env.process(collective())
    if fail_at is not None:
        env.timeout(fail_at).callbacks.append(lambda _: net.fail_link("tor0", "spine0"))
    env.run()
    flows = [(f.src, f.dst, f.start, f.end, f.rate) for f in net.completed + net.failed]
    return seen, flows, sorted((l.name, b) for l, b in net.link_bytes.items())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 10_000), st.integers(1, 8), st.sampled_from([1, 3]), st.booleans())
def test_send_all_is_all_of_over_sends(seed, n, messages, fail):
    """Same flows, rates, end times and order of every event the other processes see, with tails
    (messages > 1), zero-byte and local transfers, and a link failing mid-collective."""
    rng = random.Random(seed)
    hosts = HOSTS
    transfers = [(rng.choice(hosts), rng.choice(hosts), rng.choice([0.0, 1e3, 1e5, 1e6])) for _ in range(n)]
    fail_at = rng.choice([1e-6, 3e-5, 2e-4]) if fail else None
    assert observe(True, transfers, messages, fail_at, seed) == observe(False, transfers, messages, fail_at, seed)


def test_send_all_takes_fewer_events():
    layout = Layout.build(16, 1, 0, 0)
    topo = layout.topology(Star(), transport(), transport(name="nv"))
    hosts = layout.endpoints
    counts = []
    for batched in (True, False):
        env = simpy.Environment()
        net = FlowNetwork(env, topo)
        ring = [(hosts[i], hosts[(i + 1) % 16], 1e6) for i in range(16)]
        event = net.send_all(ring) if batched else env.all_of([net.send(*t) for t in ring])
        steps = 0
        while not event.processed:
            env.step()
            steps += 1
        counts.append(steps)
    assert counts[0] < counts[1] / 4, counts


# -- records, garbage collection, gradients -----------------------------------------------------------
def stored_records(sim: Simulation) -> int:
    ctx = sim.ctx
    return (sum(len(cpu.busy) for cpu in ctx.recorder.cpus) + len(ctx.network.completed)
            + len(ctx.network.rate_log))


@pytest.mark.parametrize("policy", ["sync", "herring"])
def test_with_the_trace_off_a_run_keeps_no_per_event_records(policy):
    """Server CPU spans (PS shards, summation threads), flows and rate changes are the trace's: with
    it off none is kept, at 4 steps as at 16; with it on they are."""
    base = fast(policy=policy, cluster__workers=4, train__numerics=False)
    counts = {}
    for steps, trace in [(4, False), (16, False), (4, True)]:
        sim = Simulation(to_config(**{**base, "train.steps": steps, "output.trace": trace})).run()
        assert sim.ctx.recorder.cpus
        counts[steps, trace] = stored_records(sim)
    assert counts[4, False] == counts[16, False] == 0
    assert counts[4, True] > 0


def test_the_trace_window_stops_the_cpu_spans_too():
    cfg = to_config(**fast(cluster__workers=4, train__numerics=False, **{"output.trace": True,
                                                                         "output.trace_steps": 2}))
    sim = Simulation(cfg).run()
    until = sim.ctx.recorder.trace_until
    assert until < sim.sim_time
    assert all(start <= until for cpu in sim.ctx.recorder.cpus for start, _, _ in cpu.busy)


def test_a_run_leaves_the_garbage_collector_as_it_found_it():
    thresholds, frozen = gc.get_threshold(), gc.get_freeze_count()
    simulate(**fast(train__steps=3))
    assert gc.get_threshold() == thresholds and gc.get_freeze_count() == frozen


def test_leaf_view_gradients_are_the_flat_leaf_gradients_bit_for_bit():
    """Workload.gradient differentiates a dense Model through one leaf per tensor: the same bits as
    through views of one flat leaf (Workload.loss), and a model class that overrides forward keeps
    the flat path."""
    from conftest import workload_for
    from pssim.workload.models import Model

    cfg = to_config(**fast(cluster__workers=4, **{"workload.hidden": [16, 8], "workload.dtype": "float64"}))
    wl = workload_for(cfg)
    params = wl.init_params() + 0.01 * torch.randn(wl.n_params, dtype=torch.float64,
                                                   generator=torch.Generator().manual_seed(0))

    def flat_leaf(worker, step):
        p = params.detach().requires_grad_(True)
        return torch.autograd.grad(wl.loss(p, wl.batch_indices(worker, step)), p)[0]

    for worker, step in [(0, 0), (1, 3), (3, 7)]:
        assert torch.equal(wl.gradient(params, worker, step), flat_leaf(worker, step))

    class Scaled(Model):
        def forward(self, flat, x):
            return 2 * super().forward(flat, x)

    wl.model = Scaled(wl.model.name, wl.model.widths)
    assert torch.equal(wl.gradient(params, 1, 2), flat_leaf(1, 2))
