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
