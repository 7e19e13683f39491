"""Closed-form checks of the component models: devices, stragglers, data shards, servers, optimizer, config."""

import numpy as np
import pytest
import torch

from pssim import ConfigError, simulate, to_config
from pssim.cluster import DEVICES, make_stragglers
from pssim.cluster.compute import EFFICIENCY
from pssim.comm.ps import shard_ranges
from pssim.cluster.stragglers import STRAGGLER_MODELS
from pssim.seeding import Streams
from pssim.workload.optimizer import SGD
from conftest import fast, workload_for


def test_device_step_time_is_overhead_plus_flops_over_effective_peak():
    v100 = DEVICES["v100"]
    flops = 3.2e12
    assert v100.step_time(flops, "fp32") == pytest.approx(100e-6 + flops / (15.7e12 * 0.6))
    assert v100.step_time(flops, "fp16") == pytest.approx(100e-6 + flops / (125e12 * 0.35))


def test_compute_time_of_a_run_follows_the_device_and_the_workload():
    """MLP 32-64-10: 32*64 + 64*10 weights + 74 biases = 2,794 MACs; 6 FLOPs per MAC, 32 samples. No
    measured row covers it, so the per-layer model times it (cluster.compute=measured falls back to
    model): GEMMs at the A100's fp32 peak times the fitted fp32 GEMM efficiency, plus the ReLU and the
    softmax on the 64 + 10 outputs, 5 passes of 4 bytes at 2,039 GB/s, plus the 100 us overhead."""
    result = simulate(**fast(cluster__device="a100", train__steps=5))
    flops = 6 * (32 * 64 + 64 + 64 * 10 + 10) * 32
    memory = 5 * (64 + 10) * 4 * 32 / 2039e9
    expected = 100e-6 + flops / (19.5e12 * EFFICIENCY["fp32"]["gemm"]) + memory
    durations = result.steps["compute_end"] - result.steps["compute_start"]
    assert np.allclose(durations, expected, rtol=1e-12)


def test_heterogeneous_workers_each_use_their_own_device():
    result = simulate(**fast(cluster__workers=2, cluster__worker_devices=["v100", "t4"], train__steps=4))
    d = (result.steps["compute_end"] - result.steps["compute_start"]).groupby(result.steps["worker"]).mean()
    assert d[1] > d[0]


@pytest.mark.parametrize("model,params,mean_extra", [
    ("exponential", {"mean_s": 0.004}, 0.004),
    ("lognormal", {"mu": -7.0, "sigma": 0.5}, np.exp(-7.0 + 0.5 ** 2 / 2)),
    ("pareto", {"scale_s": 0.002, "alpha": 4.0}, 0.002 / (4.0 - 1)),  # Lomax mean scale/(alpha-1)
])
def test_straggler_delays_have_their_distributions_mean(model, params, mean_extra):
    cfg = STRAGGLER_MODELS[model](**params)
    (s,) = make_stragglers(cfg, 1, Streams(3))
    draws = np.array([s(0.01) - 0.01 for _ in range(40000)])
    assert (draws >= 0).all()
    assert draws.mean() == pytest.approx(mean_extra, rel=0.03)


def test_slow_worker_is_slow_every_step_and_alone():
    cfg = STRAGGLER_MODELS["slow_worker"](worker=2, factor=3.0)
    stragglers = make_stragglers(cfg, 4, Streams(0))
    assert [s(0.5) for s in stragglers] == [0.5, 0.5, 1.5, 0.5]


def test_each_worker_has_its_own_straggler_stream():
    cfg = STRAGGLER_MODELS["exponential"](mean_s=1.0)
    four = make_stragglers(cfg, 4, Streams(7))
    eight = make_stragglers(cfg, 8, Streams(7))
    assert [s(0) for s in four] == [s(0) for s in eight[:4]]
    assert len({s(0) for s in four}) == 4


