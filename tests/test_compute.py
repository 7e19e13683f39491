"""The compute model (pssim/cluster/compute.py): per-layer closed forms, the measured table, the fit and its
check rows, and the checks on its inputs."""

import math

import numpy as np
import pytest

from pssim import ConfigError, simulate, to_config
from pssim.cluster import DEVICES
from pssim.cluster.compute import (BYTEPS_CLOUD, EFFICIENCY, MEASURED, PUBLISHED, layer_seconds, register_measured,
                                   step_compute, unit)
from pssim.simulation import Simulation
from pssim.workload.profiles import Layer, bert_large, resnet50, vgg16
from conftest import fast


def compute_times(**overrides) -> np.ndarray:
    """Compute time of every step of a timing-only run of one worker (sync, no stragglers)."""
    result = simulate(**fast(cluster__workers=1, train__numerics=False, train__steps=3, **overrides))
    return (result.steps["compute_end"] - result.steps["compute_start"]).to_numpy()


@pytest.fixture
def restore_table():
    saved = dict(MEASURED)
    yield
    MEASURED.clear()
    MEASURED.update(saved)


# -- the per-layer model, in closed form ------------------------------------------------------------------

def test_a_3x3_convolution_takes_its_flops_at_the_winograd_efficiency_plus_its_memory_traffic():
    """ResNet-50 layer2.0.conv2: 3x3, 128 -> 128 channels, 28 x 28 output (stride 2), then batch norm
    and ReLU. On a V100 in fp32, batch 64: 6 FLOPs per MAC at 15.7 TFLOP/s x the fp32 3x3 efficiency,
    plus 2 kernels x its output elements x 5 passes x 4 bytes at 900 GB/s."""
    layer = next(l for l in resnet50().layers if l.name == "layer2.0.conv2")
    macs, out = 3 * 3 * 128 * 128 * 28 * 28, 128 * 28 * 28
    assert (layer.macs, layer.op, layer.elementwise) == (macs, "conv3x3", 2 * out)
    expected = 6 * macs * 64 / (15.7e12 * EFFICIENCY["fp32"]["conv3x3"]) + 5 * 2 * out * 4 * 64 / 900e9
    assert layer_seconds(layer, DEVICES["v100"], "fp32", 64) == pytest.approx(expected, rel=1e-12)


def test_an_attention_block_splits_its_macs_between_gemm_and_attention():
    """BERT-large encoder attention, seq 128, on an A100 in mixed precision (fp16 tensor cores, 312
    TFLOP/s, 2-byte elements, 2,039 GB/s): four 1024 x 1024 projections per token are GEMMs, the two
    L x L products (2 x 128^2 x 1024 MACs) attention; softmax and dropout on 16 heads' 128 x 128 scores,
    dropout, residual add and layer norm on 128 x 1024."""
    layer = bert_large().layers[1]
    gemm, attention = 128 * 4 * 1024 * 1024, 2 * 128 * 128 * 1024
    assert layer.macs_by_op == {"gemm": gemm, "attention": attention} and layer.macs == gemm + attention
    elements = 2 * 16 * 128 * 128 + 3 * 128 * 1024
    eff = EFFICIENCY["fp16"]
    expected = (6 * gemm * 8 / (312e12 * eff["gemm"]) + 6 * attention * 8 / (312e12 * eff["attention"])
                + 5 * elements * 2 * 8 / 2039e9)
    assert layer_seconds(layer, DEVICES["a100"], "fp16", 8) == pytest.approx(expected, rel=1e-12)


def test_an_embedding_lookup_costs_only_its_memory_traffic():
    layer = bert_large().layers[0]
    assert layer.op == "embedding" and layer.macs == 0 and layer.macs_by_op == {}
    assert layer_seconds(layer, DEVICES["v100"], "fp32", 4) == pytest.approx(5 * 3 * 128 * 1024 * 4 * 4 / 900e9)


