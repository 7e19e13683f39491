"""The two fitted effects of BytePS's 20 Gbps cloud (docs/VALIDATION.md, BytePS vs Horovod), each against
its closed form: the fabric share (network.fabric_share_beta: every NIC at B / (1 + beta (m - 1)) on m GPU
machines) and the overlap loss (policy.overlap_loss = eta: a lockstep step ends eta x min(W, NIC busy)
after its communication and backward pass, `pssim.policies.replicated.overlap_delay`)."""

import pytest

from pssim import ConfigError, simulate, to_config
from pssim.simulation import Simulation
from pssim.validation import steady_throughput
from pssim.workload.profiles import resnet50
from conftest import fast
from test_collectives import ALPHA, B, IDEAL, IDEAL_ALLREDUCE, RESNET50_BYTES

GBPS = 1e9 / 8


# -- the fabric share -----------------------------------------------------------------------------------

@pytest.mark.parametrize("beta", [0.0, 0.25])
def test_every_nic_and_its_flow_cap_get_the_fabric_share_of_the_jobs_gpu_machines(beta):
    """32 GPUs in machines of 8 (m = 4) and 4 CPU machines on the 21.1 Gb/s cloud preset (one stream
    13.7 Gb/s): every NIC link, CPU machines' too, carries 21.1 / (1 + 3 beta) Gb/s, each flow at most
    13.7 / (1 + 3 beta); the NVLink and PCIe links inside the machines keep their rates."""
    cfg = to_config(**fast(train__numerics=False, train__steps=1, cluster__workers=32, cluster__gpus_per_machine=8,
                           cluster__cpu_machines=4, policy="byteps", network="tcp_20g_cloud",
                           network__fabric_share_beta=beta))
    sim = Simulation(cfg, progress=False)
    machines = {*sim.ctx.cluster.layout.machines, *sim.ctx.cluster.layout.cpu_machines}
    nic = [l for l in sim.topology.links if "switch" in (l.src, l.dst)]
    assert {l.src for l in nic} - {"switch"} == machines and len(nic) == 16
    share = 1 + beta * (4 - 1)
    for link in nic:
        assert link.capacity == pytest.approx(21.1 * GBPS / share, rel=1e-12)
        assert link.transport.flow_cap == pytest.approx(13.7 * GBPS / share, rel=1e-12)
    inside = [l for l in sim.topology.links if l not in nic]
    assert inside and all(l.capacity > 90 * GBPS for l in inside)  # NVLink / PCIe 3 x16, untouched


@pytest.mark.parametrize("n,beta", [(4, 0.5), (8, 0.2)])
def test_the_ideal_ring_runs_at_the_shared_rate(n, beta):
    """One GPU per machine (m = n), one fusion buffer sent when backward ends: the ring takes
    2(n-1)/n M / (B / (1 + beta (n - 1))) + 2(n-1) alpha."""
    result = simulate(**fast(train__numerics=False, train__steps=3, cluster__workers=n, policy="allreduce",
                             profile="resnet50", policy__fusion_bytes=10 ** 10),
                      **IDEAL, **IDEAL_ALLREDUCE, **{"network.fabric_share_beta": beta})
    comm = (result.steps["comm_end"] - result.steps["compute_end"]).to_numpy()
    rate = B / (1 + beta * (n - 1))
    assert comm == pytest.approx(2 * (n - 1) / n * RESNET50_BYTES / rate + 2 * (n - 1) * ALPHA, rel=1e-9)


def test_fabric_share_beta_out_of_range_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"network\.fabric_share_beta.*\[0, 1000\]"):
        to_config(**fast(**{"network.fabric_share_beta": -0.1}))
    with pytest.raises(ConfigError, match=r"intra\.fabric_share_beta.*must be 0"):
        to_config(**fast(**{"intra.fabric_share_beta": 0.1}))


# -- the overlap loss -----------------------------------------------------------------------------------

SAMPLES_PER_S = 100.0  # batch 32: d = 0.32 s of compute per step


