"""OSDI'14 replicated key ranges under +policy=bounded_delay: ring placement, replication bytes, and a
server crash that loses nothing with replicas=1 and exactly the crashed server's updates with 0.

The ring is rewritten here independently of pssim/comm/ring.py from its definition: host h's virtual
node v sits at crc32("h#v"), range j at crc32("rangej"); a range's chain is the distinct hosts in the
order of their nodes' clockwise distance (node - range) mod 2**32 from the range."""

import zlib

import pytest
import torch

from pssim import simulate, to_config
from pssim.config import ConfigError
from pssim.seeding import Streams
from pssim.simulation import Simulation
from conftest import fast

STEPS = 12


def crc(name: str) -> int:
    return zlib.crc32(name.encode()) & 0xFFFFFFFF


def chain(j: int, hosts: list[str], vnodes: int) -> list[str]:
    r = crc(f"range{j}")
    nodes = sorted(((crc(f"{h}#{v}") - r) % 2**32, h, v) for h in hosts for v in range(vnodes))
    out = []
    for _, h, _ in nodes:
        if h not in out:
            out.append(h)
    return out


def config(k=0, servers=3, vnodes=4, faults=(), **extra):
    rows = ", ".join(f"{{at_s: {t!r}, kind: server_crash, target: '{s}'}}" for t, s in faults)
    over = ["+policy=bounded_delay", "policy.max_delay=0", f"policy.replicas={k}", f"policy.virtual_nodes={vnodes}"]
    if faults:
        over += ["faults=server_crash", f"faults.events=[{rows}]"]
    kw = fast(**{"cluster__workers": 2, "cluster__servers": servers, "train__steps": STEPS, "train__momentum": 0.9,
                 "workload__dtype": "float64", **extra})
    return to_config(over, **kw)


def run(**kw) -> Simulation:
    return Simulation(config(**kw), record_params=False, progress=False).run()


def downlinks(sim) -> dict[str, float]:
    """Bytes carried by each switch->server link."""
    net = sim.ctx.network
    return {link.dst: net.link_bytes.get(link, 0.0) for link in net.topology.links
            if link.src == "switch" and link.dst.startswith("server")}


def range_bytes() -> list[float]:
    """Each range's wire bytes, from a run without the ring (range j on server j): its downlink carries
    exactly STEPS pushes of range j (tau=0: one task at a time, every push lands before the end)."""
    plain = run(k=0)
    assert all(s.host == f"server{s.index}" for s in plain.ctx.servers.shards)
    return [downlinks(plain)[f"server{j}"] / STEPS for j in range(3)]


@pytest.mark.parametrize("servers,vnodes", [(3, 4), (4, 2), (5, 1)])
def test_ranges_sit_on_the_ring_primary_first(servers, vnodes):
    hosts = [f"server{i}" for i in range(servers)]
    sim = run(k=1, servers=servers, vnodes=vnodes, train__steps=2)
    rep = sim.policy.replication
    for shard in sim.ctx.servers.shards:
        expected = chain(shard.index, hosts, vnodes)
        assert shard.host == expected[0]
        assert rep.successors(shard.index) == expected[1:2]


def test_replication_bytes_are_k_times_range_bytes_times_updates_on_each_replicas_link():
    """Server h's downlink carries STEPS pushes of every range it is primary of, plus one copy of each
    range it replicates per update but the last (the last task's copies leave after its apply, which
    ends the run)."""
    hosts = [f"server{i}" for i in range(3)]
    nbytes = range_bytes()
    for k in (1, 2):
        got = downlinks(run(k=k))
        expected = {h: 0.0 for h in hosts}
        for j in range(3):
            c = chain(j, hosts, 4)
            expected[c[0]] += STEPS * nbytes[j]
            for h in c[1:k + 1]:
                expected[h] += (STEPS - 1) * nbytes[j]
        assert got == pytest.approx(expected, rel=1e-12, abs=1e-9)
        replicated = sum(got.values()) - STEPS * sum(nbytes)
        assert replicated == pytest.approx(k * sum(nbytes) * (STEPS - 1), rel=1e-12)


