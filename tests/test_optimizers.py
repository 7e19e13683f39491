"""Adam and RMSProp on the servers against torch.optim on a plain loop, and the asynchronous update
rules (sum, mean, staleness-aware) on hand-built schedules."""

import pytest
import torch
import torch.nn.functional as F

from pssim import simulate, to_config
from pssim.config import ConfigError
from pssim.workload.optimizer import Adam, RMSprop, SGD
from pssim.workload.state import ModelState
from conftest import fast, flatten_torch, torch_mlp, workload_for

TORCH = {
    "sgd": lambda p, t: torch.optim.SGD(p, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay),
    "adam": lambda p, t: torch.optim.Adam(p, lr=t.lr, betas=tuple(t.betas), eps=t.eps, weight_decay=t.weight_decay),
    "rmsprop": lambda p, t: torch.optim.RMSprop(p, lr=t.lr, alpha=t.alpha, eps=t.eps, momentum=t.momentum,
                                                weight_decay=t.weight_decay),
}


def plain_trajectory(cfg, workers, steps):
    """Single-process torch: nn.Linear layers, torch.optim's optimizer, the n workers' batches concatenated."""
    wl = workload_for(cfg)
    model = torch_mlp(wl.init_params(), wl.model.widths)
    opt = TORCH[cfg.train.optimizer](model.parameters(), cfg.train)
    history = [flatten_torch(model).clone()]
    for t in range(steps):
        rows = torch.as_tensor([r for w in range(workers) for r in wl.batch_indices(w, t)])
        opt.zero_grad()
        F.cross_entropy(model(wl.data.x_train[rows]), wl.data.y_train[rows]).backward()
        opt.step()
        history.append(flatten_torch(model).clone())
    return history


@pytest.mark.parametrize("policy", ["sync", "allreduce"])
@pytest.mark.parametrize("optimizer,extra", [
    ("adam", {"train.lr": 0.01, "train.weight_decay": 1e-3, "train.betas": [0.8, 0.99]}),
    ("rmsprop", {"train.lr": 0.01, "train.momentum": 0.5, "train.alpha": 0.9, "train.weight_decay": 1e-3}),
    ("rmsprop", {"train.lr": 0.01, "train.momentum": 0.0}),
])
def test_adam_and_rmsprop_equal_torch_optim_on_a_plain_loop(policy, optimizer, extra):
    """BSP with the optimizer's state sharded over 3 servers (sync) or replicated (allreduce) follows
    torch.optim's Adam / RMSprop on the concatenated batches to 1e-6 at every step."""
    workers, steps = 4, 10
    overrides = fast(cluster__workers=workers, cluster__servers=3, train__steps=steps, train__batch_size=8,
                     workload__dtype="float64", policy=policy, train__optimizer=optimizer, **extra)
    if policy == "allreduce":
        del overrides["cluster.servers"]
    result = simulate(record_params=True, **overrides)
    reference = plain_trajectory(result.config, workers, steps)
    for t, (ours, theirs) in enumerate(zip(result.param_history, reference)):
        assert torch.allclose(ours, theirs, atol=1e-6, rtol=0), f"{optimizer} diverged at step {t}"
    assert not torch.allclose(reference[0], reference[-1], atol=1e-3)


@pytest.mark.parametrize("make", [lambda: SGD(0.1, 0.9, 1e-3), lambda: Adam(0.01), lambda: RMSprop(0.01, momentum=0.9)])
def test_a_sliced_state_steps_as_the_whole_does(make):
    """Two shards' slices stepped apart equal the whole vector stepped at once (the state shards)."""
    torch.manual_seed(0)
    p0, grads = torch.randn(10, dtype=torch.float64), [torch.randn(10, dtype=torch.float64) for _ in range(5)]
    whole, parts = ModelState(p0.clone(), make()), ModelState(p0.clone(), make())
    a, b = parts.slice(0, 4), parts.slice(4, 10)
    for g in grads:
        whole.step(g)
        a.step(g[:4])
        b.step(g[4:])
    assert torch.equal(whole.params, parts.params)
    assert all(torch.equal(whole.state[k], parts.state[k]) for k in whole.state)


