"""trace.json as Perfetto reads it: spans on one track nest (no partial overlap) for every policy, one
track per concurrent activity and none empty, server lanes within the cores, exact link utilisation."""

import json
import random
import re
from collections import defaultdict
from types import SimpleNamespace

import networkx as nx
import pytest
import simpy

from pssim import registered_policies as policies, to_config
from pssim.metrics.recorder import Recorder
from pssim.metrics.trace import _partition, _us, chrome_trace
from pssim.network import FlowNetwork, LinkDown, Topology, star
from pssim.policies import POLICIES
from pssim.simulation import Simulation
from conftest import fast
from test_network import GB, transport

WORKERS, SERVERS, LINKS = 1, 2, 3

# ResNet-50's tensors in a timing-only run: communication overlaps the backward pass and many flows share
# links. The second shape puts 4 GPUs in a machine (local reduces on the intra fabric), adds a CPU
# machine (BytePS's summation service) and gives the summation services 2 cores, so the bound bites.
SHAPES = {
    "1-gpu-machines": dict(cluster__workers=4, cluster__servers=2, stragglers="exponential",
                           stragglers__mean_s=2e-4),
    "4-gpu-machines": dict(cluster__workers=8, cluster__gpus_per_machine=4, cluster__cpu_machines=1,
                           cluster__servers=2, cluster__server_cores=2),
}


def traced(policy, **overrides):
    """A short timing-only run traced from start to end; returns the simulation and its trace."""
    settings = dict(policy=policy, profile="resnet50", train__numerics=False, train__steps=4,
                    output__trace=True, output__trace_steps=0)
    sim = Simulation(to_config(**fast(**{**settings, **overrides}))).run()
    return sim, chrome_trace(sim.ctx)


def ns(seconds: float) -> int:
    return round(seconds * 1e9)


def read(trace):
    """What Perfetto builds: thread names {tid: (pid, name)}, spans {tid: [(start, end, name, args)]} and
    counters {name: [(ts, value)]}, times in integer nanoseconds (Perfetto truncates ts x 1000)."""
    threads, spans, counters = {}, defaultdict(list), defaultdict(list)
    for e in trace["traceEvents"]:
        if e["ph"] == "M" and e["name"] == "thread_name":
            assert e["tid"] not in threads, "thread ids are unique across processes"
            threads[e["tid"]] = (e["pid"], e["args"]["name"])
        elif e["ph"] == "X":
            start = int(e["ts"] * 1000)
            spans[e["tid"]].append((start, start + int(e["dur"] * 1000), e["name"], e["args"]))
        elif e["ph"] == "C":
            assert e["pid"] == LINKS and list(e["args"]) == ["utilisation"]
            counters[e["name"]].append((int(e["ts"] * 1000), e["args"]["utilisation"]))
    return threads, spans, counters


def partial_overlaps(spans) -> list:
    """Pairs of spans on one track that overlap without one containing the other."""
    bad, open_spans = [], []
    for span in sorted(spans, key=lambda s: (s[0], -s[1])):
        while open_spans and open_spans[-1][1] <= span[0]:
            open_spans.pop()
        if open_spans and span[1] > open_spans[-1][1]:
            bad.append((open_spans[-1], span))
        open_spans.append(span)
    return bad


TRACK = {WORKERS: re.compile(r"(?P<owner>.+) (?P<kind>compute|comm) ?(?P<k>\d*)"),
         SERVERS: re.compile(r"(?P<owner>.+) (?P<kind>core) (?P<k>\d+)"),
         LINKS: re.compile(r"(?P<owner>.+) (?P<kind>flow) (?P<k>\d+)")}


def lanes_of(threads, pid, kind):
    """{owner: [lane names]} of the tracks of `pid` named "<owner> <kind> <k>" (or "<owner> <kind>")."""
    owners = defaultdict(list)
    for p, name in threads.values():
        match = TRACK[pid].fullmatch(name) if p == pid else None
        if match and match["kind"] == kind:
            owners[match["owner"]].append(name)
    return owners


def check_track_names(threads, pipelined=False):
    """Every track is named as docs/OUTPUTS.md says, its lanes numbered 1, 2, ... (compute: one, unnumbered,
    unless the policy pipelines a worker's steps: then numbered lanes too)."""
    numbers = defaultdict(list)
    for pid, name in threads.values():
        match = TRACK[pid].fullmatch(name)
        assert match, (pid, name)
        numbers[pid, match["owner"], match["kind"]].append(int(match["k"] or 0))
    for (pid, owner, kind), ks in numbers.items():
        one = kind == "compute" and (not pipelined or ks == [0])
        assert sorted(ks) == ([0] if one else list(range(1, len(ks) + 1))), (owner, kind, ks)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("policy", policies())