def test_worker_shards_are_disjoint_cover_the_data_and_batches_stay_inside():
    cfg = to_config(**fast(cluster__workers=3, train__batch_size=16))
    wl = workload_for(cfg)
    shards = [set(s.tolist()) for s in wl.shards]
    assert all(len(a & b) == 0 for i, a in enumerate(shards) for b in shards[i + 1:])
    assert sum(map(len, shards)) == 3 * (2048 // 3)
    per_epoch = wl.batches_per_epoch
    for w in range(3):
        epoch0 = np.concatenate([wl.batch_indices(w, t) for t in range(per_epoch)])
        assert len(set(epoch0.tolist())) == len(epoch0) and set(epoch0.tolist()) <= shards[w]
        assert not np.array_equal(wl.batch_indices(w, 0), wl.batch_indices(w, per_epoch))  # reshuffled


def test_shard_ranges_are_contiguous_and_balanced_by_bytes():
    ranges = shard_ranges(1001, 4)
    assert ranges[0][0] == 0 and ranges[-1][1] == 1001
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    sizes = [hi - lo for lo, hi in ranges]
    assert max(sizes) - min(sizes) <= 1


def test_optimizer_matches_torch_sgd():
    g = torch.Generator().manual_seed(0)
    p0 = torch.randn(50, generator=g, dtype=torch.float64)
    grads = [torch.randn(50, generator=g, dtype=torch.float64) for _ in range(6)]
    ours, state = p0.clone(), {"momentum": torch.zeros(50, dtype=torch.float64)}
    opt = SGD(lr=0.05, momentum=0.8, weight_decay=0.01)
    theirs = p0.clone().requires_grad_(True)
    torch_opt = torch.optim.SGD([theirs], lr=0.05, momentum=0.8, weight_decay=0.01)
    for grad in grads:
        opt.step(ours, grad, state)
        theirs.grad = grad.clone()
        torch_opt.step()
    assert torch.allclose(ours, theirs.detach(), atol=1e-14)


def test_server_cpu_cost_adds_bytes_times_cost_to_a_lone_push():
    """One worker, one server, no contention: push = route latency + S/C + S * (tcp cpu + aggregation)."""
    base = fast(cluster__workers=1, train__steps=3, train__numerics=False)
    cheap = simulate(**base, **{"cluster.aggregation_ns_per_byte": 0.0})
    costly = simulate(**base, **{"cluster.aggregation_ns_per_byte": 50.0})
    push = lambda r: (r.steps["push_end"] - r.steps["comm_start"]).dropna().to_numpy()  # noqa: E731  (finished pushes)
    model_bytes = (32 * 64 + 64 + 64 * 10 + 10) * 4
    assert np.allclose(push(costly) - push(cheap), model_bytes * 50e-9, rtol=1e-9)
    c = cheap.config.network
    expected = 2 * c.hop_latency_us * 1e-6 + c.latency_us * 1e-6 + model_bytes / (
        c.bandwidth_gbps / 8 * 1e9 * c.efficiency) + model_bytes * c.cpu_ns_per_byte * 1e-9
    assert np.allclose(push(cheap), expected, rtol=1e-9)


@pytest.mark.parametrize("key,value,needle", [
    ("cluster.servers", 0, "cluster.servers=0"),
    ("network.efficiency", 1.5, "network.efficiency"),
    ("train.lr", 0.0, "train.lr"),
    ("cluster.device", "tpu", "allowed values are a100, cpu, h100, quadro_p4000, rtx2060, t4, titan_rtx, "
                              "titan_v, titan_xp, v100"),
    ("workload.name", "resnet", "workload.name"),
    ("stragglers.factor", 0.5, "stragglers.factor"),
    ("train.batch_size", 5000, "workload.train_samples"),
])
def test_validation_names_the_key_and_what_is_allowed(key, value, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        to_config(**{key: value})


def test_named_streams_do_not_depend_on_request_order():
    a, b = Streams(5), Streams(5)
    x = a.generator("one").random()
    b.generator("two").random()
    assert b.generator("one").random() == x
