"""Compute time of a training step, layer by layer, calibrated on measured single-GPU throughput.

`cluster.compute` picks one of three modes:

- `model`: the per-layer op-type model. A layer's time for a batch of b samples is

      sum over its op types o:  6 * MACs_o * b / (peak_u * e[u][o])  +  P * elementwise * bytes_u * b / BW

  u is the arithmetic unit the precision runs on (`unit`): fp32 (SIMT), tf32 (TF32 tensor cores, Ampere
  and later) or fp16 (tensor cores; mixed precision). A precision a GPU lacks falls back to fp32, as
  PyTorch's TF32 switch and mixed precision do on older GPUs (fp16 without tensor cores runs at about
  fp32 speed). The first term is the layer's training FLOPs (2 forward and 4 backward per MAC) at the
  unit's peak times the efficiency e[u][o] of its op type (`pssim.workload.profiles.OP_TYPES`); the
  second is the memory-bound kernels (norms, activations, softmax, dropout, residual adds, embedding
  gathers: `Layer.elementwise` elements per sample) at the device's memory bandwidth BW, each element
  moved P = MEMORY_PASSES = 5 times over forward and backward (forward reads and writes it, backward
  reads the gradient and the saved tensor and writes a gradient), 4 bytes each in fp32 and TF32, 2 in
  mixed precision. A step adds the device's fixed `overhead_s` per GPU (per pipeline stage).
- `measured` (the default): where a measured training throughput S (samples/s of one GPU) is known for
  the (device, profile, precision), from `cluster.samples_per_s` or the table (`MEASURED`, extended by
  `register_measured`; a precision the GPU lacks uses the row of the one it runs), a one-GPU step takes
  exactly b / S: the overhead plus the layers, whose per-layer model times are scaled by one factor to
  fill the rest. Elsewhere it is `model`.
- `ideal`: the old flat model, `Device.step_time`: overhead + 6 * MACs * b / (peak * flat efficiency).

The efficiencies are the model's free parameters, fit in closed form (`fit`) on the rows of `PUBLISHED`
whose role is "fit"; the rows whose role is "check" never enter the fit (docs/MODELS.md, Compute,
tabulates both). Efficiencies depend on the unit and the op type, not on the GPU: a GPU enters only
through its peaks and bandwidth, so V100 fits predict A100 (the check rows test that transfer).

- fp32 GEMM (and attention's batched GEMMs, which no row separates): BERT-large, V100, fp32.
- fp32 convolutions: e = rc x GEMM's for 1x1/7x7 and rc x w for 3x3 (w: Winograd's gain), rc and w
  solved together from ResNet-50 and VGG-16, V100, fp32.
- fp16 GEMM: BERT-large, V100, mixed. fp16 convolutions: rc x fp16 GEMM's, the fp32 ratio (no
  Winograd on tensor cores). Checked by ResNet-50 on V100 and A100, mixed.
- TF32 GEMM: BERT-large, A100, TF32. TF32 convolutions get their own efficiency, fit on ResNet-50, A100,
  TF32: that run reaches a far smaller share of the TF32 peak than TF32 GEMMs do (PyTorch's fp32 models
  run NCHW, which the tensor-core kernels transpose; the mixed-precision rows run channels_last), so the
  GEMM rows cannot predict it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pssim.cluster.device import DEVICES, Device
from pssim.config import PRECISIONS, ConfigError, finite, one_of, require
from pssim.workload.profiles import PROFILES, Profile, bert_large, resnet50, vgg16

FLOPS_PER_MAC = 6.0  # training: 2 forward, 4 backward
MEMORY_PASSES = 5  # moves of each element of a memory-bound kernel, forward and backward
ELEMENT_BYTES = {"fp32": 4, "tf32": 4, "fp16": 2}

DLE_RESNET = "NVIDIA DeepLearningExamples, PyTorch ResNet-50 v1.5 README (DGX-1 V100 16GB, DGX A100 80GB)"
DLE_BERT = "NVIDIA DeepLearningExamples, PyTorch BERT README, pretraining phase 1, seq 128 (V100 32GB, A100)"


@dataclass(frozen=True)
class Measurement:
    """A published single-GPU training throughput. `role`: "fit" sets efficiencies, "check" only tests them."""

    device: str
    profile: str
    precision: str
    samples_per_s: float
    role: str
    source: str


PUBLISHED: tuple[Measurement, ...] = (
    Measurement("v100", "resnet50", "fp32", 367, "fit", DLE_RESNET),
    Measurement("v100", "resnet50", "fp16", 1200, "check", DLE_RESNET),
    Measurement("a100", "resnet50", "tf32", 938, "fit", DLE_RESNET),
    Measurement("a100", "resnet50", "fp16", 2470, "check", DLE_RESNET),
    Measurement("v100", "bert_large", "fp32", 50, "fit", DLE_BERT),
    Measurement("v100", "bert_large", "fp16", 224, "fit", DLE_BERT),
    Measurement("a100", "bert_large", "tf32", 317, "fit", DLE_BERT),
    Measurement("a100", "bert_large", "fp16", 580, "check", DLE_BERT),
    Measurement("v100", "vgg16", "fp32", 219, "fit", "cuDNN Winograd figures quoted in ../shared/VALIDATION.md"),
)
# The BytePS cloud V100s ran ResNet-50 fp32 at about 331 images/s per GPU: a second measurement of a key
# the table holds (367, DGX-1), so a check only. Runs reproducing the BytePS charts set
# cluster.samples_per_s=331.
BYTEPS_CLOUD = Measurement("v100", "resnet50", "fp32", 331, "check", "bytedance/byteps docs/performance.md")

# (device, profile, precision) -> measured samples/s of one GPU; `measured` mode uses these.
MEASURED: dict[tuple[str, str, str], float] = {(m.device, m.profile, m.precision): m.samples_per_s
                                               for m in PUBLISHED}


def register_measured(device: str, profile: str, precision: str, samples_per_s: float) -> None:
    """Add (or replace) the measured training throughput of one GPU of `device` on the timing profile
    `profile` at `precision`, in samples/s; `cluster.compute=measured` runs then take their step time
    from it. ConfigError names the bad argument."""
    DEVICES.lookup(device, "device")
    PROFILES.lookup(profile, "profile")
    one_of("precision", precision, PRECISIONS)
    finite("samples_per_s", samples_per_s)
    require(0 < samples_per_s <= 1e9, "samples_per_s", samples_per_s, "must be in (0, 1e9] samples/s")
    MEASURED[device, profile, precision] = float(samples_per_s)


def measured_rate(device: Device, profile: str, precision: str) -> float | None:
    """The table's samples/s for (device, profile, precision); failing that, for the precision the GPU
    really runs (tf32 on a V100 is its fp32 row). None when neither is known."""
    rate = MEASURED.get((device.name, profile, precision))
    return rate if rate is not None else MEASURED.get((device.name, profile, unit(device, precision)))


def unit(device: Device, precision: str) -> str:
    """The arithmetic unit `precision` runs on: tf32 and fp16 fall back to fp32 on GPUs without them."""
    if precision == "tf32" and device.peak_tf32 > 0:
        return "tf32"
    if precision == "fp16" and device.tensor_cores:
        return "fp16"
    return "fp32"


def peak(device: Device, u: str) -> float:
    """Peak FLOP/s of arithmetic unit `u` on `device`."""
    return {"fp32": device.peak_fp32, "tf32": device.peak_tf32, "fp16": device.peak_fp16}[u]


def _parts(profile: Profile, device: Device, u: str) -> tuple[dict[str, float], float]:
    """Per sample: training FLOPs by op type, and seconds of memory-bound traffic."""
    flops = {op: FLOPS_PER_MAC * m for op, m in profile.macs_by_op.items()}
    return flops, MEMORY_PASSES * profile.elementwise * ELEMENT_BYTES[u] / device.memory_bandwidth


def fit() -> dict[str, dict[str, float]]:
    """The efficiencies e[unit][op type], solved in closed form from the "fit" rows of PUBLISHED (see the
    module docstring for which row sets which)."""
    rows = {(m.device, m.profile, m.precision): 1.0 / m.samples_per_s for m in PUBLISHED if m.role == "fit"}
    profiles = {"resnet50": resnet50(), "vgg16": vgg16(), "bert_large": bert_large()}

    def gemm(device: str, precision: str) -> float:  # BERT-large: GEMMs and attention, one efficiency
        d = DEVICES[device]
        u = unit(d, precision)
        flops, mem = _parts(profiles["bert_large"], d, u)
        return (flops["gemm"] + flops.get("attention", 0)) / (peak(d, u) * (rows[device, "bert_large", precision] - mem))

    e32, e16, etf = gemm("v100", "fp32"), gemm("v100", "fp16"), gemm("a100", "tf32")
    # ResNet-50 and VGG-16, V100 fp32: linear in a = 1 / (rc w) (3x3) and b = 1 / rc (other convolutions).
    v100 = DEVICES["v100"]
    rate = v100.peak_fp32 * e32
    eqs = []
    for name in ("resnet50", "vgg16"):
        flops, mem = _parts(profiles[name], v100, "fp32")
        eqs.append((flops.get("conv3x3", 0) / rate, flops.get("conv", 0) / rate,
                    rows["v100", name, "fp32"] - mem - flops.get("gemm", 0) / rate))
    (a1, b1, c1), (a2, b2, c2) = eqs
    det = a1 * b2 - a2 * b1
    a, b = (c1 * b2 - c2 * b1) / det, (a1 * c2 - a2 * c1) / det
    rc, w = 1 / b, b / a
    # ResNet-50, A100 TF32: the convolutions' efficiency, given TF32 GEMM's for the fc layer.
    a100 = DEVICES["a100"]
    flops, mem = _parts(profiles["resnet50"], a100, "tf32")
    conv_s = rows["a100", "resnet50", "tf32"] - mem - flops["gemm"] / (a100.peak_tf32 * etf)
    etf_conv = (flops["conv"] + flops["conv3x3"]) / (a100.peak_tf32 * conv_s)
    return {
        "fp32": {"gemm": e32, "attention": e32, "conv": rc * e32, "conv3x3": rc * w * e32},
        "tf32": {"gemm": etf, "attention": etf, "conv": etf_conv, "conv3x3": etf_conv},
        "fp16": {"gemm": e16, "attention": e16, "conv": rc * e16, "conv3x3": rc * e16},
    }


EFFICIENCY: dict[str, dict[str, float]] = fit()


def layer_seconds(layer, device: Device, precision: str, batch: int) -> float:
    """The per-layer model's time for `layer` on a batch (no overhead). An uncalibrated device (the CPU)
    runs every op type at its flat efficiency, with no memory term."""
    if not device.calibrated:
        return FLOPS_PER_MAC * layer.macs * batch / device.flops_per_s(precision)
    u = unit(device, precision)
    rate, eff = peak(device, u), EFFICIENCY[u]
    compute = sum(FLOPS_PER_MAC * m * batch / (rate * eff[op]) for op, m in layer.macs_by_op.items())
    return compute + MEMORY_PASSES * layer.elementwise * ELEMENT_BYTES[u] * batch / device.memory_bandwidth


@dataclass(frozen=True)
class StepCompute:
    """One worker's compute for its batch: the per-GPU fixed overhead and each profile layer's seconds.
    A stage (one GPU) takes the overhead plus its layers; a one-GPU step is `step_s`."""

    overhead_s: float
    layer_s: tuple[float, ...]
    mode: str
    measured: float | None = None  # the samples/s it was scaled to (measured mode with a row)

    def stage_s(self, layers: range) -> float:
        return self.overhead_s + math.fsum(self.layer_s[i] for i in layers)

    @property
    def step_s(self) -> float:
        return self.stage_s(range(len(self.layer_s)))


def step_compute(device: Device, profile: Profile, precision: str, batch: int, mode: str = "measured",
                 profile_key: str | None = None, samples_per_s: float | None = None) -> StepCompute:
    """The compute of one worker's step in `mode` (measured, model, ideal). `profile_key` names the
    profile in the measured table (default: the profile's own name); `samples_per_s` (the config's
    cluster.samples_per_s) overrides the table. Results are cached: a cluster's workers share one."""
    measured = None
    if mode == "measured":
        measured = samples_per_s if samples_per_s is not None else measured_rate(device, profile_key or profile.name,
                                                                                precision)
    key = (id(profile), device, precision, batch, mode, measured)
    hit = _CACHE.get(key)
    if hit is not None and hit[0] is profile:  # the cache holds the profile, so its id is not reused
        return hit[1]
    overhead = device.overhead_s
    if mode == "ideal":
        rate = device.flops_per_s(precision)
        result = StepCompute(overhead, tuple(FLOPS_PER_MAC * l.macs * batch / rate for l in profile.layers), mode)
    else:
        layer_s = tuple(layer_seconds(l, device, precision, batch) for l in profile.layers)
        if measured is None:
            result = StepCompute(overhead, layer_s, mode)
        else:
            step = batch / measured
            if step <= overhead:
                key_name, value = (("cluster.samples_per_s", samples_per_s) if samples_per_s is not None
                                   else ("train.batch_size", batch))
                raise ConfigError(f"{key_name}={value!r} is invalid: at {measured:g} samples/s a batch of {batch} "
                                  f"takes {step * 1e6:.3g} us, no more than {device.name}'s fixed step overhead "
                                  f"of {overhead * 1e6:g} us")
            total = math.fsum(layer_s)
            shares = [t / total for t in layer_s] if total > 0 else [1 / len(layer_s)] * len(layer_s)
            result = StepCompute(overhead, tuple(x * (step - overhead) for x in shares), mode, measured)
    if len(_CACHE) >= 64:
        _CACHE.clear()
    _CACHE[key] = (profile, result)
    return result


_CACHE: dict[tuple, tuple[Profile, StepCompute]] = {}


def throughput(device: Device, profile: Profile, precision: str, batch: int, mode: str = "model") -> float:
    """Samples/s of one GPU running the whole profile (batch / step_s)."""
    return batch / step_compute(device, profile, precision, batch, mode).step_s
