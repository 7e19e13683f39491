"""Data-parallel replicas that span several GPUs (pipeline stages): layout, compute time, numerics."""

import numpy as np
import pytest
import torch

from pssim import simulate, to_config
from pssim.cluster import DEVICES
from pssim.cluster.layout import Layout
from pssim.simulation import Simulation
from pssim.workload.profiles import resnet50
from conftest import fast


def replica_run(gpus_per_machine: int, **overrides):
    """Sync, two workers of two GPUs each, ResNet-50's timing, no stragglers. The flat compute model
    (cluster.compute=ideal) keeps the stage times a closed form: these tests check the pipeline's
    transfers and straggler scaling (tests/test_compute.py checks the calibrated stage times)."""
    return simulate(**fast(profile="resnet50", train__steps=4, cluster__workers=2, cluster__servers=1,
                           cluster__gpus_per_worker=2, cluster__gpus_per_machine=gpus_per_machine,
                           cluster__compute="ideal", **overrides))


def expected_compute(cfg, transport, hops: int, factor: float = 1.0) -> float:
    """Stage times (each its device's overhead plus its FLOPs at the effective rate) times the straggler
    factor, plus the activations forward and their gradients back: each one message over `hops` links."""
    device, profile, batch = DEVICES[cfg.cluster.device], resnet50(), cfg.train.batch_size
    first, second = profile.stages(2)
    stage = [device.overhead_s + 6 * sum(profile.layers[i].macs for i in s) * batch
             / (device.peak_fp32 * device.efficiency_fp32) for s in (first, second)]
    activations = batch * profile.layers[first[-1]].activation_bytes
    rate = min(transport.bandwidth_gbps * transport.efficiency, transport.flow_cap_gbps or np.inf) / 8 * 1e9
    transfer = hops * transport.hop_latency_us * 1e-6 + transport.latency_us * 1e-6 + activations / rate
    return factor * sum(stage) + 2 * transfer


def compute_times(result, worker=None):
    steps = result.steps if worker is None else result.steps[result.steps["worker"] == worker]
    return (steps["compute_end"] - steps["compute_start"]).to_numpy()


def test_two_stages_on_one_machine_pay_their_times_plus_two_nvlink_transfers():
    result = replica_run(gpus_per_machine=2)
    cfg = result.config
    assert cfg.intra.name == "nvlink"
    # GPU -> machine -> GPU: two intra-node links
    assert np.allclose(compute_times(result), expected_compute(cfg, cfg.intra, hops=2), rtol=1e-12)


def test_two_stages_on_two_machines_pay_two_network_transfers():
    result = replica_run(gpus_per_machine=1)
    cfg = result.config
    # stage 0's machine -> switch -> stage 1's machine: two NIC links of the network preset
    assert np.allclose(compute_times(result), expected_compute(cfg, cfg.network, hops=2), rtol=1e-12)


def test_the_activation_bytes_cross_the_stage_links_both_ways():
    result = replica_run(gpus_per_machine=1)
    profile, batch = resnet50(), result.config.train.batch_size
    activations = batch * profile.layers[profile.stages(2)[0][-1]].activation_bytes
    links = result.links.set_index(["src", "dst"])["bytes"]
    steps = len(result.steps[result.steps["worker"] == 0])  # every step computed (its transfers done)
    assert links["worker0.stage1", "switch"] == activations * steps  # only gradients of activations
    assert links["switch", "worker0.stage1"] == activations * steps  # only activations


def test_a_straggler_scales_the_stages_not_the_transfers():
    result = replica_run(gpus_per_machine=2, stragglers="slow_worker",
                         **{"stragglers.worker": 1, "stragglers.factor": 3.0})
    cfg = result.config
    assert np.allclose(compute_times(result, 0), expected_compute(cfg, cfg.intra, 2), rtol=1e-12)
    assert np.allclose(compute_times(result, 1), expected_compute(cfg, cfg.intra, 2, factor=3.0), rtol=1e-12)


def test_workers_times_stages_gpus_appear_in_the_layout():
    layout = Layout.build(workers=3, gpus_per_machine=2, cpu_machines=0, servers=1, gpus_per_worker=2)
    assert layout.gpus == tuple(f"machine{j}.gpu{l}" for j in range(3) for l in range(2))
    assert layout.machines == ("machine0", "machine1", "machine2") and layout.workers == 3
    assert layout.stage_hosts(1) == ("machine1.gpu0", "machine1.gpu1")
    assert layout.hosts == ("machine0.gpu0", "machine1.gpu0", "machine2.gpu0")
    # three stages on machines of two GPUs: a replica continues on the next machine
    three = Layout.build(workers=2, gpus_per_machine=2, cpu_machines=0, servers=0, gpus_per_worker=3)
    assert three.stage_hosts(1) == ("machine1.gpu1", "machine2.gpu0", "machine2.gpu1")
    assert [three.machine_of(w) for w in range(2)] == [0, 1]
    assert [list(three.local_workers(m)) for m in range(3)] == [[0], [1], []]
    lone = Layout.build(workers=2, gpus_per_machine=1, cpu_machines=0, servers=1, gpus_per_worker=2)
    assert lone.gpus == lone.machines == ("worker0.stage0", "worker0.stage1", "worker1.stage0", "worker1.stage1")


