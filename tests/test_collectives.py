"""All-reduce, Herring and BytePS against their closed forms; they change time, not math."""

import numpy as np
import pytest
import simpy
import torch

from pssim import simulate
from pssim.comm.collectives import ring_allreduce
from pssim.network import FlowNetwork, star
from pssim.policies.byteps import optimal_shares, place_partitions
from pssim.simulation import Simulation
from pssim import to_config
from conftest import fast
from test_network import GB, transport

B = 100 / 8 * GB  # the ideal network below: 100 Gb/s, efficiency 1, alpha = 2 hops + overhead
IDEAL = {"network.name": "ideal", "network.transport": "rdma", "network.bandwidth_gbps": 100,
         "network.efficiency": 1.0, "network.latency_us": 4.0, "network.hop_latency_us": 0.5,
         "network.cpu_ns_per_byte": 0.0, "cluster.aggregation_ns_per_byte": 0.0}
ALPHA = 4e-6 + 2 * 0.5e-6
RESNET50_BYTES = 25_557_032 * 4
# The ideal all-reduce: buffers cut at the threshold alone, one ring flow per hop (no NCCL channels,
# sockets, launch or proxy costs; tests/test_nccl.py covers those).
IDEAL_ALLREDUCE = {"policy.algorithm": "ideal_ring", "policy.cycle_ms": 0}


IDEAL_HERRING = {"policy.message_us": 0.0}  # no fixed per-message server cost: the closed forms' Herring


def ideal(policy: str) -> dict:
    return {"allreduce": IDEAL_ALLREDUCE, "herring": IDEAL_HERRING}.get(policy, {})


def timing_run(policy, workers, **extra):
    """Timing only, ResNet-50's bytes, one fusion buffer, compute negligible and equal on every worker."""
    return simulate(**fast(train__numerics=False, train__steps=3, cluster__workers=workers, policy=policy,
                           profile="resnet50", policy__fusion_bytes=10 ** 10),
                    **IDEAL, **ideal(policy), **extra)


def comm_time(result) -> np.ndarray:
    return (result.steps["comm_end"] - result.steps["compute_end"]).to_numpy()


@pytest.mark.parametrize("n", [2, 3, 8])
def test_ring_allreduce_on_a_star_is_2_n_minus_1_over_n_m_over_b_plus_2_n_minus_1_alpha(n):
    t = transport(bandwidth=B, latency_s=4e-6, hop_latency_s=0.5e-6)
    env = simpy.Environment()
    net = FlowNetwork(env, star([f"h{i}" for i in range(n)], t))
    m = 64e6
    env.run(until=env.process(ring_allreduce(env, net, [f"h{i}" for i in range(n)], m)))
    assert env.now == pytest.approx(2 * (n - 1) / n * m / B + 2 * (n - 1) * ALPHA, rel=1e-12)
    # ...and the policy: the one fusion buffer leaves when backward ends, so communication is the ring.
    result = timing_run("allreduce", n)
    assert comm_time(result) == pytest.approx(2 * (n - 1) / n * RESNET50_BYTES / B + 2 * (n - 1) * ALPHA, rel=1e-9)


@pytest.mark.claims
@pytest.mark.parametrize("n", [2, 4, 8])
def test_herring_moves_the_ring_volume_in_two_hops(n):
    """Push part i to server i, sum, return: 2 alpha + 2(N-1)M/(N B); every server gets M/N per worker."""
    result = timing_run("herring", n)
    assert comm_time(result) == pytest.approx(2 * ALPHA + 2 * (n - 1) * RESNET50_BYTES / (n * B), rel=1e-9)
    sim = Simulation(to_config(**fast(train__numerics=False, train__steps=2, cluster__workers=n,
                                      policy="herring", profile="resnet50", output__trace=True),
                                 **IDEAL, **IDEAL_HERRING)).run()
    pushes = [f for f in sim.network.completed if f.tag == "herring-push"]
    per_server = {}
    for f in pushes:
        per_server[f.dst] = per_server.get(f.dst, 0.0) + f.size
    assert len(per_server) == n
    assert np.allclose(list(per_server.values()), list(per_server.values())[0], rtol=1e-12)
    sizes = {round(f.size, 6) for f in pushes}
    buffers = sim.policy.buffers
    assert sizes == {round(b.nbytes / n, 6) for b in buffers}  # each buffer cut into N equal parts


@pytest.mark.claims
def test_herring_latency_is_two_hops_while_the_ring_pays_2_n_minus_1():
    """A tiny model: time is latency. Herring stays at ~2 alpha from 2 to 8 machines; the ring grows."""
    def latency_part(policy, n):
        r = simulate(**fast(train__numerics=False, train__steps=3, cluster__workers=n, policy=policy),
                     **IDEAL, **ideal(policy))
        return comm_time(r).mean()
    herring = [latency_part("herring", n) for n in (2, 4, 8)]
    ring = [latency_part("allreduce", n) for n in (2, 4, 8)]
    assert herring[2] - herring[0] < ALPHA  # bytes only: 2 hops whatever N
    assert ring[2] - ring[0] == pytest.approx(2 * (8 - 2) * ALPHA, rel=0.05)