@pytest.mark.parametrize("device,precision,runs_as", [
    ("v100", "tf32", "fp32"), ("a100", "tf32", "tf32"), ("h100", "tf32", "tf32"), ("a100", "fp16", "fp16"),
    ("titan_xp", "fp16", "fp32"), ("quadro_p4000", "fp16", "fp32"), ("rtx2060", "fp16", "fp16"),
    ("t4", "fp32", "fp32"),
])
def test_a_precision_the_gpu_lacks_runs_as_fp32(device, precision, runs_as):
    d = DEVICES[device]
    assert unit(d, precision) == runs_as
    if runs_as == "fp32":  # same time as fp32 itself
        for layer in resnet50().layers[:5]:
            assert layer_seconds(layer, d, precision, 16) == layer_seconds(layer, d, "fp32", 16)


def test_ideal_mode_is_the_flat_model():
    """cluster.compute=ideal: overhead + 6 MACs x batch / (peak x the device's flat efficiency)."""
    expected = 100e-6 + 6 * vgg16().macs * 32 / (15.7e12 * 0.6)
    assert np.allclose(compute_times(profile="vgg16", cluster__compute="ideal"), expected, rtol=1e-12)
    step = step_compute(DEVICES["v100"], vgg16(), "fp32", 32, "ideal").step_s
    assert step == pytest.approx(DEVICES["v100"].step_time(6 * vgg16().macs * 32, "fp32"), rel=1e-12)


def test_model_mode_step_is_the_overhead_plus_every_layer():
    p, d = resnet50(), DEVICES["a100"]
    expected = 100e-6 + math.fsum(layer_seconds(l, d, "tf32", 32) for l in p.layers)
    assert np.allclose(compute_times(profile="resnet50", cluster__device="a100", cluster__precision="tf32",
                                     cluster__compute="model"), expected, rtol=1e-12)


@pytest.mark.parametrize("mode", ["model", "measured", "ideal"])
def test_stage_times_sum_to_the_step_time_plus_one_overhead_per_extra_gpu(mode):
    p, d = bert_large(), DEVICES["v100"]
    sc = step_compute(d, p, "fp16", 16, mode)
    stages = p.stages(3)
    assert math.fsum(sc.stage_s(s) for s in stages) == pytest.approx(sc.step_s + 2 * d.overhead_s, rel=1e-12)
    if mode == "measured":
        assert sc.step_s == pytest.approx(16 / 224, rel=1e-12)


def test_a_workers_stages_carry_the_calibrated_times():
    """Two GPUs per worker, ResNet-50 on V100s in fp32 (measured 367 images/s): the first stage's time
    plus the second's is one step of 32 images at 367/s plus the second GPU's overhead; the split
    follows the per-layer model."""
    sim = Simulation(to_config(**fast(profile="resnet50", cluster__workers=1, cluster__gpus_per_worker=2,
                                      train__numerics=False, train__steps=1)))
    worker = sim.ctx.cluster.workers[0]
    first, second = resnet50().stages(2)
    d = DEVICES["v100"]
    model = [math.fsum(layer_seconds(resnet50().layers[i], d, "fp32", 32) for i in s) for s in (first, second)]
    variable = 32 / 367 - 100e-6
    for stage, share in zip(worker.stages, model):
        assert stage.compute_s == pytest.approx(100e-6 + variable * share / sum(model), rel=1e-12)
    assert worker.step_duration() == pytest.approx(32 / 367 + 100e-6, rel=1e-12)


# -- the measured table -------------------------------------------------------------------------------

@pytest.mark.parametrize("row", PUBLISHED, ids=lambda m: f"{m.device}-{m.profile}-{m.precision}")
def test_measured_mode_reproduces_the_table(row):
    assert np.allclose(compute_times(profile=row.profile, cluster__device=row.device,
                                     cluster__precision=row.precision, train__batch_size=64),
                       64 / row.samples_per_s, rtol=1e-12)


def test_tf32_on_a_gpu_without_it_uses_the_fp32_row():
    assert np.allclose(compute_times(profile="resnet50", cluster__precision="tf32"), 32 / 367, rtol=1e-12)


def test_measured_mode_without_a_row_is_the_model():
    kw = dict(profile="vgg16", cluster__device="h100", cluster__precision="fp16")
    assert np.array_equal(compute_times(**kw), compute_times(**kw, cluster__compute="model"))


def test_samples_per_s_overrides_the_table():
    assert np.allclose(compute_times(profile="resnet50", cluster__samples_per_s=331), 32 / 331, rtol=1e-12)


