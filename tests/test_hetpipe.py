"""HetPipe: virtual workers, stage partitioning, the pipeline's timing and Wave Synchronous Parallel.

Every expected number is derived here (by hand, a closed form, or a plain torch loop), never read off a
pssim run: the staleness bound from the gate's rule, BSP from torch.optim.SGD, pipeline times from the
textbook fill formula, partitions from known layer times or an exhaustive search.
"""

import itertools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from pssim import simulate, to_config
from pssim.cluster.allocation import allocate
from pssim.cluster.device import DEVICES
from pssim.cluster.partition import NoFit, balance
from pssim.config import ConfigError
from conftest import fast, flatten_torch, torch_mlp, workload_for

HETPIPE_GPUS = ["titan_v"] * 4 + ["titan_rtx"] * 4 + ["rtx2060"] * 4 + ["quadro_p4000"] * 4


def hetpipe(**overrides):
    return simulate(**fast(**{"policy": "hetpipe", **overrides}))


# -- Wave Synchronous Parallel: the staleness bound ---------------------------------------------------
@pytest.mark.parametrize("lag,nm", [(0, 3), (1, 2), (2, 3)])
def test_a_minibatch_misses_at_most_the_bound_of_other_workers_updates(lag, nm):
    """Minibatch p of wave c = p // Nm pulls weights holding every VW's waves below c - D (version >= c - D),
    so of another VW's minibatches numbered below p it misses p - version * Nm <= (D + 1) Nm - 1 =
    (D + 1)(s_local + 1) - 1. One VW three times slower makes the others wait at the gate, so the bound
    is reached, not just respected. Its wave is applied D waves late at most (staleness), and no VW
    starts a minibatch more than D waves ahead of the slowest (clock_lead)."""
    r = hetpipe(**{"policy.max_wave_lag": lag, "policy.minibatches": nm, "cluster.workers": 3,
                   "cluster.gpus_per_worker": 2, "cluster.gpus_per_machine": 2, "workload.hidden": [32, 32],
                   "stragglers": "slow_worker", "stragglers.worker": 1, "stragglers.factor": 3.0,
                   "train.steps": 12})
    steps = r.steps
    missed = steps["step"] - steps["version"] * nm
    bound = (lag + 1) * nm - 1
    assert (steps["version"] >= steps["step"] // nm - lag).all()
    assert missed.max() == bound
    assert steps["staleness"].max() <= lag and steps["clock_lead"].max() <= lag
    fast_workers = steps[steps["worker"] != 1]
    assert (fast_workers["step"] - fast_workers["version"] * nm).max() == bound


# -- numerics -----------------------------------------------------------------------------------------
EXACT = dict(cluster__workers=4, cluster__servers=2, train__batch_size=8, train__steps=10, train__momentum=0.9,
             train__weight_decay=1e-3, workload__dtype="float64", stragglers="exponential", stragglers__mean_s=1e-4)


def test_one_minibatch_no_lag_and_one_gpu_per_worker_is_sync_exactly():
    ours = simulate(record_params=True, **fast(policy="hetpipe", policy__minibatches=1, policy__max_wave_lag=0,
                                               **EXACT))
    sync = simulate(record_params=True, **fast(**EXACT))
    assert len(ours.param_history) == len(sync.param_history) == 11
    for a, b in zip(ours.param_history, sync.param_history):
        assert torch.equal(a, b)
    assert not torch.equal(ours.param_history[0], ours.param_history[-1])


def test_summed_updates_are_sync_at_n_times_the_learning_rate():
    """policy.gradient_scale=sum (the paper's VWs add their updates): with D = 0, Nm = 1 a wave's step is
    lr times the sum of the n gradients, i.e. BSP's mean at n x lr (no weight decay: it is not scaled)."""
    exact = {**EXACT, "train__weight_decay": 0.0}
    ours = simulate(record_params=True, **fast(policy="hetpipe", policy__minibatches=1, policy__gradient_scale="sum",
                                               **exact))
    sync = simulate(record_params=True, **fast(**{**exact, "train__lr": 0.4}))
    for a, b in zip(ours.param_history, sync.param_history):
        assert torch.allclose(a, b, atol=1e-12, rtol=0)
    assert not torch.allclose(ours.param_history[0], ours.param_history[-1])


def grad_at(wl, flat, rows):
    """The gradient of the mean cross-entropy of `rows` at `flat`, by plain torch, in pssim's layout."""
    model = torch_mlp(flat, wl.model.widths)
    F.cross_entropy(model(wl.data.x_train[torch.as_tensor(rows)]), wl.data.y_train[torch.as_tensor(rows)]).backward()
    parts = []
    for m in model:
        if isinstance(m, nn.Linear):
            parts += [m.weight.grad.T.reshape(-1), m.bias.grad]
    return torch.cat(parts)


def test_waves_without_lag_are_bsp_steps_over_every_minibatch_of_the_wave():
    """D = 0: every minibatch of wave c runs on the global weights after c waves (its own earlier
    minibatches of the wave are not in them; minibatches p - Nm and before belong to earlier waves), and
    wave c's step is torch.optim.SGD on the mean gradient of the n Nm minibatches, whatever the pipeline."""
    nm, n = 3, 4
    r = simulate(record_params=True, **fast(policy="hetpipe", policy__minibatches=nm, cluster__gpus_per_worker=2,
                                            cluster__gpus_per_machine=2, workload__hidden=[16, 16], **EXACT))
    wl = workload_for(r.config)
    model = torch_mlp(wl.init_params(), wl.model.widths)
    opt = torch.optim.SGD(model.parameters(), lr=r.config.train.lr, momentum=0.9, weight_decay=1e-3)
    for c in range(r.config.train.steps):
        w = flatten_torch(model).clone()
        mean = sum(grad_at(wl, w, wl.batch_indices(v, c * nm + i)) for v in range(n) for i in range(nm)) / (n * nm)
        offset = 0  # the mean gradient into the layers' .grad (pssim's layout: each weight transposed)
        for m in model:
            if isinstance(m, nn.Linear):
                size = m.in_features * m.out_features
                m.weight.grad = mean[offset:offset + size].view(m.in_features, m.out_features).T.clone()
                offset += size
                m.bias.grad = mean[offset:offset + m.out_features].clone()
                offset += m.out_features
        opt.step()
        assert torch.allclose(r.param_history[c + 1], flatten_torch(model), atol=1e-12, rtol=0), f"wave {c}"


def test_with_lag_each_minibatch_uses_the_pulled_weights_plus_its_own_local_updates():
    """D = 1, plain SGD, one shard: minibatch p of VW v (wave c) runs on w0 - lr s (sum of every VW's
    gradients of the waves its pull held, below `version`, plus v's own gradients of minibatches
    q <= p - Nm in later waves), s = 1 / (n Nm). Rebuilt minibatch by minibatch with plain torch from the
    versions the steps table records; the servers' final weights must match."""
    nm, n, lag = 2, 3, 1
    r = simulate(**fast(policy="hetpipe", policy__minibatches=nm, policy__max_wave_lag=lag, cluster__workers=n,
                        cluster__servers=1, train__batch_size=8, train__steps=8, train__momentum=0.0,
                        workload__dtype="float64", stragglers="slow_worker", stragglers__worker=0,
                        stragglers__factor=2.0))
    wl, lr, s = workload_for(r.config), r.config.train.lr, 1.0 / (n * nm)
    version = {(row.worker, row.step): row.version for row in r.steps.itertuples()}
    w0 = wl.init_params()
    grads = {}
    last = max(p for _, p in version)
    for p in range(last + 1):
        for v in range(n):
            if (v, p) not in version:
                continue
            held = version[v, p]
            used = [g for (u, q), g in grads.items() if q // nm < held]
            used += [grads[v, q] for q in range(p - nm + 1) if q // nm >= held]
            w = w0 - lr * s * sum(used) if used else w0
            grads[v, p] = grad_at(wl, w, wl.batch_indices(v, p))
    applied = r.summary["global_steps"]
    final = w0 - lr * s * sum(g for (u, q), g in grads.items() if q // nm < applied)
    assert torch.allclose(r.params, final, atol=1e-12, rtol=0)
    assert (r.steps["step"] - r.steps["version"] * nm).max() > nm - 1  # some minibatch ran on lagged weights


# -- the pipeline's timing ----------------------------------------------------------------------------
# No communication: zero latency, a near-infinite line rate, no server CPU; four equal layers (32 -> 32).
NO_COMM = dict(network="rdma_100g", network__bandwidth_gbps=1e6, network__latency_us=0, network__hop_latency_us=0,
               intra="pcie3", intra__bandwidth_gbps=1e6, intra__latency_us=0, cluster__aggregation_ns_per_byte=0,
               workload__hidden=[32, 32, 32], workload__classes=32, cluster__workers=1, cluster__compute="ideal",
               policy__max_wave_lag=1000, train__numerics=False)


@pytest.mark.parametrize("k,nm", [(2, 1), (4, 1), (2, 2), (4, 4), (2, 4), (1, 3)])
def test_k_equal_stages_take_the_closed_form_pipeline_time(k, nm):
    """k equal stages of forward f and backward b = 2f, nothing communicated. Nm = 1: each minibatch goes
    through alone, so minibatch p ends at (p + 1) k (f + b). Nm >= k: the pipeline fills once and then
    ends a minibatch every f + b (each GPU alternates one forward and one backward), so minibatch p ends
    at (p + k)(f + b): the fill formula (N + k - 1)(f + b) for N minibatches."""
    r = hetpipe(**NO_COMM, cluster__gpus_per_worker=k, cluster__gpus_per_machine=k, policy__minibatches=nm,
                train__steps=6)
    from pssim.simulation import Simulation

    sim = Simulation(r.config, progress=False)
    stage_s = [st.compute_s for st in sim.ctx.workers[0].stages]
    assert max(stage_s) == pytest.approx(min(stage_s), rel=1e-12)  # equal stages, as built
    cycle = stage_s[0]  # f + b
    ends = r.steps.sort_values("step")["compute_end"].to_numpy()
    for p, end in enumerate(ends):
        expected = (p + 1) * k * cycle if nm == 1 else (p + k) * cycle
        assert end == pytest.approx(expected, rel=1e-5), f"minibatch {p}"  # a message takes ~1e-10 s


# -- stage partitioning -------------------------------------------------------------------------------
def test_partition_balances_an_exact_case_by_each_gpus_layer_times():
    """Six unit layers; the second GPU is twice as slow. The slowest stage is least with 4 layers on the
    fast GPU and 2 on the slow one (4 and 4); 3 and 3 would give 6."""
    fast_gpu, slow_gpu = [1.0] * 6, [2.0] * 6
    assert balance([fast_gpu, slow_gpu], [0, 0], [1] * 6, [100, 100]) == (range(0, 4), range(4, 6))
    # Memory: the fast GPU holds 3 layers at most, so 3 and 3 (the slow stage takes 6) is the best that fits.
    assert balance([fast_gpu, slow_gpu], [0, 0], [1] * 6, [3.5, 100]) == (range(0, 3), range(3, 6))
    # A fixed overhead on the fast GPU moves a layer: 1.5 + 3 vs 2 x 3 -> (3, 3) is 6; (4, 2): 5.5 vs 4 -> 5.5.
    assert balance([fast_gpu, slow_gpu], [1.5, 0], [1] * 6, [100, 100]) == (range(0, 4), range(4, 6))
    with pytest.raises(NoFit) as err:
        balance([fast_gpu, slow_gpu], [0, 0], [1] * 6, [100, 0.5])
    assert err.value.stage == 1


@pytest.mark.parametrize("seed", range(8))
def test_partition_is_the_best_cut_that_fits(seed):
    """Against an exhaustive search over every cut, on random layer times and memory (some draws fit no
    cut at all: then it must refuse)."""
    g = torch.Generator().manual_seed(seed)
    n, k = 8, 3
    times = (torch.rand(k, n, generator=g) + 0.1).tolist()
    memory = (torch.rand(n, generator=g) + 0.1).tolist()
    capacity = [1.6, 2.5, 1.6]
    best = None
    for cuts in itertools.combinations(range(1, n), k - 1):
        bounds = (0, *cuts, n)
        if any(sum(memory[a:b]) > capacity[s] for s, (a, b) in enumerate(zip(bounds, bounds[1:]))):
            continue
        worst = max(sum(times[s][a:b]) for s, (a, b) in enumerate(zip(bounds, bounds[1:])))
        best = worst if best is None else min(best, worst)
    if best is None:  # no cut fits: refused
        with pytest.raises(NoFit):
            balance(times, [0] * k, memory, capacity)
        return
    stages = balance(times, [0] * k, memory, capacity)
    assert max(sum(times[s][st.start:st.stop]) for s, st in enumerate(stages)) == pytest.approx(best, rel=1e-12)
    assert all(sum(memory[st.start:st.stop]) <= capacity[s] for s, st in enumerate(stages))


def test_resnet152_stages_of_an_ed_worker_are_balanced_and_fit():
    """ED on HetPipe's cluster: each VW is TITAN V, TITAN RTX, RTX 2060, Quadro P4000. ResNet-152's 156
    layers are fine-grained, so the stages' times are within the slowest GPU's largest layer of each
    other (stated tolerance), and each stage fits its GPU."""
    cfg = to_config(policy="hetpipe", cluster="hetpipe_4x4", profile="resnet152", **{"policy.allocation": "ed",
                                                                                        "train.numerics": False})
    from pssim.simulation import Simulation

    sim = Simulation(cfg, progress=False)
    for w in sim.ctx.workers:
        times = [st.compute_s for st in w.stages]
        assert [st.device.name for st in w.stages] == ["titan_v", "titan_rtx", "rtx2060", "quadro_p4000"]
        assert max(times) - min(times) <= max(max_layer(sim, st) for st in w.stages)
        for st in w.stages:
            params = sum(sim.ctx.workload.profile.layers[i].params for i in st.layers)
            assert params * 12 < st.device.memory_gb * 1e9


def max_layer(sim, stage):
    from pssim.cluster.compute import step_compute

    c = sim.config
    t = step_compute(stage.device, sim.ctx.workload.profile, c.cluster.precision, c.train.batch_size, c.cluster.compute,
                     c.profile.name)
    return max(t.layer_s[i] for i in stage.layers)


def test_no_partition_that_fits_names_the_gpu():
    """VGG-19 with batch 32 and 4 minibatches in flight on a lone 6 GB RTX 2060: its activations alone
    (about 58 MB a sample) exceed the memory, so the error names the GPU, its type and the key."""
    with pytest.raises(ConfigError, match=r"policy.minibatches=4 .*worker0 \(rtx2060, 6 GB\)"):
        simulate(policy="hetpipe", profile="vgg19", **{"cluster.workers": 1, "cluster.device": "rtx2060",
                                                        "train.numerics": False, "output.progress": False})


# -- allocation policies ------------------------------------------------------------------------------
def test_np_ed_hd_form_the_papers_virtual_workers():
    """Node partition: a node each. Equal distribution: one GPU of each type. Hybrid: the fastest type
    (TITAN RTX, 16.3 TFLOP/s) with the slowest (P4000, 5.3), TITAN V (14.9) with RTX 2060 (6.5), two each."""
    speed = lambda d: DEVICES[d].peak_fp32  # noqa: E731
    assert allocate("np", HETPIPE_GPUS, 4, speed) == ((0, 1, 2, 3), (4, 5, 6, 7), (8, 9, 10, 11), (12, 13, 14, 15))
    assert allocate("ed", HETPIPE_GPUS, 4, speed) == ((0, 4, 8, 12), (1, 5, 9, 13), (2, 6, 10, 14), (3, 7, 11, 15))
    assert allocate("hd", HETPIPE_GPUS, 4, speed) == ((4, 5, 12, 13), (6, 7, 14, 15), (0, 1, 8, 9), (2, 3, 10, 11))


def test_an_allocation_that_cannot_be_formed_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"^policy.allocation='ed' is invalid: ed gives every virtual worker"):
        simulate(policy="hetpipe", cluster="hetpipe_4x4", **{"policy.allocation": "ed", "cluster.workers": 8,
                                                              "cluster.gpus_per_worker": 2, "train.numerics": False})
    with pytest.raises(ConfigError, match=r"policy.allocation='mixed' is invalid: allowed values are ed, hd, np"):
        to_config(policy="hetpipe", **{"policy.allocation": "mixed"})
    with pytest.raises(ConfigError, match=r"cluster.gpu_devices=.* one device per GPU"):
        to_config(**{"cluster.gpu_devices": ["v100"] * 3})
    with pytest.raises(ConfigError, match=r"cluster.gpu_devices\[1\]"):
        to_config(**{"cluster.workers": 2, "cluster.gpu_devices": ["v100", "v1000"]})


def test_the_4x4_preset_runs_every_allocation_with_real_numerics():
    for allocation in ("np", "ed", "hd"):
        r = simulate(policy="hetpipe", cluster="hetpipe_4x4", **{"policy.allocation": allocation, "train.steps": 3,
                                                                  "eval.every": 3, "output.progress": False})
        assert r.summary["status"] == "completed" and r.evals["loss"].iloc[-1] < r.evals["loss"].iloc[0]
        assert r.config.network.name == "ib_fdr_56g" and r.config.intra.name == "pcie3"


def test_horovod_over_the_same_gpus_runs_at_the_slowest_gpus_pace():
    """The baseline: all-reduce over the 16 GPUs, one replica each. Every step waits for the slowest GPU,
    so the heterogeneous cluster steps exactly as fast as 16 Quadro P4000s (the all-reduce is hidden
    behind their compute either way) and slower than 16 TITAN RTXs."""
    def seconds(**cluster):
        return simulate(policy="allreduce", cluster="hetpipe_4x4", profile="resnet152", **{
            "cluster.workers": 16, "cluster.gpus_per_worker": 1, "cluster.servers": 1, "train.steps": 3,
            "train.numerics": False, "output.progress": False, **cluster}).summary["sim_time_s"]

    mixed = seconds()
    assert mixed == pytest.approx(seconds(**{"cluster.gpu_devices": ["quadro_p4000"] * 16}), rel=1e-9)
    assert mixed > 2 * seconds(**{"cluster.gpu_devices": ["titan_rtx"] * 16})


@pytest.mark.parametrize("allocation", ["ed", "hd"])
def test_conformance_on_the_4x4_cluster_with_gpus_spread_over_nodes(allocation):
    """The conformance rules with VWs whose stages sit in different nodes (hosts from the run's layout)."""
    from pssim.testing import check_policy

    check_policy("hetpipe", cluster="hetpipe_4x4", **{"policy.allocation": allocation, "policy.max_wave_lag": 1,
                                                       "train.steps": 6, "eval.every": 3})
