"""The workloads of different depth and structure against plain torch models: the small CNN on generated
images, and MLPs of 1 to 4 hidden layers, each trained by BSP exactly as torch.optim trains the same
nn.Module on the concatenated batches."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from pssim import simulate
from conftest import fast, workload_for
from test_optimizers import plain_trajectory


def test_the_cnn_trains_as_a_plain_torch_conv_net():
    """BSP on 2 workers with the cnn workload equals nn.Conv2d/ReLU/AdaptiveAvgPool2d/Linear stepped by
    torch.optim.SGD on the two batches together, to 1e-9 (float64)."""
    workers, steps = 2, 6
    result = simulate(record_params=True, **fast(workload="cnn", cluster__workers=workers, train__steps=steps,
                                                 train__batch_size=8, workload__dtype="float64"))
    cfg = result.config
    wl = workload_for(cfg)
    c1, c2 = cfg.workload.hidden
    net = nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, c1, 3, padding=1, dtype=torch.float64), nn.ReLU(),
                        nn.Conv2d(c1, c2, 3, padding=1, dtype=torch.float64), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(c2, cfg.workload.classes, dtype=torch.float64))
    params = [net[1].weight, net[1].bias, net[3].weight, net[3].bias]
    flat = result.param_history[0]
    sizes = [p.numel() for p in params] + [c2 * cfg.workload.classes, cfg.workload.classes]
    parts = torch.split(flat, sizes)
    with torch.no_grad():
        for p, v in zip(params, parts):
            p.copy_(v.view(p.shape))
        net[7].weight.copy_(parts[4].view(c2, -1).T)
        net[7].bias.copy_(parts[5])
    opt = torch.optim.SGD(net.parameters(), lr=cfg.train.lr, momentum=cfg.train.momentum)
    for t in range(steps):
        rows = torch.as_tensor([r for w in range(workers) for r in wl.batch_indices(w, t)])
        opt.zero_grad()
        F.cross_entropy(net(wl.data.x_train[rows]), wl.data.y_train[rows]).backward()
        opt.step()
        ours = torch.split(result.param_history[t + 1], sizes)
        assert torch.allclose(ours[2].view(params[2].shape), net[3].weight, atol=1e-9, rtol=0), t
        assert torch.allclose(ours[4].view(c2, -1).T, net[7].weight, atol=1e-9, rtol=0), t


def test_the_cnn_profile_counts_its_convolutions():
    """Per sample: a 3x3 convolution of cin -> cout channels on 8x8 costs 9 cin cout 64 MACs."""
    from pssim.workload.conv import SmallCNN
    p = SmallCNN(64, 4, [8, 16]).timing_profile()
    assert [l.macs for l in p.layers[:2]] == [9 * 1 * 8 * 64, 9 * 8 * 16 * 64]
    assert p.params == (9 * 8 + 8) + (9 * 8 * 16 + 16) + (16 * 4 + 4)
    assert {l.op for l in p.layers[:2]} == {"conv3x3"}


@pytest.mark.parametrize("hidden", [[32], [32, 32], [32, 32, 32], [32, 32, 32, 32]])
def test_mlps_of_one_to_four_hidden_layers_train_as_torch(hidden):
    workers, steps = 2, 5
    result = simulate(record_params=True, **fast(cluster__workers=workers, train__steps=steps, train__batch_size=8,
                                                 workload__dtype="float64", workload__hidden=hidden))
    for t, (ours, theirs) in enumerate(zip(result.param_history, plain_trajectory(result.config, workers, steps))):
        assert torch.allclose(ours, theirs, atol=1e-9, rtol=0), t


@pytest.mark.parametrize("hidden,batch,dtype", [([], 32, "float32"), ([64], 32, "float32"), ([64], 1, "float32"),
                                                ([48, 24], 7, "float32"), ([32, 32, 32], 16, "float64")])
def test_batched_gradients_are_bit_identical_to_one_at_a_time(hidden, batch, dtype):
    """`Workload.gradients` returns, for each (worker, step), exactly the bits of `Workload.gradient` on
    that batch alone, at the initial and at perturbed points; it batches (one vmap call) the shapes whose
    first call matched bit for bit, among them the default MLP's (64 hidden, 32 rows)."""
    cfg = simulate(**fast(cluster__workers=6, train__steps=1, train__batch_size=batch, workload__hidden=hidden,
                          workload__dtype=dtype)).config
    wl = workload_for(cfg)
    assert wl.batches_gradients
    requests = [(w, s) for w in range(6) for s in (0, 3)]
    points = [wl.init_params()] + [wl.init_params() + 0.01 * k * torch.randn(wl.n_params, dtype=wl.dtype)
                                   for k in (1, 2, 3)]
    for params in points:
        batched = wl.gradients(params, requests)
        for (w, s), g in zip(requests, batched):
            assert torch.equal(g, wl.gradient(params, w, s)), (w, s)
    if (hidden, batch) == ([64], 32):
        assert wl._batch_ok == {(12, 32): True}  # the default MLP's shape is batched


def test_a_replicated_run_is_the_same_with_and_without_batched_gradients(monkeypatch):
    """Replicated-model runs (allreduce, herring) give bit-identical parameters at every step whether the
    workers' gradients come from one batched call or one at a time."""
    from pssim.workload.workload import Workload
    for policy in ("allreduce", "herring"):
        kw = fast(cluster__workers=8, train__steps=6)
        batched = simulate(policy=policy, record_params=True, **kw).param_history
        with monkeypatch.context() as m:
            m.setattr(Workload, "batches_gradients", property(lambda self: False))
            single = simulate(policy=policy, record_params=True, **kw).param_history
        assert len(batched) == len(single) == 7
        assert all(torch.equal(a, b) for a, b in zip(batched, single)), policy
