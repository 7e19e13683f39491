"""Bounded delay with iteration tasks (policy.task=iteration, OSDI'14 Algorithm 3): iteration t is every
worker's gradient on it, summed into one update; it starts once every iteration below t - tau has
finished. tau=0 is BSP (a plain torch loop with batch n*b); with tau > 0 the steps table's versions
replay the trajectory exactly; the bound holds on the steps table; and the paper's Figure 13 claim."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pssim import ConfigError, simulate
from conftest import fast, flatten_torch, torch_mlp, workload_for

# Each iteration's update is the mean of its n gradients (policy.gradient_scale=mean): the big-batch
# SGD step the replays below compute.
ITERATIONS = dict(policy="bounded_delay", policy__task="iteration", policy__gradient_scale="mean",
                  stragglers="exponential", stragglers__mean_s=0.002)


def run(tau, **extra):
    return simulate(record_params=True, **fast(**{**ITERATIONS, **extra}), **{"policy.max_delay": tau})


def sgd_replay(cfg, versions_of, steps):
    """Single-process torch SGD where update t is the mean over workers of the gradient of worker w's
    batch t taken at the replay's own parameters after `versions_of(w, t)` updates."""
    wl = workload_for(cfg)
    model = torch_mlp(wl.init_params(), wl.model.widths)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.train.lr, momentum=cfg.train.momentum,
                          weight_decay=cfg.train.weight_decay)
    history = [flatten_torch(model).clone()]
    n = cfg.cluster.workers
    for t in range(steps):
        grads = []
        for w in range(n):
            past = torch_mlp(history[versions_of(w, t)], wl.model.widths)
            rows = torch.as_tensor(wl.batch_indices(w, t))
            loss = F.cross_entropy(past(wl.data.x_train[rows]), wl.data.y_train[rows])
            grads.append(torch.autograd.grad(loss, list(past.parameters())))
        opt.zero_grad()
        for p, *gs in zip(model.parameters(), *grads):
            p.grad = sum(gs) / n
        opt.step()
        history.append(flatten_torch(model).clone())
    return history


@pytest.mark.claims
def test_tau_zero_is_bsp_a_plain_sgd_loop_with_batch_n_times_b():
    result = run(0, cluster__workers=3, cluster__servers=2, train__batch_size=8, train__steps=10,
                 train__momentum=0.9, workload__dtype="float64")
    cfg = result.config
    reference = sgd_replay(cfg, lambda w, t: t, cfg.train.steps)  # every gradient on the newest model
    for t, (ours, theirs) in enumerate(zip(result.param_history, reference)):
        assert torch.allclose(ours, theirs, atol=1e-9, rtol=0), f"diverged at step {t}"
    assert result.steps["staleness"].max() == 0
    assert not torch.allclose(reference[0], reference[-1])


@pytest.mark.parametrize("tau", [1, 3])
def test_stale_iterations_replay_exactly_from_the_versions_in_the_steps_table(tau):
    # One shard, so the version a worker pulled is the whole model's.
    result = run(tau, cluster__workers=4, cluster__servers=1, train__batch_size=8, train__steps=16,
                 train__momentum=0.5, workload__dtype="float64")
    steps = result.steps.set_index(["worker", "step"])["version"]
    assert (steps > steps.index.get_level_values("step") - 1).sum() < len(steps)  # some gradients are stale
    reference = sgd_replay(result.config, lambda w, t: int(steps[(w, t)]), result.config.train.steps)
    for t, (ours, theirs) in enumerate(zip(result.param_history, reference)):
        assert torch.allclose(ours, theirs, atol=1e-9, rtol=0), f"diverged at step {t}"