def test_one_gpu_per_worker_keeps_todays_layout():
    for g in (1, 2, 4):
        layout = Layout.build(workers=8, gpus_per_machine=g, cpu_machines=1, servers=2)
        assert layout.hosts == layout.gpus and layout.workers == 8
        assert [list(layout.local_workers(m)) for m in range(len(layout.machines))] == \
            [list(range(m * g, (m + 1) * g)) for m in range(8 // g)]
    assert Layout.build(2, 1, 0, 1).gpus == ("worker0", "worker1")
    assert Layout.build(4, 2, 0, 1).gpus == ("machine0.gpu0", "machine0.gpu1", "machine1.gpu0", "machine1.gpu1")


def test_a_run_puts_every_stage_gpu_on_the_network():
    result = replica_run(gpus_per_machine=2)
    gpus = {f"machine{j}.gpu{l}" for j in range(2) for l in range(2)}
    assert gpus <= set(result.links["src"]) and gpus <= set(result.links["dst"])


def test_workers_hold_their_stages_shard_parameters_and_clock():
    cfg = to_config(**fast(train__steps=3, cluster__workers=2, cluster__gpus_per_worker=2,
                           cluster__gpus_per_machine=2, cluster__worker_devices=["v100", "t4"]))
    sim = Simulation(cfg, record_params=True, progress=False)
    w0, w1 = sim.ctx.workers
    assert [s.host for s in w1.stages] == ["machine1.gpu0", "machine1.gpu1"] and w1.host == "machine1.gpu0"
    assert [s.device.name for s in w1.stages] == ["t4", "t4"]  # a worker's device serves all its stages
    assert [s.layers for s in w0.stages] == list(sim.ctx.workload.profile.stages(2))
    assert np.array_equal(w1.shard, sim.ctx.workload.shards[1])
    assert w0.optimizer_state is None and w0.clock == 0 and w0.version == 0
    assert torch.equal(w0.params, sim.ctx.initial_params)
    sim.run()
    for w in sim.ctx.workers:
        finished = [r for r in sim.ctx.recorder.steps if r.worker == w.index and not np.isnan(r.comm_end)]
        assert w.clock == len(finished) == 2  # the run stopped during the third step's pull
        assert w.version == w.clock  # sync: after finishing step t it pulled version t + 1
        assert torch.equal(w.params, sim.param_history[w.version])


def test_one_gpu_workers_have_one_stage_of_every_layer():
    sim = Simulation(to_config(**fast(profile="resnet50")), progress=False)
    (stage,) = sim.ctx.workers[0].stages
    assert stage.layers == range(len(resnet50().layers)) and stage.host == sim.ctx.workers[0].host


@pytest.mark.parametrize("policy", ["sync", "async"])
def test_stages_change_time_never_the_math(policy):
    one = simulate(**fast(train__steps=8, cluster__workers=2), policy=policy, record_params=True)
    two = simulate(**fast(train__steps=8, cluster__workers=2, cluster__gpus_per_worker=2), policy=policy,
                   record_params=True)
    if policy == "sync":
        assert torch.equal(one.params, two.params)
        assert all(torch.equal(a, b) for a, b in zip(one.param_history, two.param_history))
    assert two.summary["sim_time_s"] > one.summary["sim_time_s"]  # the activations cross NICs
    assert list(two.evals["step"]) == list(one.evals["step"])


def test_a_pull_leaves_the_worker_holding_what_it_pulled():
    sim = Simulation(to_config(**fast(**{"cluster.servers": 2})), progress=False)
    ctx, (w, _) = sim.ctx, sim.ctx.workers[:2]
    for shard in ctx.servers.shards:
        ctx.servers.apply(shard, torch.ones(shard.hi - shard.lo, dtype=sim.params.dtype))
    ctx.env.process(ctx.servers.pull(w, min_version=1))
    ctx.env.run()
    assert w.version == 1 and torch.equal(w.params, sim.params)
    assert not torch.equal(w.params, ctx.initial_params)