def test_a_registered_row_sets_the_step_time(restore_table):
    register_measured("t4", "resnet50", "fp16", 250.0)
    assert np.allclose(compute_times(profile="resnet50", cluster__device="t4", cluster__precision="fp16"),
                       32 / 250, rtol=1e-12)


def test_heterogeneous_workers_each_take_their_own_row():
    result = simulate(**fast(profile="resnet50", cluster__workers=2, cluster__worker_devices=["v100", "a100"],
                             cluster__precision="fp16", train__numerics=False, train__steps=2))
    d = (result.steps["compute_end"] - result.steps["compute_start"]).groupby(result.steps["worker"]).mean()
    assert d[0] == pytest.approx(32 / 1200, rel=1e-12) and d[1] == pytest.approx(32 / 2470, rel=1e-12)


# -- the fit and its checks ---------------------------------------------------------------------------

@pytest.mark.parametrize("row", [m for m in PUBLISHED if m.role == "fit"],
                         ids=lambda m: f"{m.device}-{m.profile}-{m.precision}")
def test_the_fit_rows_are_solved_exactly(row):
    """Per sample (no overhead) the per-layer model takes 1 / the measured throughput on every fit row."""
    d, p = DEVICES[row.device], {"resnet50": resnet50, "vgg16": vgg16, "bert_large": bert_large}[row.profile]()
    per_sample = math.fsum(layer_seconds(l, d, row.precision, 1) for l in p.layers)
    assert per_sample == pytest.approx(1 / row.samples_per_s, rel=1e-9)


def test_the_efficiencies_are_physical():
    """Below 1 except fp32 3x3 convolutions, which Winograd makes cheaper than their FLOPs; mixed
    precision and TF32 reach a smaller share of their (much higher) peaks than fp32."""
    for u, eff in EFFICIENCY.items():
        for op, e in eff.items():
            assert 0.05 < e < (3 if (u, op) == ("fp32", "conv3x3") else 1), (u, op, e)
    assert EFFICIENCY["fp32"]["conv3x3"] > 1 > EFFICIENCY["fp32"]["gemm"] > EFFICIENCY["fp16"]["gemm"]


def model_throughput(row) -> float:
    """pssim's images (sequences) per second for a published row: one worker, batch 256, per-layer model."""
    return 256 / compute_times(profile=row.profile, cluster__device=row.device, cluster__precision=row.precision,
                               cluster__compute="model", train__batch_size=256).mean()


@pytest.mark.claims
@pytest.mark.parametrize("row", [m for m in PUBLISHED if m.role == "check"],
                         ids=lambda m: f"{m.device}-{m.profile}-{m.precision}")
def test_check_rows_are_predicted_within_10_percent(row):
    """Rows no efficiency was fit on (module docstring of pssim/cluster/compute.py), within 10%."""
    ours = model_throughput(row)
    error = ours / row.samples_per_s - 1
    assert abs(error) <= 0.10, (f"{row.device} {row.profile} {row.precision}: published {row.samples_per_s:g}/s, "
                                f"pssim {ours:.0f}/s, error {error:+.1%}")


@pytest.mark.claims
@pytest.mark.xfail(strict=True, reason="the BytePS cloud V100s measured ResNet-50 fp32 at 331 images/s, the DGX-1 "
                   "row the model is fit on 367: one GPU, profile and precision measured 11% apart, beyond the "
                   "10% tolerance; runs reproducing BytePS set cluster.samples_per_s=331")
def test_byteps_cloud_v100_row_within_10_percent():
    ours = model_throughput(BYTEPS_CLOUD)
    error = ours / BYTEPS_CLOUD.samples_per_s - 1
    assert abs(error) <= 0.10, f"published 331/s, pssim {ours:.0f}/s, error {error:+.1%}"


