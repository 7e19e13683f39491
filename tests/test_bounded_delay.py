"""Bounded delay (OSDI'14): tau=0 is sequential SGD, the delay bound recomputed from the steps table,
tau=null is ASP, staleness at most 2 tau."""

from functools import lru_cache

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from pssim import ConfigError, simulate, to_config
from conftest import fast, flatten_torch, torch_mlp, workload_for
from test_fixes import clock_leads

# Six workers so that a bound of tau <= 4 (at most tau + 1 tasks in flight) holds somebody back.
STRAGGLING = dict(cluster__workers=6, train__steps=150, stragglers="exponential", stragglers__mean_s=0.002,
                  train__numerics=False)

TWO_TIER = dict(cluster__workers=6, cluster__gpus_per_machine=2, cluster__cpu_machines=1, cluster__servers=3,
                topology="two_tier", topology__hosts_per_rack=2, train__steps=150, stragglers="exponential",
                stragglers__mean_s=0.002, train__numerics=False)


@lru_cache(maxsize=None)
def run(policy: str, tau=None, **extra):
    more = {} if policy == "async" else {"policy.max_delay": tau}
    return simulate(**fast(policy=policy, **{**STRAGGLING, **extra}), **more)


def violations(steps: pd.DataFrame, tau: int) -> int:
    """Pairs (t, u) where task u started before task t - tau but had not finished when t started.

    Tasks are ranked by compute_start. Where start times tie the order within the tie is not in the
    table, so u counts only if it is surely among the first (rank of t) - tau tasks: the tasks that
    started no later than u are at most as many as the tasks that started strictly before t, minus tau.
    Without ties that is exactly "u's rank < t's rank - tau". A task finishes at its push_end (every
    shard has applied its gradient).
    """
    start, end = steps["compute_start"].to_numpy(), steps["push_end"].to_numpy()
    before = (start[None, :] < start[:, None]).sum(axis=1)  # tasks that started strictly before each one
    upto = (start[None, :] <= start[:, None]).sum(axis=1)  # tasks that started no later than each one
    bad = 0
    for t in range(len(start)):
        required = upto <= before[t] - tau
        bad += int((~(end[required] <= start[t])).sum())  # an unfinished one has push_end NaN: a violation
    return bad


def tight_cases(steps: pd.DataFrame, tau: int) -> int:
    """Tasks t (no ties among tasks t - tau .. t) that started while task t - tau had not finished:
    the gate lets a task run exactly tau ahead, not less."""
    d = steps.sort_values("compute_start", kind="stable")
    start, end = d["compute_start"].to_numpy(), d["push_end"].to_numpy()
    return sum(1 for t in range(tau, len(d))
               if len(set(start[t - tau:t + 1])) == tau + 1 and not end[t - tau] <= start[t])


def most_in_flight(steps: pd.DataFrame) -> int:
    """The most tasks started and not yet finished at any moment (it only grows when a task starts)."""
    start, end = steps["compute_start"].to_numpy(), steps["push_end"].to_numpy()
    return max(int(((start <= s) & ~(end <= s)).sum()) for s in start)


