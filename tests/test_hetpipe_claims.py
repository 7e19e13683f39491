"""HetPipe's claim (Park et al., USENIX ATC'20): on 4 nodes x 4 heterogeneous GPUs (TITAN V, TITAN RTX,
RTX 2060, Quadro P4000; 56 Gb/s InfiniBand) a model converges up to 49% faster with HetPipe than with
Horovod over the same 16 GPUs. Read as a speed-up of the time to a target, T_horovod / T_hetpipe = 1.49,
checked within 25%.

Setup: ResNet-152's timing (profile=resnet152, 32 images a minibatch), the MLP stand-in's numerics
(cluster=hetpipe_4x4 gives it a layer per stage), the same optimizer for both. HetPipe: hybrid
allocation (hd), Nm = 4, so a wave's step averages 4 VWs x 4 minibatches = 16 x 32 samples, the samples
of one Horovod step over 16 GPUs.

Horovod's time to the target without running it to the target (its 16-GPU steps are slow to simulate):
its math is BSP's (pssim/policies/replicated.py: the mean gradient applied once a step), so its steps
to the target are sync's with the same 16 workers; without stragglers its steps take a constant time
after the first, T(s) = T(10) + (s - 10)(T(20) - T(10)) / 10 (at s = 89 this gives its directly run time
to 0.75, 62.30 s, to the digit).
"""

import pytest

from pssim import simulate

BASE = {"cluster": "hetpipe_4x4", "output.progress": False, "output.trace": False, "eval.every": 1000}


@pytest.fixture(scope="module")
def horovod_seconds():
    """Horovod's simulated time after s steps on the 16 GPUs (ResNet-152, timing only)."""
    t = {s: simulate(policy="allreduce", profile="resnet152", **{
        **BASE, "cluster.workers": 16, "cluster.gpus_per_worker": 1, "cluster.servers": 1, "train.steps": s,
        "train.numerics": False}).summary["sim_time_s"] for s in (10, 20)}
    return lambda steps: t[10] + (steps - 10) * (t[20] - t[10]) / 10


def speedup(horovod_seconds, target, steps, momentum, lag):
    bsp = simulate(**{**BASE, "cluster.workers": 16, "cluster.gpus_per_worker": 1, "train.target_loss": target,
                      "train.steps": steps, "train.momentum": momentum}).summary
    hetpipe = simulate(policy="hetpipe", profile="resnet152", **{
        **BASE, "policy.allocation": "hd", "policy.minibatches": 4, "policy.max_wave_lag": lag,
        "train.target_loss": target, "train.steps": steps, "train.momentum": momentum}).summary
    assert bsp["steps_to_target"] and hetpipe["time_to_target_s"], "a run never reached the target"
    return horovod_seconds(bsp["steps_to_target"]) / hetpipe["time_to_target_s"]


@pytest.mark.claims
def test_with_plain_sgd_hetpipe_reaches_the_target_about_49_percent_faster(horovod_seconds):
    """Plain SGD for both (momentum 0), D = 1: the VWs run one wave apart, so the pipelines never drain;
    HetPipe's throughput is ~1.43x Horovod's, it needs ~14% more samples (one wave of staleness):
    pssim gives 1.25x, within 25% of 1.49x."""
    assert speedup(horovod_seconds, 0.95, 260, momentum=0.0, lag=1) == pytest.approx(1.49, rel=0.25)


@pytest.mark.claims
@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="with momentum 0.9 the MLP stand-in does not absorb a wave of staleness (D >= 1 stalls "
                   "above the target), and D = 0 drains each VW's pipeline at every wave: HetPipe is then about as "
                   "fast as Horovod (0.99x), not 1.49x (docs/MODELS.md, HetPipe)")
def test_with_momentum_hetpipe_reaches_the_target_about_49_percent_faster(horovod_seconds):
    assert speedup(horovod_seconds, 0.75, 100, momentum=0.9, lag=0) == pytest.approx(1.49, rel=0.25)
