"""Fair budgets: equal samples across policies, evaluations every so many samples, and the exact
simulated time a target loss is first reached."""

import pytest

from pssim import simulate
from conftest import fast


@pytest.mark.parametrize("policy", ["sync", "async", "allreduce"])
def test_a_sample_budget_runs_the_same_samples_under_every_policy(policy):
    """4 workers x batch 32: BSP folds 128 samples per global step, ASP 32; 3,840 samples is 30 BSP
    rounds or 120 ASP updates."""
    r = simulate(**fast(policy=policy, cluster__workers=4, train__samples=3840, train__numerics=False))
    per_step = 128 if policy in ("sync", "allreduce") else 32
    assert r.summary["samples"] == 3840
    assert r.summary["global_steps"] == 3840 // per_step


def test_a_budget_that_is_not_a_whole_step_rounds_up():
    r = simulate(**fast(cluster__workers=4, train__samples=1000, train__numerics=False))
    assert r.summary["global_steps"] == 8 and r.summary["samples"] == 1024  # ceil(1000 / 128) rounds


def test_evaluations_every_so_many_samples_come_equally_often_for_sync_and_async():
    common = dict(cluster__workers=4, train__samples=5120, eval__every_samples=1280)
    sync = simulate(**fast(**common)).evals
    asp = simulate(**fast(policy="async", **common)).evals
    assert list(sync["step"]) == [0, 10, 20, 30, 40]  # 1280 samples = 10 rounds of 128
    assert list(asp["step"]) == [0, 40, 80, 120, 160]  # = 40 updates of 32


@pytest.mark.parametrize("policy", ["sync", "async"])
def test_time_to_target_is_the_exact_step_that_crossed_it(policy):
    """Evaluated after every step (eval.every=1), the first crossing is read off the evals table; a
    run evaluating only every 20 steps must report the same step and simulated time."""
    common = fast(policy=policy, cluster__workers=4, train__steps=60, train__target_loss=1.6, train__lr=0.025)
    dense = simulate(**{**common, "eval.every": 1})
    crossing = dense.evals[dense.evals["loss"] <= 1.6].iloc[0]
    sparse = simulate(**{**common, "eval.every": 20})
    assert sparse.summary["steps_to_target"] == crossing["step"] and crossing["step"] % 20 != 0
    assert sparse.summary["time_to_target_s"] == crossing["sim_time_s"]
    per_step = 128 if policy == "sync" else 32
    assert sparse.summary["samples_to_target"] == crossing["step"] * per_step
    # The crossing step has a row in the evals table besides the every-20 schedule.
    assert list(sparse.evals["step"]) == sorted({0, 20, 40, 60, int(crossing["step"])})


def test_a_target_never_reached_reports_none():
    r = simulate(**fast(train__steps=5, train__target_loss=1e-6))
    assert r.summary["time_to_target_s"] is None and r.summary["steps_to_target"] is None