def test_spans_on_every_track_nest_and_every_track_is_needed(policy, shape):
    sim, trace = traced(policy, **SHAPES[shape])
    assert json.loads(json.dumps(trace)) == trace  # plain JSON, no NaN or infinity
    threads, spans, counters = read(trace)

    for tid, track in spans.items():
        assert tid in threads, "every span is on a named track"
        assert not partial_overlaps(track), (threads[tid], partial_overlaps(track)[:3])
        assert all(start <= end for start, end, *_ in track)
    assert set(spans) == set(threads), "no empty tracks"
    processes = {e["pid"] for e in trace["traceEvents"] if e["name"] == "process_name"}
    assert processes == {e["pid"] for e in trace["traceEvents"] if e["ph"] in "XC"}, "no empty processes"
    thread_pid = {tid: pid for tid, (pid, _) in threads.items()}
    assert all(e["pid"] == thread_pid[e["tid"]] for e in trace["traceEvents"] if e["ph"] == "X")
    pipelined = POLICIES[policy].steps_in_flight(sim.config) > 1
    check_track_names(threads, pipelined)

    # Workers: one compute track each (steps never overlap; a pipelining policy's overlap, on lanes),
    # communication on lanes of their own. Every worker that took a step has them (each one, under the
    # policies that fold all n gradients per step).
    hosts = {sim.ctx.workers[r.worker].host for r in sim.ctx.recorder.steps}
    if sim.policy.gradients_per_update == len(sim.ctx.workers):
        assert hosts == {w.host for w in sim.ctx.workers}
    if pipelined:
        assert set(lanes_of(threads, WORKERS, "compute")) == hosts
    else:
        assert lanes_of(threads, WORKERS, "compute") == {host: [f"{host} compute"] for host in hosts}
    assert set(lanes_of(threads, WORKERS, "comm")) == hosts
    assert {name for _, name in threads.values()} >= {f"{host} comm 1" for host in hosts}

    # Servers: a lane per core in use, never more lanes than the CPU has cores.
    cores = 1 if POLICIES[policy].uses_servers else sim.config.cluster.server_cores
    servers = lanes_of(threads, SERVERS, "core")
    busy = {cpu.host for cpu in sim.ctx.recorder.cpus if any(b > a for a, b, _ in cpu.busy)}
    assert set(servers) == busy and bool(busy) == bool(sim.ctx.recorder.cpus)
    assert all(1 <= len(lanes) <= cores for lanes in servers.values()), servers

    # Links: flow lanes on every link that carried bytes (and no other), a utilisation counter on each.
    carried = {link.name for link, nbytes in sim.network.link_bytes.items() if nbytes > 0}
    crossed = carried | {link.name for f in sim.network.completed for link in f.links}  # zero-byte messages too
    assert set(lanes_of(threads, LINKS, "flow")) == crossed
    names = {link.name for link in sim.network.topology.links}
    assert carried <= set(counters) <= names
    for link, samples in counters.items():
        assert samples[0] == (0, 0.0)
        assert all(a[0] < b[0] and a[1] != b[1] for a, b in zip(samples, samples[1:])), link
        assert all(-1e-9 <= u <= 1 + 1e-9 for _, u in samples), link
        assert any(u > 0 for _, u in samples)


def test_the_lanes_are_needed():
    """What one track per worker, server and link would break: allreduce's communication overlaps the
    compute of the same step, BytePS's 2-core summation services run two things at once and its links
    carry several flows at once (two server instances: each machine has two connections to the CPU
    machine, whose link carries all four)."""
    sim, trace = traced("allreduce", **SHAPES["4-gpu-machines"])
    steps = sim.ctx.recorder.steps
    assert any(r.comm_start < r.compute_end < r.comm_end for r in steps)

    sim, trace = traced("byteps", **SHAPES["4-gpu-machines"], policy__server_instances=2)
    threads, _, _ = read(trace)
    assert max(len(lanes) for lanes in lanes_of(threads, SERVERS, "core").values()) == 2
    assert max(len(lanes) for lanes in lanes_of(threads, LINKS, "flow").values()) >= 4


def network_trace(net: FlowNetwork) -> dict:
    """The trace of a bare network (no workers, no servers)."""
    return chrome_trace(SimpleNamespace(recorder=Recorder(), workers=[], network=net))


def test_a_lone_flow_shows_rate_over_capacity_for_exactly_its_transfer():
    """S bytes from a (NIC 10 GB/s at efficiency 0.9) to b (NIC 2 GB/s): after one latency alpha the flow
    moves at b's 2 GB/s for S / 2 GB/s. a's uplink shows 2 / 9 of its capacity in use, b's downlink 1,
    both from alpha to alpha + S / (2 GB/s), and 0 before and after."""
    fast_nic = transport(bandwidth=10 * GB, efficiency=0.9, latency_s=20e-6, hop_latency_s=1e-6)
    slow_nic = transport(bandwidth=2 * GB, efficiency=1.0, latency_s=20e-6, hop_latency_s=1e-6)
    topo = Topology(nx.DiGraph(), ["a", "b"])
    topo.add_duplex("a", "switch", fast_nic)
    topo.add_duplex("b", "switch", slow_nic)
    env = simpy.Environment()
    net = FlowNetwork(env, topo)
    size = 3e6
    net.send("a", "b", size, "message")
    env.run()

    alpha = 2 * 1e-6 + 20e-6
    start, end = ns(alpha), ns(alpha + size / (2 * GB))
    threads, spans, counters = read(network_trace(net))
    assert counters == {"a->switch": [(0, 0.0), (start, round(2 / 9, 6)), (end, 0.0)],
                        "switch->b": [(0, 0.0), (start, 1.0), (end, 0.0)]}
    named = {name: spans[tid] for tid, (_, name) in threads.items()}
    assert named == {f"{link} flow 1": [(start, end, "message", {"bytes": size, "src": "a", "dst": "b"})]
                     for link in ("a->switch", "switch->b")}


