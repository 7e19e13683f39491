"""Tests written to kill specific one-line mutations of the library, each against a closed form:
samples per global step, a bonded NIC's transfer time, and fusion buffers cut by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pssim import simulate
from pssim.comm.fusion import fusion_buffers
from pssim.workload.profiles import resnet50
from conftest import fast

MIB = 1024 * 1024


# -- C.1: samples = global steps x gradients folded per step x batch -----------------------------------
@pytest.mark.parametrize("policy,per_step", [
    ("sync", "n"), ("allreduce", "n"), ("byteps", "n"), ("herring", "n"),  # a step folds all n gradients
    ("async", 1), ("ssp", 1),  # a step is one applied gradient
])
def test_samples_and_throughput_follow_from_the_config(policy, per_step):
    n, b, steps = 3, 16, 7
    result = simulate(**fast(policy=policy, cluster__workers=n, train__batch_size=b, train__steps=steps,
                             train__numerics=False))
    s = result.summary
    expected = steps * (n if per_step == "n" else per_step) * b
    assert s["global_steps"] == steps
    assert s["samples"] == expected
    assert s["throughput_samples_per_s"] == pytest.approx(expected / s["sim_time_s"], rel=1e-12)
    if per_step == "n":  # every worker's batch of every step was used: one row each
        assert len(result.steps) == steps * n


# -- C.2: bonded NICs ------------------------------------------------------------------------------
@pytest.mark.parametrize("nics", [1, 2, 3])
def test_a_lone_push_over_bonded_nics_runs_at_nics_times_the_line_rate(nics):
    """One worker, one server on a star, every machine's NICs bonded (the server's too, so the route's
    two links both carry nics x B): push = 2 hop latencies + the transport latency + S / (nics B eff)
    + S x (TCP CPU per byte) at the server (aggregation cost set to zero)."""
    result = simulate(**fast(cluster__workers=1, cluster__nics_per_machine=nics, train__steps=3,
                             train__numerics=False, network="tcp_10g", cluster__aggregation_ns_per_byte=0.0))
    c = result.config.network
    assert c.flow_cap_gbps == 0  # no per-flow cap to hide the bonded rate
    model_bytes = (32 * 64 + 64 + 64 * 10 + 10) * 4  # the MLP 32-64-10 in fp32
    line = nics * c.bandwidth_gbps * 1e9 / 8
    expected = (2 * c.hop_latency_us * 1e-6 + c.latency_us * 1e-6 + model_bytes / (line * c.efficiency)
                + model_bytes * c.cpu_ns_per_byte * 1e-9)
    push = (result.steps["push_end"] - result.steps["comm_start"]).dropna().to_numpy()
    assert len(push) >= 2
    assert np.allclose(push, expected, rtol=1e-9, atol=0)
    links = result.links.set_index("link")["bandwidth_Bps"]
    for name in ("worker0->switch", "switch->worker0", "server0->switch", "switch->server0"):
        assert links[name] == line


# -- C.3: fusion buffers ---------------------------------------------------------------------------
def buffers_by_hand(threshold: float) -> list[tuple[tuple[int, ...], int]]:
    """Walk ResNet-50's tensors from the output back to the input (backward order), adding each to the
    open buffer; close it as soon as it holds at least `threshold` bytes; the rest is the last one."""
    sizes = [4 * layer.params for layer in resnet50().layers]  # fp32 bytes of each gradient tensor
    out, layers, size = [], [], 0
    for i in range(len(sizes) - 1, -1, -1):
        layers.append(i)
        size += sizes[i]
        if size >= threshold:
            out.append((tuple(layers), size))
            layers, size = [], 0
    if layers:
        out.append((tuple(layers), size))
    return out


@pytest.mark.parametrize("threshold", [64 * MIB, 25 * MIB, 8 * MIB, 1_000_000])
def test_fusion_buffers_are_cut_at_the_threshold(threshold):
    expected = buffers_by_hand(threshold)
    got = fusion_buffers(resnet50(), threshold)
    assert [(b.layers, b.nbytes) for b in got] == expected
    assert all(size >= threshold for _, size in expected[:-1])
    assert sum(size for _, size in expected) == 4 * 25_557_032  # ResNet-50's published parameter count


@pytest.mark.parametrize("threshold", [None, 8 * MIB])
def test_allreduce_sends_one_ring_flow_per_fusion_buffer(threshold):
    """Ring all-reduce of a buffer of M bytes over n GPUs: each GPU streams 2(n-1) chunks of M/n to its
    successor as one flow. So worker0's uplink carries, per step, one flow of 2(n-1)M/n per buffer, in
    backward order. None: allreduce's default threshold, Horovod's 64 MiB (ResNet-50: 2 buffers)."""
    n, steps = 4, 2
    # The ideal ring without Horovod's cycle: one ring flow per buffer and link, buffers cut by size alone.
    overrides = {"policy.algorithm": "ideal_ring", "policy.cycle_ms": 0,
                 **({} if threshold is None else {"policy.fusion_bytes": threshold})}
    result = simulate(**fast(policy="allreduce", profile="resnet50", cluster__workers=n, train__steps=steps,
                             train__numerics=False, output__trace=True, output__trace_steps=0), **overrides)
    expected = buffers_by_hand(64 * MIB if threshold is None else threshold)
    if threshold is None:
        assert len(expected) == 2
    spans = [e for e in result.trace["traceEvents"] if e["ph"] == "X" and e["pid"] == 3 and e["name"] == "allreduce"]
    names = {e["tid"]: e["args"]["name"] for e in result.trace["traceEvents"]
             if e["name"] == "thread_name" and e["pid"] == 3}
    uplink = sorted((e for e in spans if names[e["tid"]].rsplit(" flow ", 1)[0] == "worker0->switch"),
                    key=lambda e: e["ts"])
    assert len(uplink) == steps * len(expected)
    sizes = [e["args"]["bytes"] for e in uplink]
    want = [2 * (n - 1) * size / n for _, size in expected] * steps
    assert all(math.isclose(a, b, rel_tol=1e-12) for a, b in zip(sizes, want)), (sizes, want)
    assert result.summary["bytes_sent"] == pytest.approx(n * sum(want), rel=1e-12)
