"""Compute devices: peak FLOP/s, the fraction real training kernels reach, and a fixed step overhead."""

from __future__ import annotations

from dataclasses import dataclass

from pssim.registry import Registry


@dataclass(frozen=True)
class Device:
    """A GPU type. A step of F FLOPs takes overhead_s + F / (peak * efficiency) at the chosen precision.

    Peaks are the vendors' dense figures (fp16 means tensor cores); efficiencies are what well-tuned
    training kernels reach (REFERENCES.md, Presets: 30-50% for tensor cores, more for fp32 SIMT).
    `overhead_s` is the per-step floor of kernel launches and framework work that tiny models pay.
    """

    name: str
    peak_fp32: float
    peak_fp16: float
    efficiency_fp32: float = 0.6
    efficiency_fp16: float = 0.35
    overhead_s: float = 100e-6

    def flops_per_s(self, precision: str) -> float:
        if precision == "fp16":
            return self.peak_fp16 * self.efficiency_fp16
        return self.peak_fp32 * self.efficiency_fp32

    def step_time(self, flops: float, precision: str) -> float:
        """Seconds to compute `flops` FLOPs, before any straggler slowdown."""
        return self.overhead_s + flops / self.flops_per_s(precision)


TFLOPS = 1e12
DEVICES: Registry[Device] = Registry("cluster.device")
DEVICES.update({
    d.name: d
    for d in (
        Device("v100", 15.7 * TFLOPS, 125 * TFLOPS),
        Device("a100", 19.5 * TFLOPS, 312 * TFLOPS),
        Device("h100", 67 * TFLOPS, 989 * TFLOPS),
        Device("t4", 8.1 * TFLOPS, 65 * TFLOPS, efficiency_fp32=0.5, efficiency_fp16=0.3),
        Device("cpu", 2 * TFLOPS, 2 * TFLOPS, efficiency_fp32=0.3, efficiency_fp16=0.3, overhead_s=20e-6),
    )
})
