"""BSP: the exact-trajectory test against a plain torch loop, and the straggler tax c + H_n / lambda."""

import math

import pytest
import torch
import torch.nn.functional as F

from pssim import simulate
from conftest import fast, flatten_torch, torch_mlp, workload_for


def plain_sgd_trajectory(cfg, rows_for_step, steps):
    """Single-process torch SGD: nn.Linear layers, torch.optim.SGD, one batch of rows per step."""
    wl = workload_for(cfg)
    model = torch_mlp(wl.init_params(), wl.model.widths)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.train.lr, momentum=cfg.train.momentum,
                          weight_decay=cfg.train.weight_decay)
    history = [flatten_torch(model).clone()]
    for t in range(steps):
        rows = torch.as_tensor(rows_for_step(wl, t))
        opt.zero_grad()
        F.cross_entropy(model(wl.data.x_train[rows]), wl.data.y_train[rows]).backward()
        opt.step()
        history.append(flatten_torch(model).clone())
    return history


@pytest.mark.claims
@pytest.mark.parametrize("workers,servers", [(4, 1), (3, 2)])
def test_bsp_equals_single_process_sgd_with_batch_n_times_b(workers, servers):
    overrides = fast(cluster__workers=workers, cluster__servers=servers, train__batch_size=8,
                     train__steps=12, train__momentum=0.9, train__weight_decay=1e-3,
                     workload__dtype="float64", stragglers="exponential", stragglers__mean_s=1e-4)
    result = simulate(record_params=True, **overrides)
    cfg = result.config
    # The big batch at step t is every worker's batch t, concatenated.
    reference = plain_sgd_trajectory(
        cfg, lambda wl, t: [r for w in range(workers) for r in wl.batch_indices(w, t)], cfg.train.steps)
    assert len(result.param_history) == cfg.train.steps + 1
    for t, (ours, theirs) in enumerate(zip(result.param_history, reference)):
        assert torch.allclose(ours, theirs, atol=1e-6, rtol=0), f"diverged at step {t}"
    assert not torch.allclose(reference[0], reference[-1])  # it really trained


def test_bsp_iteration_with_exponential_stragglers_is_c_plus_harmonic_over_lambda():
    """E[max of n Exp(lambda)] = H_n / lambda (REFERENCES.md, shared formulas).

    c (compute plus communication) is measured on the same cluster without stragglers. Over 2000
    iterations the standard error of the mean of the max is about 1.24 / (lambda sqrt(2000)), i.e.
    1.0% of H_8/lambda; we allow 3%.
    """
    n, mean_s, steps = 8, 0.01, 2000
    common = fast(cluster__workers=n, train__steps=steps, train__numerics=False, network="rdma_100g",
                  eval__every=steps)
    c = simulate(**common).summary["mean_iteration_s"]
    stragglers = simulate(**common, **{"stragglers": "exponential", "stragglers.mean_s": mean_s})
    harmonic = sum(1 / k for k in range(1, n + 1))
    assert stragglers.summary["mean_iteration_s"] - c == pytest.approx(harmonic * mean_s, rel=0.03)
    assert math.isclose(stragglers.summary["sim_time_s"] / steps, stragglers.summary["mean_iteration_s"], rel_tol=0.01)
