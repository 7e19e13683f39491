"""ASP and SSP: sequential-SGD equivalence, the staleness of a symmetric schedule, the SSP clock bound."""

import pytest
import torch

from pssim import simulate
from conftest import fast
from test_sync import plain_sgd_trajectory



@pytest.mark.parametrize("scale", ["mean", "sum"])
def test_asp_with_one_worker_is_sequential_sgd(scale):
    result = simulate(record_params=True, **fast(policy="async", policy__gradient_scale=scale,
                                                 cluster__workers=1, cluster__servers=2, train__steps=10,
                                                 workload__dtype="float64"))
    reference = plain_sgd_trajectory(result.config, lambda wl, t: wl.batch_indices(0, t), 10)
    for t, (ours, theirs) in enumerate(zip(result.param_history, reference)):
        assert torch.allclose(ours, theirs, atol=1e-6, rtol=0), f"diverged at step {t}"
    assert (result.steps["staleness"] == 0).all()


@pytest.mark.parametrize("n", [2, 4, 7])
@pytest.mark.parametrize("aggregation_ns", [0.0, 5.0])
def test_asp_symmetric_workers_have_mean_staleness_half_n_minus_one(n, aggregation_ns):
    """Equal workers, no stragglers: every round all n gradients reach the (FIFO) server together.

    It applies them one after another, so they miss 0, 1, ..., n-1 updates. The pull requests queue
    behind the pushes already waiting, so every worker then reads version k*n and the next round
    starts in step again. Mean staleness is exactly (n-1)/2, maximum n-1.
    """
    result = simulate(**fast(policy="async", cluster__workers=n, train__steps=6 * n,
                             cluster__aggregation_ns_per_byte=aggregation_ns, network="rdma_100g"))
    steps = result.steps
    assert len(steps) >= 5 * n
    assert steps["staleness"].mean() == pytest.approx((n - 1) / 2, abs=1e-12)
    assert steps["staleness"].max() == n - 1
    assert sorted(steps.groupby("step")["staleness"].apply(sorted).iloc[0]) == list(range(n))


@pytest.mark.claims
@pytest.mark.parametrize("s", [0, 1, 3])
def test_ssp_clock_gap_never_exceeds_staleness(s):
    """Whenever a worker starts computing clock c, every worker has already had >= c - s gradients applied."""
    result = simulate(**fast(policy="ssp", policy__staleness=s, cluster__workers=5, train__steps=150,
                             stragglers="exponential", stragglers__mean_s=0.002, train__numerics=False))
    steps = result.steps
    applied = {w: sorted(g["push_end"]) for w, g in steps.groupby("worker")}
    for row in steps.itertuples():
        for w, times in applied.items():
            done = sum(t <= row.compute_start for t in times)
            assert row.step - done <= s, (row.worker, row.step, w, done)
    # The bound binds: with these stragglers someone does run s clocks ahead of the slowest.
    gaps = [row.step - min(sum(t <= row.compute_start for t in times) for times in applied.values())
            for row in steps.itertuples()]
    assert max(gaps) == s


def test_ssp_without_the_gate_would_break_the_bound():
    """ASP on the same cluster drifts further than s=1 allows: the bound above is the gate's doing."""
    result = simulate(**fast(policy="async", cluster__workers=5, train__steps=150,
                             stragglers="exponential", stragglers__mean_s=0.002, train__numerics=False))
    steps = result.steps
    applied = {w: sorted(g["push_end"]) for w, g in steps.groupby("worker")}
    gaps = [row.step - min(sum(t <= row.compute_start for t in times) for times in applied.values())
            for row in steps.itertuples()]
    assert max(gaps) > 1


@pytest.mark.claims
def test_ssp_staleness_zero_follows_bsp_trajectory():
    """s=0 with additive updates (no momentum, no weight decay) applies exactly BSP's mean step per round.

    SSP under policy.gradient_scale=mean applies each gradient scaled by 1/n as it arrives; after a round's n gradients the model has
    moved by lr * mean(g), as BSP's one step does. (Momentum would advance n times per round under SSP
    and once under BSP, so the two differ by design there.)
    """
    n = 4
    common = fast(cluster__workers=n, cluster__servers=2, train__steps=10, train__momentum=0.0,
                  workload__dtype="float64", stragglers="exponential", stragglers__mean_s=1e-4)
    bsp = simulate(record_params=True, **common)
    ssp = simulate(record_params=True, **{**common, "train.steps": 10 * n, "policy": "ssp",
                                          "policy.staleness": 0, "policy.gradient_scale": "mean"})
    for t in range(11):
        assert torch.allclose(ssp.param_history[t * n], bsp.param_history[t], atol=1e-6, rtol=0), t
    assert not torch.allclose(ssp.param_history[1], bsp.param_history[1])  # rounds really are n updates