def test_adam_scale_multiplies_its_step_size():
    """Adam's first step moves every coordinate by lr (m / sqrt(v) = sign(g) after bias correction);
    with scale s it moves lr * s."""
    p = torch.zeros(3, dtype=torch.float64)
    state = ModelState(p, Adam(0.1, eps=0.0))
    state.step(torch.tensor([2.0, -3.0, 0.5], dtype=torch.float64), scale=0.25)
    assert torch.allclose(p, torch.tensor([-0.025, 0.025, -0.025], dtype=torch.float64), atol=1e-15, rtol=0)


def test_bad_optimizer_keys_are_refused():
    with pytest.raises(ConfigError, match="train.optimizer"):
        to_config(**{"train.optimizer": "adagrad"})
    with pytest.raises(ConfigError, match="train.betas"):
        to_config(**{"train.optimizer": "adam", "train.betas": [0.9]})


@pytest.mark.parametrize("rule,weight", [("staleness_aware", lambda n, s: 1 / max(1, s)),
                                         ("sum", lambda n, s: 1.0), ("mean", lambda n, s: 1 / n)])
def test_asynchronous_update_rules_replay_exactly_from_the_steps_table(rule, weight):
    """ASP over one server, SGD without momentum: update k applies the gradient of the row whose version +
    staleness is k, computed on the parameters of its version, at lr x weight(staleness): lr / staleness
    for the staleness-aware rule (Zhang et al., IJCAI'16; lr for a fresh gradient), lr for sum, lr / n for
    mean. Replayed from the steps table, every update equals the run's."""
    n = 3
    result = simulate(record_params=True, **fast(
        policy="async", policy__gradient_scale=rule, cluster__workers=n, train__steps=24, train__momentum=0.0,
        workload__dtype="float64", stragglers="exponential", stragglers__mean_s=2e-4))
    history, lr = result.param_history, result.config.train.lr
    wl = workload_for(result.config)
    steps = result.steps.assign(k=lambda d: d["version"] + d["staleness"]).sort_values("k")
    assert steps["staleness"].max() >= 2  # the rules differ on this schedule
    for row in steps.itertuples():
        if row.k + 1 >= len(history):
            continue
        grad = wl.gradient(history[row.version], row.worker, row.step)
        expected = history[row.k] - lr * weight(n, row.staleness) * grad
        assert torch.allclose(history[row.k + 1], expected, atol=1e-12, rtol=0), (rule, row.k)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_warmup_equals_torchs_lambda_lr_on_a_plain_loop(optimizer):
    """train.warmup_steps=w: BSP equals torch.optim with LambdaLR(lambda k: min(1, (k + 1) / w)) (Goyal et
    al.'s linear warm-up), stepped after each optimizer step."""
    workers, steps, w = 2, 8, 5
    result = simulate(record_params=True, **fast(cluster__workers=workers, cluster__servers=2, train__steps=steps,
                                                 train__batch_size=8, workload__dtype="float64",
                                                 train__optimizer=optimizer, train__warmup_steps=w,
                                                 train__lr=0.2 if optimizer == "sgd" else 0.01))
    cfg = result.config
    wl = workload_for(cfg)
    model = torch_mlp(wl.init_params(), wl.model.widths)
    opt = TORCH[optimizer](model.parameters(), cfg.train)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: min(1.0, (k + 1) / w))
    for t in range(steps):
        rows = torch.as_tensor([r for i in range(workers) for r in wl.batch_indices(i, t)])
        opt.zero_grad()
        F.cross_entropy(model(wl.data.x_train[rows]), wl.data.y_train[rows]).backward()
        opt.step()
        sched.step()
        assert torch.allclose(result.param_history[t + 1], flatten_torch(model), atol=1e-9, rtol=0), t