def period(eta: float, **extra) -> float:
    """Steady seconds per step of the ideal ring on 2 one-GPU machines (ResNet-50's bytes, no cycle,
    buffers cut at policy.fusion_bytes) with overlap loss eta."""
    result = simulate(**fast(train__numerics=False, train__steps=6, cluster__workers=2, policy="allreduce",
                             profile="resnet50", cluster__samples_per_s=SAMPLES_PER_S, policy__overlap_loss=eta),
                      **{**IDEAL, **IDEAL_ALLREDUCE, **extra})
    return 2 * 32 / steady_throughput(result)


def first_gradient_ready() -> float:
    """The fraction of a step at which the first gradient (in backward order) with parameters is ready."""
    profile = resnet50()
    return next(f for layer, f in profile.backward_ready() if profile.layers[layer].nbytes > 0)


@pytest.mark.parametrize("eta", [0.3, 1.0])
def test_overlap_loss_adds_eta_times_the_nic_busy_time_when_the_nic_idles_in_the_window(eta):
    """100 Gb/s: each layer's all-reduce (fusion_bytes 1: a buffer a layer) is done long before the next
    gradient is ready, so W (first gradient ready -> backward end, 0.32 (1 - f) s) exceeds the NIC's
    busy time. On 2 machines the ring moves 2(n-1)/n M = M through each NIC direction, back to back at
    B: busy M / B, and every step ends eta M / B later."""
    base = period(0.0, **{"policy.fusion_bytes": 1})
    window = 32 / SAMPLES_PER_S * (1 - first_gradient_ready())
    assert RESNET50_BYTES / B < window / 10
    assert period(eta, **{"policy.fusion_bytes": 1}) - base == pytest.approx(eta * RESNET50_BYTES / B, rel=1e-6)


@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_overlap_loss_adds_eta_times_the_overlap_window_when_the_nic_is_busier(eta):
    """1 Gb/s: the NIC needs M / B = 0.82 s, far longer than the window from the first gradient's send
    (a fraction f into the 0.32 s step) to the end of backward, so min(W, busy) = W = 0.32 (1 - f)."""
    slow = {"policy.fusion_bytes": 1, "network.bandwidth_gbps": 1}
    base = period(0.0, **slow)
    window = 32 / SAMPLES_PER_S * (1 - first_gradient_ready())
    assert RESNET50_BYTES / (GBPS * 1) > 2 * window
    assert period(eta, **slow) - base == pytest.approx(eta * window, rel=1e-9)


def test_overlap_loss_costs_nothing_when_no_communication_overlaps_backward():
    """One fusion buffer of every gradient leaves when backward ends: W = 0, the step is the same."""
    one_buffer = {"policy.fusion_bytes": 10 ** 10}
    assert period(0.8, **one_buffer) == period(0.0, **one_buffer)


def test_overlap_loss_out_of_range_or_with_cross_barrier_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"policy\.overlap_loss.*\[0, 1\]"):
        to_config(**fast(policy="allreduce", policy__overlap_loss=1.5))
    with pytest.raises(ConfigError, match=r"policy\.overlap_loss.*cross_barrier"):
        to_config(**fast(policy="byteps", policy__overlap_loss=0.5, policy__cross_barrier=True))


def test_overlap_loss_survives_a_nic_link_going_down_and_back():
    """A NIC link down for 2 ms while step 0's gradients cross it (40 ms in: the first buffer left at
    29 ms), capacity 0: the step restarts at once and the run completes; the NIC time is counted at the
    link's healthy rate, so a dead link never divides by zero."""
    faults = ["faults=worker_crash", "faults.events=[{at_s: 0.04, kind: link_down, target: 'worker1-switch', "
                                     "for_s: 0.002}]"]
    result = simulate(faults, **fast(train__numerics=False, train__steps=4, cluster__workers=2, policy="allreduce",
                                     profile="resnet50", policy__overlap_loss=0.5, policy__fusion_bytes=1),
                      **{**IDEAL, **IDEAL_ALLREDUCE})
    assert result.summary["status"] == "completed" and result.summary["global_steps"] == 4
    assert result.summary["time_lost_to_faults_s"] > 0.04  # step 0's partial attempt and the wait
