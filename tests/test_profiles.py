"""Timing profiles against the published facts (REFERENCES.md, Presets) and their effect on a run."""

import pytest

from pssim import simulate
from pssim.workload.profiles import bert_large, resnet50, vgg16
from conftest import fast


def test_resnet50_has_torchvisions_parameter_count_and_about_4_1_gmac():
    p = resnet50()
    assert p.params == 25_557_032
    assert p.macs == pytest.approx(4.1e9, rel=0.01)
    assert p.nbytes == 25_557_032 * 4


def test_vgg16_has_its_parameter_count_15_5_gmac_and_fc6_holds_74_percent():
    p = vgg16()
    assert p.params == 138_357_544
    assert p.macs == pytest.approx(15.5e9, rel=0.01)
    fc6 = next(l for l in p.layers if l.name == "fc6")
    assert fc6.params / p.params == pytest.approx(0.74, abs=0.005)


def test_bert_large_has_about_335m_parameters():
    assert bert_large().params == pytest.approx(335e6, rel=0.01)


def test_backward_readiness_runs_from_the_last_layer_to_the_first():
    ready = resnet50().backward_ready()
    assert ready[0][0] == len(resnet50().layers) - 1 and ready[-1] == (0, 1.0)
    fractions = [f for _, f in ready]
    assert fractions == sorted(fractions) and fractions[0] > 1 / 3  # forward is a third of the step


def test_a_profile_sets_bytes_and_flops_while_the_small_model_keeps_the_numerics():
    small = simulate(**fast(train__steps=4))
    big = simulate(**fast(train__steps=4, profile="resnet50", cluster__servers=2))
    assert big.summary["final_loss"] == small.summary["final_loss"]  # same math
    assert big.steps["bytes_sent"].iloc[0] == pytest.approx(25_557_032 * 4, rel=1e-9)
    compute = (big.steps["compute_end"] - big.steps["compute_start"]).iloc[0]
    # ResNet-50 on a V100 in fp32 has a measured row, 367 images/s (cluster.compute=measured, the default)
    assert compute == pytest.approx(32 / 367, rel=1e-9)
    ideal = simulate(**fast(train__steps=4, profile="resnet50", cluster__servers=2, cluster__compute="ideal"))
    compute = (ideal.steps["compute_end"] - ideal.steps["compute_start"]).iloc[0]
    assert compute == pytest.approx(100e-6 + 6 * resnet50().macs * 32 / (15.7e12 * 0.6), rel=1e-9)