def crash_window(sim, m: int) -> tuple[float, float]:
    """With tau=0 task m (the m-th in start order) runs alone: the crash-free run's copies holding m+1
    updates have all landed at `landed`; task m+1's gradient is computed at `next_compute_end` and no
    range has applied it before. A crash between them finds every copy up to date."""
    steps = sim.ctx.recorder.steps
    order = sorted(steps, key=lambda r: r.compute_start)
    landed = max(t for (_, _, _, updates, _, t) in sim.policy.replication.log if updates == m + 1)
    return landed, order[m + 1].compute_end


def crashed_server(sim) -> int:
    """The server that owns range 0 in the ring."""
    return int(sim.ctx.servers.shards[0].host.removeprefix("server"))


def test_a_server_crash_with_one_replica_loses_no_update():
    base = run(k=1)
    assert base.policy.replication.k == 1
    landed, before = crash_window(base, 4)
    assert landed < before
    at, target = (landed + before) / 2, crashed_server(base)
    hit = Simulation(config(k=1, faults=[(at, target)]), record_params=False, progress=False).run()
    faults = hit.ctx.recorder.faults
    assert len(faults) == 1 and faults[0].updates_lost == 0 and faults[0].component == f"server {target}"
    assert all(s.host != f"server{target}" for s in hit.ctx.servers.shards)  # its ranges moved
    assert hit.status == "completed"
    assert torch.equal(hit.params, base.params)  # tau=0: the same sequence of updates on the same state


def test_a_server_crash_without_replicas_loses_exactly_the_updates_it_held():
    """replicas=0: the crashed server's ranges restart from the initial parameters; every update they
    had applied (tasks 0..m, one per range per task) is lost, no other."""
    base = run(k=0, faults=[(1e9, 0)])  # the same ring, the crash never comes
    m = 4
    order = sorted(base.ctx.recorder.steps, key=lambda r: r.compute_start)
    at = (order[m].push_end + order[m + 1].compute_end) / 2
    hosts = [f"server{i}" for i in range(3)]
    owned = {h: sum(1 for j in range(3) if chain(j, hosts, 4)[0] == h) for h in hosts}
    target = max(hosts, key=lambda h: owned[h])
    r = simulate(config(k=0, faults=[(at, target.removeprefix("server"))]))
    assert r.summary["updates_lost"] == (m + 1) * owned[target]
    assert list(r.faults["updates_lost"]) == [(m + 1) * owned[target]]
    assert r.summary["status"] == "completed"
    assert not torch.equal(r.params, base.ctx.model.params)


def test_pushes_in_flight_to_a_crashed_server_are_sent_again_to_the_new_primary():
    """Crash just after task m's gradient leaves the worker: its pushes to the crashed server's ranges
    are sent again (their bytes once each) to the replicas that took the ranges over, which apply them
    on their up-to-date copies: nothing lost, the same parameters."""
    base = run(k=1)
    target = crashed_server(base)
    m = 4
    order = sorted(base.ctx.recorder.steps, key=lambda r: r.compute_start)
    at = order[m].compute_end + 1e-9
    hit = Simulation(config(k=1, faults=[(at, target)]), record_params=False, progress=False).run()
    fault = hit.ctx.recorder.faults[0]
    owned = [s.nbytes for s in base.ctx.servers.shards if s.host == f"server{target}"]
    assert fault.updates_lost == 0 and fault.bytes_resent == pytest.approx(sum(owned), rel=1e-12)
    assert torch.equal(hit.params, base.params)


def test_a_crash_before_the_copy_lands_loses_the_unreplicated_update():
    """replicas=1, crash right after task m's apply and before its copy lands: one update per range
    of the crashed server is lost (acknowledged, not yet replicated)."""
    base = run(k=1)
    target = crashed_server(base)
    host = f"server{target}"
    m = 4
    first = min(t for (j, src, _, u, s, t) in base.policy.replication.log if u == m + 1 and src == host)
    sent = min(s for (j, src, _, u, s, t) in base.policy.replication.log if u == m + 1 and src == host)
    order = sorted(base.ctx.recorder.steps, key=lambda r: r.compute_start)
    at = (max(sent, order[m].push_end) + first) / 2
    assert order[m].push_end < at < first
    owned = sum(1 for s in base.ctx.servers.shards if s.host == host)
    r = simulate(config(k=1, faults=[(at, target)]))
    assert r.summary["updates_lost"] == owned