# -- inputs ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("key,value,needle", [
    ("cluster.device", "p100", "cluster.device='p100' is invalid"),
    ("cluster.precision", "bf16", "cluster.precision='bf16' is invalid: allowed values are fp16, fp32, tf32"),
    ("cluster.compute", "fast", "cluster.compute='fast' is invalid: allowed values are ideal, measured, model"),
    ("cluster.samples_per_s", float("nan"), "cluster.samples_per_s=nan is invalid: must be a finite number"),
    ("cluster.samples_per_s", float("inf"), "cluster.samples_per_s=inf is invalid: must be a finite number"),
    ("cluster.samples_per_s", -5.0, "cluster.samples_per_s=-5.0 is invalid: must be in (0, 1e9]"),
])
def test_bad_compute_settings_name_the_key(key, value, needle):
    with pytest.raises(ConfigError) as err:
        to_config(**{key: value})
    assert str(err.value).startswith(needle) and "\n" not in str(err.value)


def test_samples_per_s_needs_measured_mode_and_one_device():
    with pytest.raises(ConfigError, match=r"cluster\.samples_per_s=300\.0 is invalid: is read only with "
                                          r"cluster\.compute=measured, not model"):
        to_config(**{"cluster.samples_per_s": 300.0, "cluster.compute": "model"})
    with pytest.raises(ConfigError, match=r"cluster\.samples_per_s=300\.0 is invalid: is one device's throughput"):
        to_config(**{"cluster.samples_per_s": 300.0, "cluster.workers": 2, "cluster.worker_devices": ["v100", "t4"]})


def test_a_measured_step_shorter_than_the_overhead_is_refused():
    with pytest.raises(ConfigError, match=r"cluster\.samples_per_s=1000000\.0 is invalid: at 1e\+06 samples/s a "
                                          r"batch of 32 takes 32 us, no more than v100's fixed step overhead"):
        simulate(**fast(profile="resnet50", cluster__samples_per_s=1e6, train__steps=1))


@pytest.mark.parametrize("args,needle", [
    (("tpu", "resnet50", "fp32", 100.0), "device='tpu' is invalid"),
    (("v100", "gpt3", "fp32", 100.0), "profile='gpt3' is invalid"),
    (("v100", "resnet50", "int8", 100.0), "precision='int8' is invalid"),
    (("v100", "resnet50", "fp32", float("nan")), "samples_per_s=nan is invalid: must be a finite number"),
    (("v100", "resnet50", "fp32", 0.0), "samples_per_s=0.0 is invalid: must be in (0, 1e9]"),
])
def test_register_measured_refuses_bad_rows(restore_table, args, needle):
    with pytest.raises(ConfigError) as err:
        register_measured(*args)
    assert str(err.value).startswith(needle)
    assert MEASURED == {(m.device, m.profile, m.precision): m.samples_per_s for m in PUBLISHED}


def test_layers_refuse_unknown_or_inconsistent_op_types():
    with pytest.raises(ValueError, match="op must be one of"):
        Layer("x", 10, 10, op="fft")
    with pytest.raises(ValueError, match="op must be one of"):
        Layer("x", 10, 10, other_ops=(("winograd", 4),))
    with pytest.raises(ValueError, match="sum to at most"):
        Layer("x", 10, 10, other_ops=(("attention", 11),))
    with pytest.raises(ValueError, match="embedding lookups have no MACs"):
        Layer("x", 10, 10, op="embedding")
    with pytest.raises(ValueError, match="elementwise must be >= 0"):
        Layer("x", 10, 10, elementwise=-1)


@pytest.mark.parametrize("make,split", [
    # ResNet-50: sixteen 3x3 convolutions; the 7x7 stem, the 1x1s and downsamples; the fc layer.
    (resnet50, {"conv3x3": sum(9 * w * w * hw * hw * n for w, hw, n in [(64, 56, 3), (128, 28, 4), (256, 14, 6),
                                                                       (512, 7, 3)]),
                "gemm": 2048 * 1000}),
    # VGG-16: thirteen 3x3 convolutions, three dense layers.
    (vgg16, {"gemm": 25088 * 4096 + 4096 * 4096 + 4096 * 1000}),
    # BERT-large: 24 blocks of two 128 x 128 x 1024 products.
    (bert_large, {"attention": 24 * 2 * 128 * 128 * 1024}),
])
def test_op_types_split_the_published_macs(make, split):
    p = make()
    by_op = p.macs_by_op
    assert sum(by_op.values()) == p.macs
    for op, macs in split.items():
        assert by_op[op] == macs
    if make is vgg16:
        assert by_op["conv3x3"] == p.macs - split["gemm"] and "conv" not in by_op