# -- tau = 0: sequential SGD -------------------------------------------------------------------------
@pytest.mark.parametrize("scale", ["mean", "sum"])
def test_tau_zero_is_sequential_sgd_over_the_workers_in_turn(scale):
    """tau=0: each task waits for the one before it. Worker 0 takes task 0; at time 0 the others take
    tasks 1..n-1 and wait; a worker takes its next task right after its push, behind those already
    waiting, so the tasks go round robin: task t is worker t mod n's batch t div n, each computed on
    the parameters after task t-1. A plain torch SGD loop over those batches (lr/n for mean, the
    momentum buffer n times a 1/n-scaled one, weight decay scaled with the gradient) is the reference."""
    n, tasks = 3, 12
    result = simulate(record_params=True, **fast(
        policy="bounded_delay", policy__max_delay=0, policy__gradient_scale=scale, cluster__workers=n,
        cluster__servers=2, train__steps=tasks, train__momentum=0.9, train__weight_decay=1e-3,
        workload__dtype="float64", stragglers="exponential", stragglers__mean_s=2e-4))
    steps = result.steps.sort_values("compute_start")
    assert [(r.worker, r.step) for r in steps.itertuples()] == [(t % n, t // n) for t in range(tasks)]
    assert (steps["push_end"].to_numpy()[:-1] <= steps["compute_start"].to_numpy()[1:]).all()  # one at a time
    assert (steps["staleness"] == 0).all()

    cfg = result.config
    wl = workload_for(cfg)
    model = torch_mlp(wl.init_params(), wl.model.widths)
    lr = cfg.train.lr / n if scale == "mean" else cfg.train.lr
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-3)
    reference = [flatten_torch(model).clone()]
    for t in range(tasks):
        idx = torch.as_tensor(wl.batch_indices(t % n, t // n))
        opt.zero_grad()
        F.cross_entropy(model(wl.data.x_train[idx]), wl.data.y_train[idx]).backward()
        opt.step()
        reference.append(flatten_torch(model).clone())
    assert len(result.param_history) == tasks + 1
    for t, (ours, theirs) in enumerate(zip(result.param_history, reference)):
        assert torch.allclose(ours, theirs, atol=1e-10, rtol=0), f"diverged at task {t}"
    assert not torch.allclose(reference[0], reference[-1], atol=1e-3)  # it trained


# -- the bound on the steps table --------------------------------------------------------------------
@pytest.mark.parametrize("tau", [0, 1, 2, 4])
def test_the_delay_bound_holds_binds_and_asp_breaks_it(tau):
    steps = run("bounded_delay", tau).steps
    assert len(steps) >= 150
    assert violations(steps, tau) == 0
    # It binds: at most tau + 1 tasks are ever in flight (t's start sees only tasks t - tau .. t
    # unfinished), fewer than the 6 workers, so workers waited; and a task does run tau ahead.
    assert most_in_flight(steps) == tau + 1
    if tau > 0:
        assert tight_cases(steps, tau) > 0
    # clock_lead is recorded as under ASP: the worker's clock minus the slowest worker's.
    assert list(steps["clock_lead"]) == clock_leads(steps)
    # Without the gate (ASP, same cluster and seed) the bound is broken and all 6 run at once.
    asp = run("async").steps
    assert violations(asp, tau) > 0 and most_in_flight(asp) == 6


def test_tasks_start_in_number_order_when_pulls_of_different_lengths_would_reorder_them():
    """Two-tier network, racks of two machines: a pull crosses the spine or not, so two workers let
    through together may finish their pulls in the other order; the later-numbered waits for the
    earlier to start, and the bound still holds on the start order."""
    steps = run("bounded_delay", 4, **{**TWO_TIER, "train__steps": 300}).steps
    assert violations(steps, 4) == 0 and most_in_flight(steps) == 5


# -- tau = null: ASP ---------------------------------------------------------------------------------
@pytest.mark.parametrize("tau,shape", [(None, "star"), (10**6, "star"), (None, "two_tier")])
def test_no_bound_is_asp(tau, shape):
    """null never waits and keeps no start order: the same events as async, so the same tables, summary
    and parameters (also on two tiers, where pulls differ in length). A tau no task reaches does the
    same on this cluster (its gate is always open)."""
    common = fast(cluster__workers=4, cluster__servers=2, train__steps=40, stragglers="exponential",
                  stragglers__mean_s=2e-4) if shape == "star" else fast(**TWO_TIER)
    asp = simulate(record_params=True, **common, policy="async")
    bd = simulate(record_params=True, **common, policy="bounded_delay", **{"policy.max_delay": tau})
    assert asp.steps["staleness"].max() > 0  # really asynchronous
    for table in ("steps", "evals", "links"):
        pd.testing.assert_frame_equal(getattr(asp, table), getattr(bd, table), check_exact=True)
    drop = lambda s: {k: v for k, v in s.items() if k not in ("wall_s", "policy")}  # noqa: E731
    assert drop(asp.summary) == drop(bd.summary)
    if shape == "star":
        assert all(torch.equal(a, b) for a, b in zip(asp.param_history, bd.param_history))


# -- staleness -----------------------------------------------------------------------------------------
def test_staleness_is_at_most_two_tau_and_grows_with_tau():
    """Task t pulls after every task below t - tau has finished, and no task above t + tau can start
    before t finishes, so between its pull and its apply only tasks t - tau .. t + tau (not t) can
    land: staleness <= 2 tau. With these stragglers the bound is reached; mean staleness grows with
    tau, up to ASP's."""
    means = []
    for tau in (0, 1, 2, 4):
        staleness = run("bounded_delay", tau).steps["staleness"]
        assert staleness.max() == 2 * tau
        means.append(staleness.mean())
    asp = run("async").steps["staleness"]
    means.append(asp.mean())
    assert means[0] == 0 and np.all(np.diff(means) > 0), means
    assert asp.max() > 2 * 4


# -- configuration -------------------------------------------------------------------------------------
def test_max_delay_is_a_count_or_null():
    assert to_config(["+policy=bounded_delay"]).policy.max_delay == 4
    assert to_config(["+policy=bounded_delay", "policy.max_delay=null"]).policy.max_delay is None
    assert to_config(["+policy=bounded_delay", "policy.max_delay=0"]).policy.max_delay == 0
    with pytest.raises(ConfigError, match=r"policy\.max_delay=-1 is invalid.*null"):
        to_config(["+policy=bounded_delay", "policy.max_delay=-1"])
    with pytest.raises(ConfigError, match=r"policy\.max_delay"):
        to_config(["+policy=bounded_delay", "policy.max_delay=2.5"])


@pytest.mark.parametrize("for_s", [0.002, None])
def test_a_crashed_workers_task_is_abandoned_so_the_others_go_on(for_s):
    """tau=1 with 4 workers: without abandoning the crashed worker's task, every other worker would wait
    at the bound for it forever (the run would stall). With it, the run reaches train.steps; the crashed
    worker computes nothing while it is down, and after a restart it goes on with its own step count."""
    event = {"at_s": 0.001, "kind": "worker_crash", "target": "0", "for_s": for_s}
    r = simulate(**fast(policy="bounded_delay", policy__max_delay=1, cluster__workers=4, train__steps=80,
                        train__numerics=False, faults="scheduled", faults__events=[event]))
    assert r.summary["status"] == "completed" and r.summary["global_steps"] == 80
    mine = r.steps[r.steps["worker"] == 0]
    down_until = 0.001 + (for_s if for_s is not None else float("inf"))
    assert not ((mine["compute_start"] > 0.001) & (mine["compute_start"] < down_until)).any()
    if for_s is not None:
        assert (mine["compute_start"] >= down_until).any()  # it came back
        assert list(mine["step"]) == list(range(len(mine)))  # and its own step count went on
    else:
        assert mine["compute_start"].max() < 0.001