def test_byteps_optimal_split_shares_add_up_and_degenerate():
    for n in (2, 4, 8):
        for k in (0, 1, n // 2, n):
            cpu, gpu = optimal_shares(n, k)
            assert k * cpu + n * gpu == pytest.approx(1.0)
    assert optimal_shares(4, 0) == (pytest.approx(6 / 16), pytest.approx(1 / 4))  # k=0: M/n per machine
    assert optimal_shares(4, 4)[1] == 0  # k=n: nothing on the GPU machines
    parts = place_partitions([4e6] * 50, 1e6, n=4, k=2)
    placed = np.zeros(6)
    for p in parts:
        placed[p.server] += p.nbytes
    cpu, gpu = optimal_shares(4, 2)
    assert placed / placed.sum() == pytest.approx([cpu] * 2 + [gpu] * 4, abs=0.01)


FIFO_GAP = ("fair sharing gives a machine's connection to a CPU machine the same share of its NIC as each "
            "connection to a GPU machine, though the paper's split sends it 2(n-1)/(n-k) = 2-3x their bytes: "
            "the CPU traffic lags, every link carries t_opt B but idles ~28% of the time (35-38% above t_opt "
            "at k = 1, 2)")
ONE_AT_A_TIME = ("a connection carries one message at a time: a machine's k connections idle through each "
                 "message's latency together, and the pipeline fills and drains one partition at B/k (2.9%)")


@pytest.mark.claims
@pytest.mark.parametrize("k", [0, pytest.param(1, marks=pytest.mark.xfail(strict=True, reason=FIFO_GAP)),
                               pytest.param(2, marks=pytest.mark.xfail(strict=True, reason=FIFO_GAP)),
                               pytest.param(4, marks=pytest.mark.xfail(strict=True, reason=ONE_AT_A_TIME))])
def test_byteps_reaches_the_papers_optimal_time(k):
    """t_opt = 2n(n-1)M / ((n^2 + kn - 2k) B) (section 4.1), within 2%: ring time at k=0, M/B at k=n.

    The paper's split (policy.placement=mixed) with 1 MB partitions over one connection per machine and
    server (finer partitions pay more per-message latency); docs/MODELS.md reports the distances."""
    n = 4
    vgg16 = 138_357_544 * 4
    result = simulate(**fast(policy="byteps", cluster__workers=n, cluster__cpu_machines=k,
                             profile="vgg16", policy__partition_bytes=1_000_000, policy__placement="mixed",
                             cluster__device="h100", cluster__precision="fp16", train__batch_size=1,
                             train__numerics=False, train__steps=1), **IDEAL)
    steps = result.steps
    t_opt = 2 * n * (n - 1) * vgg16 / ((n * n + k * n - 2 * k) * B)
    compute = (steps["compute_end"] - steps["compute_start"]).mean()
    assert compute < 0.01 * t_opt
    assert (steps["comm_end"] - steps["compute_start"]).mean() == pytest.approx(t_opt, rel=0.02)
    if k == 0:
        assert t_opt == pytest.approx(2 * (n - 1) * vgg16 / (n * B))
    if k == n:
        assert t_opt == pytest.approx(vgg16 / B)


def test_intra_node_reduction_is_carried_by_nvlink_not_the_nic():
    """Herring, 2 machines x 4 GPUs, one buffer of ResNet-50 per step:
    each NIC sends 2(N-1)/N M = M per step; each GPU's NVLink uplink sends (g-1)/g M (reduce-scatter)
    and (g-1)/g M (all-gather); its PCIe link to the host carries the copy to host, M/g."""
    g, steps = 4, 3
    result = timing_run("herring", 8, **{"cluster.gpus_per_machine": g})
    links = result.links.set_index("link")
    for j in range(2):
        assert links.loc[f"machine{j}->switch", "bytes"] == pytest.approx(steps * RESNET50_BYTES, rel=1e-9)
        for l in range(g):
            assert links.loc[f"machine{j}.gpu{l}->machine{j}.nvlink", "bytes"] == pytest.approx(
                steps * RESNET50_BYTES * 2 * (g - 1) / g, rel=1e-9)
            assert links.loc[f"machine{j}.gpu{l}->machine{j}", "bytes"] == pytest.approx(
                steps * RESNET50_BYTES / g, rel=1e-9)
    single = timing_run("herring", 4, **{"cluster.gpus_per_machine": 4}).links.set_index("link")
    assert single.loc["machine0->switch", "bytes"] == 0
    assert single.loc["machine0.gpu0->machine0", "bytes"] > 0


@pytest.mark.parametrize("policy", ["allreduce", "byteps", "herring"])
def test_collective_policies_follow_syncs_parameters_step_for_step(policy):
    common = fast(cluster__workers=4, cluster__gpus_per_machine=2, cluster__cpu_machines=1, train__steps=8,
                  workload__dtype="float64", stragglers="exponential", stragglers__mean_s=1e-4,
                  profile="resnet50")
    sync = simulate(record_params=True, **common)
    other = simulate(record_params=True, **{**common, "policy": policy})
    assert len(other.param_history) == len(sync.param_history) == 9
    for t, (a, b) in enumerate(zip(other.param_history, sync.param_history)):
        assert torch.allclose(a, b, atol=1e-6, rtol=0), t
    assert other.summary["sim_time_s"] != sync.summary["sim_time_s"]  # the time is theirs


def test_hierarchical_allreduce_sends_less_over_the_nic_than_the_flat_ring():
    """2 machines x 4 GPUs. Flat ring of 8: one ring edge leaves each machine and carries 2(n-1)/n M =
    1.75 M. Hierarchical: each of the 4 local ranks runs a 2-machine ring on M/4, sending 2(m-1)/m M/4
    = M/4 over the NIC: M per machine."""
    flat = timing_run("allreduce", 8, **{"cluster.gpus_per_machine": 4}).links.set_index("link")
    tiered = timing_run("allreduce", 8, **{"cluster.gpus_per_machine": 4, "policy.hierarchical": True})
    tiered_links = tiered.links.set_index("link")
    for j in range(2):
        assert flat.loc[f"machine{j}->switch", "bytes"] == pytest.approx(3 * 1.75 * RESNET50_BYTES, rel=1e-9)
        assert tiered_links.loc[f"machine{j}->switch", "bytes"] == pytest.approx(3 * RESNET50_BYTES, rel=1e-9)
