"""Compute devices: peak FLOP/s by arithmetic unit, memory, and the old flat-efficiency step time.

The calibrated per-layer compute model that uses these numbers is pssim/cluster/compute.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from pssim.registry import Registry


@dataclass(frozen=True)
class Device:
    """A GPU type: the vendors' dense peak FLOP/s of each arithmetic unit, memory size and bandwidth.

    `peak_fp32` is the SIMT fp32 rate; `peak_fp16` the fp16 tensor-core rate with fp32 accumulation
    (what mixed-precision training uses); a GPU without tensor cores lists its fp32 rate there, as
    mixed precision then runs at about fp32 speed. `peak_tf32` is the TF32 tensor-core rate (0: none,
    before Ampere). `step_time` is the old flat model kept as `cluster.compute=ideal`: a step of F FLOPs
    takes overhead_s + F / (peak * efficiency), efficiency_fp16 for fp16 and efficiency_fp32 otherwise
    (TF32 included). `overhead_s` is the per-step floor of kernel launches and framework work that tiny
    models pay, in every mode. `calibrated` False (the CPU) means no measured row speaks for the device:
    the per-layer model uses its flat efficiencies for every op type and no memory term.
    """

    name: str
    peak_fp32: float
    peak_fp16: float
    efficiency_fp32: float = 0.6
    efficiency_fp16: float = 0.35
    overhead_s: float = 100e-6
    peak_tf32: float = 0.0
    memory_gb: float = 0.0
    memory_bandwidth: float = 0.0  # bytes/s
    calibrated: bool = True
    # NCCL's NVLS efficiency for this architecture (src/graph/tuning.cc, nvlsEfficiency: Hopper 0.85,
    # Blackwell 0.74, earlier 0): the share of its NVLink rate an NVLink SHARP all-reduce reaches on an
    # NVSwitch machine. 0: no NVLS (pssim/comm/nccl.py).
    nvls_efficiency: float = 0.0

    @property
    def tensor_cores(self) -> bool:
        return self.peak_fp16 > self.peak_fp32

    def flops_per_s(self, precision: str) -> float:
        """The flat model's effective rate (cluster.compute=ideal)."""
        if precision == "fp16":
            return self.peak_fp16 * self.efficiency_fp16
        return self.peak_fp32 * self.efficiency_fp32

    def step_time(self, flops: float, precision: str) -> float:
        """Seconds to compute `flops` FLOPs under the flat model, before any straggler slowdown."""
        return self.overhead_s + flops / self.flops_per_s(precision)


TFLOPS = 1e12
GB_S = 1e9
DEVICES: Registry[Device] = Registry("cluster.device")
DEVICES.update({
    d.name: d
    for d in (
        # V100 SXM2 (DGX-1): 15.7 fp32 / 125 tensor TFLOP/s, 16 GB HBM2 at 900 GB/s (NVIDIA V100 datasheet;
        # a 32 GB part has the same rates).
        Device("v100", 15.7 * TFLOPS, 125 * TFLOPS, memory_gb=16, memory_bandwidth=900 * GB_S),
        # A100 SXM4 80GB: 19.5 fp32, 156 TF32, 312 fp16 dense (312 / 624 with sparsity), 2,039 GB/s
        # (NVIDIA A100 datasheet; the 40 GB part has 1,555 GB/s).
        Device("a100", 19.5 * TFLOPS, 312 * TFLOPS, peak_tf32=156 * TFLOPS, memory_gb=80,
               memory_bandwidth=2039 * GB_S),
        # H100 SXM5: 67 fp32, 494.7 TF32 and 989.4 fp16 dense (the datasheet's 989 / 1,979 are with
        # sparsity), 80 GB HBM3 at 3.35 TB/s (NVIDIA H100 datasheet).
        Device("h100", 67 * TFLOPS, 989 * TFLOPS, peak_tf32=494.7 * TFLOPS, memory_gb=80,
               memory_bandwidth=3350 * GB_S, nvls_efficiency=0.85),
        # T4: 8.1 fp32 / 65 mixed-precision tensor TFLOP/s, 16 GB GDDR6 at 320 GB/s (NVIDIA T4 datasheet).
        Device("t4", 8.1 * TFLOPS, 65 * TFLOPS, efficiency_fp32=0.5, efficiency_fp16=0.3, memory_gb=16,
               memory_bandwidth=320 * GB_S),
        # TITAN Xp (Pascal GP102): 3,840 cores at 1,582 MHz boost = 12.1 TFLOP/s fp32, 12 GB GDDR5X at
        # 547.7 GB/s (NVIDIA launch specs; AnandTech's Titan V review table). No tensor cores and fp16
        # arithmetic at 1/64 rate: mixed precision runs at about fp32 speed.
        Device("titan_xp", 12.1 * TFLOPS, 12.1 * TFLOPS, efficiency_fp16=0.6, memory_gb=12,
               memory_bandwidth=547.7 * GB_S),
        # TITAN V (Volta GV100): 5,120 cores at 1,455 MHz boost = 14.9 TFLOP/s fp32 (AnandTech lists 13.8
        # at the clock behind NVIDIA's 110), 110 tensor TFLOP/s (NVIDIA), 12 GB HBM2 at 652.8 GB/s.
        Device("titan_v", 14.9 * TFLOPS, 110 * TFLOPS, memory_gb=12, memory_bandwidth=652.8 * GB_S),
        # TITAN RTX (Turing TU102): 16.3 fp32 / 130 tensor TFLOP/s (full rate with fp32 accumulation),
        # 24 GB GDDR6 at 672 GB/s (NVIDIA launch specs, Tom's Hardware table).
        Device("titan_rtx", 16.3 * TFLOPS, 130 * TFLOPS, memory_gb=24, memory_bandwidth=672 * GB_S),
        # GeForce RTX 2060 (TU106): 1,920 cores at 1,680 MHz = 6.45 TFLOP/s fp32; 240 tensor cores make
        # 51.6 ("52") TFLOP/s fp16 with fp16 accumulation, and GeForce Turing runs fp32 accumulation
        # (mixed-precision training) at half that rate (Turing whitepaper, GeForce vs Quadro): 25.8.
        # 6 GB GDDR6 at 336 GB/s.
        Device("rtx2060", 6.5 * TFLOPS, 25.8 * TFLOPS, memory_gb=6, memory_bandwidth=336 * GB_S),
        # Quadro P4000 (Pascal GP104): 1,792 cores at 1,480 MHz = 5.3 TFLOP/s fp32, 8 GB GDDR5 at 243 GB/s
        # (NVIDIA Quadro P4000 datasheet). No tensor cores: mixed precision at about fp32 speed.
        Device("quadro_p4000", 5.3 * TFLOPS, 5.3 * TFLOPS, efficiency_fp16=0.6, memory_gb=8,
               memory_bandwidth=243 * GB_S),
        # A nominal host CPU; no measured row calibrates it (its per-layer model is the flat one).
        Device("cpu", 2 * TFLOPS, 2 * TFLOPS, efficiency_fp32=0.3, efficiency_fp16=0.3, overhead_s=20e-6,
               memory_gb=0, memory_bandwidth=100 * GB_S, calibrated=False),
    )
})