@pytest.mark.parametrize("tau", [0, 1, 2, 4])
def test_an_iteration_starts_only_after_every_iteration_below_t_minus_tau_finished(tau):
    result = run(tau, cluster__workers=6, train__steps=60, train__numerics=False)
    steps = result.steps
    done = steps.groupby("step")["push_end"].max()  # iteration u finished when its last gradient landed
    complete = steps.groupby("step")["push_end"].count() == 6
    finished = done.where(complete, np.inf).cummax()  # every iteration <= u finished by finished[u]
    gated = steps[steps.step > tau]
    gates = finished.reindex(gated.step - tau - 1).to_numpy()
    assert (gated.compute_start.to_numpy() >= gates - 1e-12).all()
    assert steps["staleness"].max() <= tau
    assert steps["staleness"].max() == tau  # with stragglers somebody does run tau ahead


def test_a_crashed_worker_redoes_its_iteration_after_its_restart():
    events = [{"at_s": 0.01, "kind": "worker_crash", "target": "1", "for_s": 0.005}]
    result = simulate(**fast(**ITERATIONS, cluster__workers=4, train__steps=40), **{
        "policy.max_delay": 2, "faults": "scheduled", "faults.events": events})
    assert result.summary["status"] == "completed"
    assert result.summary["global_steps"] == 40
    mine = result.steps[result.steps.worker == 1]["step"]
    assert sorted(mine) == list(range(len(mine)))  # no iteration of worker 1 is missing or doubled


def test_a_worker_that_never_restarts_stalls_the_iterations_with_a_diagnosis():
    events = [{"at_s": 0.01, "kind": "worker_crash", "target": "1", "for_s": None}]
    result = simulate(**fast(**ITERATIONS, cluster__workers=4, train__steps=40), **{
        "policy.max_delay": 2, "faults": "scheduled", "faults.events": events})
    assert result.summary["status"] == "stalled"
    assert "worker 1 crashed" in result.summary["diagnosis"]
    assert "gradients of iteration" in result.summary["diagnosis"]


def test_iteration_tasks_are_checked():
    with pytest.raises(ConfigError, match="policy.task"):
        simulate(policy="bounded_delay", **{"policy.task": "round"})
    with pytest.raises(ConfigError, match="policy.task='iteration' is invalid"):
        simulate(policy="bounded_delay", **{"policy.task": "iteration", "policy.replicas": 1,
                                            "cluster.servers": 2})


# -- OSDI'14 Figure 13 ------------------------------------------------------------------------------
PAPER_HOURS = {0: 1.76, 1: 1.28, 2: 1.11, 4: 1.03, 8: 1.02, 16: 1.12}


@pytest.mark.claims
@pytest.mark.slow
def test_time_to_objective_over_the_delay_bound_is_u_shaped_as_in_osdi14_figure_13():
    """Sparse logistic regression (+experiment=osdi14_fig13): the time to a fixed held-out loss falls
    from tau=0 (BSP, everybody waits for the slowest) while the bound absorbs the stragglers' variance,
    and rises again at tau=16, where the staleness costs more updates than the waiting saved. The
    paper's minimum is at tau=8 (1.02 h; 4 is 1.03)."""
    times = {}
    for tau in PAPER_HOURS:
        s = simulate(experiment="osdi14_fig13", **{"policy.max_delay": tau, "output.progress": False,
                                                     "output.trace": False}).summary
        times[tau] = s["time_to_target_s"] if s["time_to_target_s"] is not None else float("inf")
    best = min(times, key=times.get)
    ours = {t: round(v / times[best], 2) for t, v in times.items()}
    paper = {t: round(v / min(PAPER_HOURS.values()), 2) for t, v in PAPER_HOURS.items()}
    message = f"time to objective relative to the best: pssim {ours}, OSDI'14 Figure 13 {paper}"
    taus = list(PAPER_HOURS)
    assert best not in (0, 16), message
    i = taus.index(best)
    assert all(times[a] > times[b] for a, b in zip(taus[:i], taus[1:i + 1])), message  # falls to the minimum
    assert all(times[a] < times[b] for a, b in zip(taus[i:], taus[i + 1:])), message  # rises after it