def test_concurrent_flows_take_separate_lanes_and_a_failed_flow_is_drawn_until_it_failed():
    """F1 a->b and F2 a->c share a's uplink at B/2 each from alpha; at t b's link goes down: F1 fails then
    and F2 finishes alone at B. a's uplink: two lanes, utilisation 1 throughout; b's downlink: F1 only, at
    1/2, then 0 (the link is down)."""
    s, t, b = 1e9, 0.05, 10 * GB
    alpha = 2 * 1e-6 + 20e-6
    env = simpy.Environment()
    net = FlowNetwork(env, star(["a", "b", "c"], transport()))
    for dst, tag in (("b", "f1"), ("c", "f2")):
        net.send("a", dst, s, tag).defused = True
    env.timeout(t).callbacks.append(lambda _e: net.fail_link("b", "switch"))
    env.run()
    assert isinstance(net.failed[0].error, LinkDown)

    f2_end = t + (s - b / 2 * (t - alpha)) / b
    threads, spans, counters = read(network_trace(net))
    named = {name: [(start, end, what) for start, end, what, _ in spans[tid]] for tid, (_, name) in threads.items()}
    assert named == {"a->switch flow 1": [(ns(alpha), ns(t), "f1 failed")],
                     "a->switch flow 2": [(ns(alpha), ns(f2_end), "f2")],
                     "switch->b flow 1": [(ns(alpha), ns(t), "f1 failed")],
                     "switch->c flow 1": [(ns(alpha), ns(f2_end), "f2")]}
    assert counters["a->switch"] == [(0, 0.0), (ns(alpha), 1.0), (ns(f2_end), 0.0)]
    assert counters["switch->b"] == [(0, 0.0), (ns(alpha), 0.5), (ns(t), 0.0)]
    assert counters["switch->c"] == [(0, 0.0), (ns(alpha), 0.5), (ns(t), 1.0), (ns(f2_end), 0.0)]


def test_the_trace_window_bounds_spans_and_counters():
    """With output.trace_steps=3 the trace holds the steps that began before the window closed (the third
    global step), and the CPU work, flows and utilisation changes up to then; the whole run's goes further."""
    sim, trace = traced("byteps", train__steps=6, output__trace_steps=3, **SHAPES["4-gpu-machines"])
    until = ns(sim.ctx.recorder.trace_until)
    threads, spans, counters = read(trace)
    pids = {tid: pid for tid, (pid, _) in threads.items()}
    computes = [start for tid, track in spans.items() for start, _, name, _ in track if name == "compute"]
    assert max(computes) <= until  # the steps that began in the window (their communication shown whole)
    ends = [end for tid, track in spans.items() if pids[tid] != WORKERS for _, end, *_ in track]
    assert max(ends) <= until  # CPU work and flows that ended in it
    assert max(ts for track in counters.values() for ts, _ in track) <= until
    _, whole = traced("byteps", train__steps=6, **SHAPES["4-gpu-machines"])
    assert max(e["ts"] for e in whole["traceEvents"] if e["ph"] == "C") * 1000 > until


def test_greedy_partitioning_never_overlaps_on_a_lane_and_uses_the_fewest_lanes():
    rng = random.Random(0)
    for trial in range(400):
        zero_length = trial % 2  # spans of zero length never share an instant with a longer one's inside
        spans = []
        for _ in range(rng.randrange(1, 40)):
            start = rng.randrange(0, 50)
            spans.append((start, start + rng.choice([0, 1, 2, 5, 20] if zero_length else [1, 2, 5, 20])))
        lanes = _partition(spans)
        by_lane = defaultdict(list)
        for span, lane in zip(spans, lanes):
            by_lane[lane].append(span)
        assert sorted(by_lane) == list(range(len(by_lane)))
        for lane in by_lane.values():
            lane.sort()
            assert all(a[1] <= b[0] for a, b in zip(lane, lane[1:]))
        if not zero_length:  # the most spans in progress at one instant (one ending as another starts: apart)
            assert len(by_lane) == max(sum(1 for s, e in spans if s <= t < e) for t in range(80))


def test_timestamps_are_whole_nanoseconds_that_perfetto_reads_back_exactly():
    rng = random.Random(1)
    for n in [0, 1, 999, 1000, 1001, *(rng.randrange(10 ** 13) for _ in range(20000))]:
        us = _us(n)
        assert int(us * 1000) == n and round(us * 1000) == n and abs(us - n / 1000) <= 2 * abs(us) * 2 ** -52
