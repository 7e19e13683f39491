"""BytePS's scheduler (priority and credit) and Herring's summation CPU, against outcomes derived by hand."""

import pytest

from pssim import simulate, to_config
from pssim.simulation import Simulation
from conftest import fast

GB = 1e9
RESNET50_BYTES = 25_557_032 * 4


def ideal(gbps, cpu_ns_per_byte=0.0, aggregation_ns_per_byte=0.0):
    """A star with efficiency 1 and alpha = 4 us + 2 hops of 0.5 us; CPU costs as given."""
    return {"network.name": "ideal", "network.transport": "rdma", "network.bandwidth_gbps": gbps,
            "network.efficiency": 1.0, "network.latency_us": 4.0, "network.hop_latency_us": 0.5,
            "network.cpu_ns_per_byte": cpu_ns_per_byte, "cluster.aggregation_ns_per_byte": aggregation_ns_per_byte}


ALPHA = 4e-6 + 2 * 0.5e-6


def byteps_pushes(credit: int):
    """One BytePS step, ResNet-50's tensors in 4,096,000-byte partitions, 2 GPU machines (one GPU each)
    and 2 CPU machines, so every partition lives on a CPU machine and every push crosses the network.
    Compute is negligible (H100, fp16, batch 1) and the network slow (1 Gb/s), so backward ends long
    before the first push lands. Returns the simulation and, per machine, its push flows in the order
    they were sent."""
    sim = Simulation(to_config(**fast(policy="byteps", cluster__workers=2, cluster__cpu_machines=2,
                                      policy__credit=credit, policy__partition_bytes=4_096_000,
                                      profile="resnet50", cluster__device="h100", cluster__precision="fp16",
                                      train__batch_size=1, train__numerics=False, train__steps=1,
                                      output__trace=True), **ideal(1))).run()
    pushes = [f for f in sim.network.completed if f.tag.startswith("byteps-push")]
    hosts = sim.policy.hosts
    return sim, {h: sorted((f for f in pushes if f.src == h), key=lambda f: (f.submitted, f.tag)) for h in hosts}


def pushed(flows):
    """(layer, index) of each push, from its tag "byteps-push L{layer}.{index}"."""
    return [tuple(int(x) for x in f.tag.split("L")[1].split(".")) for f in flows]


@pytest.mark.parametrize("credit", [1, 2])
def test_byteps_pushes_layers_nearer_the_input_first(credit):
    """Backward makes the last layer's gradient first: its first `credit` partitions (of 3) leave at once.
    By the time one of them lands, backward has ended and every other partition is queued; from then
    on the queue hands them out by (layer, index): layer 0 (ready last) overtakes every queued later
    layer, and the last layer's remaining partitions go last."""
    sim, by_machine = byteps_pushes(credit)
    profile = sim.policy.profile
    last = len(profile.layers) - 1
    assert profile.backward_ready()[0][0] == last
    sizes = [l.nbytes for l in profile.layers]
    parts = [(layer, i) for layer, size in enumerate(sizes) for i in range(-(-size // 4_096_000))]
    assert sum(1 for layer, _ in parts if layer == last) == 3  # fc: 8,196,000 bytes
    first = [(last, i) for i in range(credit)]
    expected = first + sorted(p for p in parts if p not in first)
    compute_end = max(r.compute_end for r in sim.ctx.recorder.steps)
    for flows in by_machine.values():
        assert compute_end < min(f.end for f in flows)  # the premise: everything queued before a landing
        assert pushed(flows) == expected
        assert pushed(flows)[credit] == (0, 0)


@pytest.mark.parametrize("credit", [1, 2, 3])
def test_byteps_credit_caps_the_pushes_in_flight(credit):
    """A push holds its credit from its send until its bytes land at the service (not until its sum
    comes back). Here partitions wait from the start, so the first `credit` leave together and every
    later one leaves the instant an earlier push lands: `credit` in flight at every send."""
    _, by_machine = byteps_pushes(credit)
    for flows in by_machine.values():
        assert len({f.submitted for f in flows[:credit]}) == 1
        landings = {f.end for f in flows}
        assert all(f.submitted in landings for f in flows[credit:])
        in_flight = [sum(1 for g in flows if g.submitted <= f.submitted < g.end) for f in flows]
        assert in_flight == [credit] * len(flows)


@pytest.mark.parametrize("n", [2, 4])
def test_herring_pays_each_parts_sum_and_transport_once_on_enough_cores(n):
    """Herring on n machines, one buffer of ResNet-50's M bytes, with summation and transport CPU.
    Each machine sends part i (M/n) to server i. The n-1 remote parts of a server land together at
    alpha + (n-1)(M/n)/B; with n cores the n-1 remote adds run at once, (M/n)(sum + transport), beside
    the local part's (M/n * sum, from the start: it lands at once, and ends first); the n-1 returns pay
    (M/n) transport side by side and fly back in alpha + (n-1)(M/n)/B (the local one needs neither).
    Communication = 2 alpha + 2(n-1)M/(nB) + (M/n)(sum + 2 transport). On fewer cores the adds queue."""
    sum_ns, tr_ns = 0.1, 0.2
    b = 100 / 8 * GB
    result = simulate(**fast(train__numerics=False, train__steps=3, cluster__workers=n, policy="herring",
                             profile="resnet50", policy__fusion_bytes=10 ** 10, cluster__server_cores=n),
                      **ideal(100, tr_ns, sum_ns))
    m = RESNET50_BYTES / n
    expected = 2 * ALPHA + 2 * (n - 1) * m / b + m * (sum_ns + 2 * tr_ns) * 1e-9
    comm = (result.steps["comm_end"] - result.steps["compute_end"]).to_numpy()
    assert comm == pytest.approx(expected, rel=1e-9)