def test_server_crash_is_refused_outside_bounded_delay_and_checked():
    row = "faults.events=[{at_s: 0.001, kind: server_crash, target: '0'}]"
    with pytest.raises(ConfigError, match="server_crash.*bounded_delay") as err:
        to_config(["+policy=async", "faults=server_crash", row])
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="faults.events.0..for_s"):
        to_config(["+policy=bounded_delay", "faults=server_crash",
                   "faults.events=[{at_s: 0.001, kind: server_crash, target: '0', for_s: 1.0}]"])
    with pytest.raises(ConfigError, match="faults.events.0..target"):
        to_config(["+policy=bounded_delay", "faults=server_crash", "cluster.servers=1", row])  # nobody takes over
    assert to_config(["+policy=bounded_delay", "faults=server_crash"]).cluster.servers == 3  # the preset's servers
    with pytest.raises(ConfigError, match="policy.replicas"):
        to_config(["+policy=bounded_delay", "cluster.servers=2", "policy.replicas=2"])
    with pytest.raises(ConfigError, match="policy.virtual_nodes"):
        to_config(["+policy=bounded_delay", "policy.virtual_nodes=0"])


def test_mtbf_server_crashes_follow_their_poisson_stream_and_spare_the_last_server():
    """faults.server_mtbf_s: crash times are the running sum of exponential(mtbf) draws of the stream
    faults/server, each hitting the server drawn uniformly right after its time; a draw that hits a
    server already down, or would leave no server up, is skipped. Rebuilt here from the stream."""
    servers, mtbf = 4, 0.002
    r = simulate(["+policy=bounded_delay", "faults=mtbf"], **fast(**{
        "faults.worker_mtbf_s": None, "faults.server_mtbf_s": mtbf, "cluster.servers": servers,
        "cluster.workers": 3, "policy.replicas": 1, "train.steps": 300, "train.numerics": False}))
    rng, now, down, expected = Streams(r.config.seed).generator("faults/server"), 0.0, set(), []
    while now < r.summary["sim_time_s"]:
        now += float(rng.exponential(mtbf))
        target = int(rng.integers(servers))
        if now < r.summary["sim_time_s"] and target not in down and len(down) + 1 < servers:
            down.add(target)
            expected.append((now, f"server {target}"))
    assert len(expected) == servers - 1  # the run is long enough for every crash but the last server's
    assert [(pytest.approx(t), c) for t, c in expected] == list(zip(r.faults["time_s"], r.faults["component"]))
    assert r.summary["status"] == "completed"


def test_mtbf_server_crashes_are_refused_outside_bounded_delay():
    with pytest.raises(ConfigError, match="faults.server_mtbf_s"):
        simulate(["+policy=async", "faults=mtbf"], **{"faults.server_mtbf_s": 1.0})


@pytest.mark.parametrize("k", [0, 1])
def test_a_handoff_resumes_params_momentum_and_clock_from_the_replica_or_the_checkpoint(k):
    """The new primary of each range the crashed host owned holds exactly its copy: parameters, momentum
    and vector clock as replicated (k=1), or the checkpoint (k=0): the initial parameters, zero momentum,
    a zero clock. Ranges the host did not own are untouched."""
    sim = run(k=k, faults=[(1e9, 0)])  # the ring of a crash run; the crash itself comes by hand below
    rep, shards = sim.policy.replication, sim.ctx.servers.shards
    host = shards[0].host
    hosts = [f"server{i}" for i in range(3)]
    new = {s.index: [h for h in chain(s.index, hosts, 4) if h != host][0] for s in shards if s.host == host}
    assert new  # the host owned some range
    expected = {j: (rep.copies[j][h][0], rep.copies[j][h][1][0]["momentum"], rep.copies[j][h][2])
                for j, h in new.items()} if k else {
        j: (sim.ctx.initial_params[shards[j].lo:shards[j].hi], torch.zeros(shards[j].hi - shards[j].lo,
            dtype=torch.float64), [0, 0]) for j in new}
    others = {s.index: (s.state.params.clone(), s.state.momentum.clone()) for s in shards if s.index not in new}
    assert all(s.state.momentum.abs().sum() > 0 for s in shards)  # momentum to lose
    rep.crash(host)
    for j, (params, momentum, clock) in expected.items():
        assert shards[j].host == new[j]
        assert torch.equal(shards[j].state.params, params) and torch.equal(shards[j].state.momentum, momentum)
        assert rep.clocks[j] == list(clock)
    for j, (params, momentum) in others.items():
        assert torch.equal(shards[j].state.params, params) and torch.equal(shards[j].state.momentum, momentum)
