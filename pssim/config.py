"""The run's configuration: typed schemas of the core keys, and the helpers every validation uses.

This module is the bottom layer: it imports nothing of pssim. It holds the schemas of the keys every
run has (cluster, network, workload, train, ...) and the BASE schemas of the pluggable parts: a
policy, a straggler model and a topology each subclass `PolicyConfig`, `StragglerConfig` or
`TopologyConfig` next to their own code, add their own keys and check their own values in `check`.
Preset values live once, in `pssim/conf/` (Hydra's config groups); `pssim.presets` composes them and
is the one place that knows every registry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from omegaconf import MISSING


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key and the allowed values."""


def require(ok: bool, key: str, value: Any, allowed: str) -> None:
    """Raise ConfigError("key=value is invalid: allowed") unless `ok`."""
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: {allowed}")


def finite(key: str, value: Any, at_most: float | None = None) -> None:
    """A number must be finite (and at most `at_most`): inf or NaN would drive the clock to inf or NaN."""
    require(isinstance(value, (int, float)) and math.isfinite(value), key, value, "must be a finite number")
    if at_most is not None:
        require(abs(value) <= at_most, key, value, f"must be at most {at_most:g} in magnitude")


def check_all_finite(node: Any, prefix: str) -> None:
    """Every float of a schema (recursively) must be finite."""
    for f in fields(node):
        value = getattr(node, f.name)
        if is_dataclass(value):
            check_all_finite(value, f"{prefix}{f.name}.")
        elif isinstance(value, float):
            finite(f"{prefix}{f.name}", value)


def one_of(key: str, value: Any, allowed) -> None:
    require(value in allowed, key, value, "allowed values are " + ", ".join(sorted(allowed)))


# cluster.precision: the arithmetic a GPU trains in; cluster.compute: how compute time is set
# (pssim/cluster/compute.py, docs/MODELS.md Compute).
PRECISIONS = ("fp32", "tf32", "fp16")
COMPUTE_MODES = ("measured", "model", "ideal")


@dataclass
class ClusterConfig:
    """Who takes part: data-parallel workers, parameter-server shards and their devices."""

    # Data-parallel workers (replicas).
    workers: int = 4
    # Parameter-server shards (sync, async, ssp), each on its own host, balanced by bytes.
    servers: int = 1
    # GPUs of one data-parallel replica (its pipeline stages); GPUs = workers x gpus_per_worker.
    gpus_per_worker: int = 1
    # GPUs per machine; machines = GPUs / gpus_per_machine, joined inside by the `intra` fabric.
    gpus_per_machine: int = 1
    # CPU-only machines (BytePS runs a summation service on each).
    cpu_machines: int = 0
    # NICs per machine, bonded into one link of nics x bandwidth.
    nics_per_machine: int = 1
    # GPU type of every worker: v100, a100, h100, t4, titan_xp, titan_v, titan_rtx, rtx2060,
    # quadro_p4000, cpu (`pssim list devices`).
    device: str = "v100"
    # One device name per worker for a heterogeneous cluster; empty means every worker uses `device`.
    worker_devices: list[str] = field(default_factory=list)
    # One device name per GPU, machine by machine (machine j holds GPUs j*g .. j*g + g - 1 of
    # gpus_per_machine = g): a heterogeneous cluster whose replicas may span GPUs of several types
    # (HetPipe's virtual workers); empty means worker_devices (or `device`) decides.
    gpu_devices: list[str] = field(default_factory=list)
    # fp32; tf32 (TF32 tensor cores, A100/H100; fp32 elsewhere); fp16 (mixed precision on tensor cores;
    # about fp32 speed on GPUs without them).
    precision: str = "fp32"
    # How compute time is set: measured (a one-GPU step takes batch / the measured throughput of the
    # device, profile and precision where one is known, else as model), model (per-layer op-type
    # efficiencies fit on measured rows), ideal (FLOPs at a flat efficiency per device).
    compute: str = "measured"
    # Measured training throughput of one GPU on the timing profile, samples/s (compute=measured only);
    # overrides the table. null: the table.
    samples_per_s: float | None = None
    # Server CPU time to add one byte of gradient into its aggregate (summation, memory traffic).
    aggregation_ns_per_byte: float = 0.1
    # Cores of each BytePS / Herring summation service (a PS shard is one single-threaded process).
    server_cores: int = 8

    @property
    def gpus(self) -> int:
        return self.workers * self.gpus_per_worker


@dataclass
class NetworkConfig:
    """A transport profile (a preset of the `network` or `intra` group): every value comes from the preset."""

    name: str = MISSING
    # tcp, rdma, efa (network); nvlink, pcie (intra).
    transport: str = MISSING
    # Line rate of one NIC (or intra-node link), one direction.
    bandwidth_gbps: float = MISSING
    # Fraction of line rate a transfer reaches (headers, acknowledgements, stack).
    efficiency: float = MISSING
    # Per-message software overhead of the transport (stack, syscalls, completion handling).
    latency_us: float = MISSING
    # Propagation and switching delay of one link of the route.
    hop_latency_us: float = MISSING
    # Most one flow can reach, whatever the link offers (0: no cap).
    flow_cap_gbps: float = MISSING
    # CPU time per byte at each end (TCP copies and checksums; zero for kernel-bypass RDMA).
    cpu_ns_per_byte: float = MISSING
    # Spray each message over every equal-cost path (AWS EFA's SRD) instead of one ECMP-hashed path.
    multipath: bool = False
    # A shared cloud fabric's per-VM share (network group only): with m GPU machines in the job, every NIC's
    # line rate and flow cap are divided by 1 + beta (m - 1) (`Transport.fabric_share`). 0: a dedicated
    # fabric, every NIC at its line rate whatever the job's size.
    fabric_share_beta: float = 0.0

    def check(self, group: str, kinds: tuple[str, ...]) -> None:
        one_of(f"{group}.transport", self.transport, kinds)
        require(0 < self.bandwidth_gbps <= 1e6, f"{group}.bandwidth_gbps", self.bandwidth_gbps,
                "must be in (0, 1e6] Gb/s")
        require(0 < self.efficiency <= 1, f"{group}.efficiency", self.efficiency, "must be in (0, 1]")
        require(0 <= self.latency_us <= 1e6, f"{group}.latency_us", self.latency_us, "must be in [0, 1e6] us")
        require(0 <= self.hop_latency_us <= 1e6, f"{group}.hop_latency_us", self.hop_latency_us,
                "must be in [0, 1e6] us")
        require(0 <= self.flow_cap_gbps <= 1e6, f"{group}.flow_cap_gbps", self.flow_cap_gbps,
                "must be in [0, 1e6] Gb/s (0: no cap)")
        require(0 <= self.cpu_ns_per_byte <= 1e6, f"{group}.cpu_ns_per_byte", self.cpu_ns_per_byte,
                "must be in [0, 1e6] ns per byte")
        limit = 0.0 if group == "intra" else 1e3  # inside a machine there is no shared fabric
        require(0 <= self.fabric_share_beta <= limit, f"{group}.fabric_share_beta", self.fabric_share_beta,
                "must be 0 (an intra-node fabric)" if group == "intra" else "must be in [0, 1000]")


@dataclass
class IntraConfig(NetworkConfig):
    """An intra-node fabric preset (the `intra` group): the GPU-to-GPU links, and each GPU's PCIe link to
    its host. GPU <-> host copies (CPU memory, the NIC) cross PCIe even where the GPUs talk over NVLink."""

    # Line rate of each GPU's own PCIe link to its host, one direction (PCIe 3/4/5 x16: 128/256/512);
    # 0: the GPU-to-GPU links are themselves PCIe (a PCIe-only machine) and carry the host traffic too.
    pcie_gbps: float = 0.0
    # Fraction of the PCIe line rate a copy reaches (PCIe 3 x16 delivers ~12.5 of its 16 GB/s).
    pcie_efficiency: float = 0.78
    # Per-copy overhead (a cudaMemcpy's launch and completion).
    pcie_latency_us: float = 3.0

    def check(self, group: str, kinds: tuple[str, ...]) -> None:
        super().check(group, kinds)
        require(0 <= self.pcie_gbps <= 1e6, f"{group}.pcie_gbps", self.pcie_gbps,
                "must be in [0, 1e6] Gb/s (0: the intra links are PCIe)")
        require(0 < self.pcie_efficiency <= 1, f"{group}.pcie_efficiency", self.pcie_efficiency, "must be in (0, 1]")
        require(0 <= self.pcie_latency_us <= 1e6, f"{group}.pcie_latency_us", self.pcie_latency_us,
                "must be in [0, 1e6] us")


@dataclass
class TopologyConfig:
    """Base schema of a topology (star, two_tier, leaf_spine subclass it in pssim/network/topology.py)."""

    name: str = MISSING

    def check(self, config: "Config") -> None:
        """Raise ConfigError for an out-of-range value of this topology's own keys."""


@dataclass
class ProfileConfig:
    """Timing profile: whose tensor sizes and FLOPs set time and bytes (`model`: the numerics model's own)."""

    name: str = MISSING


@dataclass
class StragglerConfig:
    """Base schema of a straggler model (each model subclasses it in pssim/cluster/stragglers.py)."""

    model: str = MISSING

    def check(self, config: "Config") -> None:
        """Raise ConfigError for an out-of-range value of this model's own keys."""


@dataclass
class FaultsConfig:
    """Base schema of a fault model (none, scheduled, mtbf subclass it in pssim/faults.py)."""

    model: str = MISSING

    def check(self, config: "Config") -> None:
        """Raise ConfigError for an out-of-range value of this fault model's own keys."""


@dataclass
class WorkloadConfig:
    """The real model and data every worker computes gradients on."""

    name: str = MISSING
    # teacher (labels from a random two-layer network) or gaussian_mixture.
    dataset: str = MISSING
    # Input features and classes of the generated data.
    features: int = 32
    classes: int = 10
    # Hidden layer widths of the MLP (ignored by softmax).
    hidden: list[int] = field(default_factory=lambda: [64])
    # Generated training samples (cut into one shard per worker) and held-out samples.
    train_samples: int = 16384
    eval_samples: int = 2048
    # gaussian_mixture: distance between class means, in units of the noise's standard deviation.
    separation: float = 2.0
    # sparse_logistic: fraction of the features set in each sample (its nonzeros), in (0, 1].
    density: float = 0.01
    # zipf_topics (bag_of_words): tokens per sample, and the Zipf exponent of token popularity.
    context: int = 8
    zipf: float = 1.0
    # float32, or float64 for exact comparisons.
    dtype: str = "float32"


OPTIMIZERS = ("sgd", "adam", "rmsprop")  # pssim/workload/optimizer.py implements them


@dataclass
class TrainConfig:
    """How long to train and with which optimizer (applied by the servers, or by every replica)."""

    # Global model updates to run (BSP: rounds of n gradients; ASP/SSP: single gradients).
    steps: int = 200
    # A sample budget instead (overrides steps): run until this many training samples have been folded
    # into the model, so that policies compare on equal samples. Rounded up to a whole global step.
    samples: int | None = None
    # Per worker.
    batch_size: int = 32
    # The optimizer on the servers (or on every replica), as torch.optim's: sgd (with momentum), adam,
    # rmsprop. Its state is sharded across the servers with the parameters.
    optimizer: str = "sgd"
    # Learning rate and L2 weight decay (all three); momentum (sgd, rmsprop).
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0
    # Adam's (beta1, beta2); Adam's and RMSProp's eps; RMSProp's smoothing constant alpha.
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    alpha: float = 0.99
    # Linear learning-rate warm-up (Goyal et al. 2017): the t-th update of the model (of a server shard)
    # uses lr x min(1, t / warmup_steps); 0: none.
    warmup_steps: int = 0
    # Held-out loss whose first crossing sets time_to_target_s (checked after every global step).
    target_loss: float | None = None
    # False: timing only, no gradients (for very large clusters).
    numerics: bool = True


@dataclass
class EvalConfig:
    """When the held-out set is evaluated (the evals table)."""

    # Every this many global steps (BSP: rounds; ASP/SSP: single gradients).
    every: int = 20
    # Every this many training samples instead (overrides every): every policy evaluated equally often.
    every_samples: int | None = None


@dataclass
class PolicyConfig:
    """Base schema of a policy, and sync's own (it has no knobs). Each policy that has knobs subclasses
    it next to its code; `check` validates them."""

    name: str = "sync"

    def check(self, config: "Config") -> None:
        """Raise ConfigError for an out-of-range value of this policy's own keys."""


@dataclass
class OutputConfig:
    # Where the run's tables go; None writes nothing (the Hydra app sets its run directory).
    dir: str | None = None
    # Write trace.json (Chrome/Perfetto format).
    trace: bool = True
    # trace.json covers the first this many global steps (0: the whole run); traces grow fast.
    trace_steps: int = 20
    # Show a progress bar (after 2 s) and warnings about long runs.
    progress: bool = True
    # Rerun even if the run directory already holds a completed run of the same config (sweeps rerun
    # into the same hydra.sweep.dir skip those otherwise).
    force: bool = False


@dataclass
class Config:
    seed: int = 0
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    network: NetworkConfig = MISSING
    intra: IntraConfig = MISSING
    topology: TopologyConfig = MISSING
    profile: ProfileConfig = MISSING
    stragglers: StragglerConfig = MISSING
    faults: FaultsConfig = MISSING
    workload: WorkloadConfig = MISSING
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    policy: PolicyConfig = MISSING
    output: OutputConfig = field(default_factory=OutputConfig)


def check_core(c: Config) -> None:
    """The checks of the core keys, which need no registry (pssim.presets.validate runs the rest)."""
    for section in ("cluster", "network", "intra", "workload", "train", "eval", "output"):
        check_all_finite(getattr(c, section), f"{section}.")
    require(0 <= c.seed < 2 ** 63, "seed", c.seed, "must be in [0, 2**63)")
    cl = c.cluster
    require(cl.workers >= 1, "cluster.workers", cl.workers, "must be >= 1")
    require(cl.servers >= 1, "cluster.servers", cl.servers, "must be >= 1")
    require(cl.gpus_per_worker >= 1, "cluster.gpus_per_worker", cl.gpus_per_worker, "must be >= 1")
    require(len(cl.worker_devices) in (0, cl.workers), "cluster.worker_devices", list(cl.worker_devices),
            f"give one device per worker ({cl.workers}) or none")
    require(len(cl.gpu_devices) in (0, cl.gpus), "cluster.gpu_devices", list(cl.gpu_devices),
            f"give one device per GPU (cluster.workers x cluster.gpus_per_worker = {cl.gpus}) or none")
    require(not (cl.gpu_devices and cl.worker_devices), "cluster.gpu_devices", list(cl.gpu_devices),
            "set either cluster.gpu_devices (per GPU) or cluster.worker_devices (per worker), not both")
    one_of("cluster.precision", cl.precision, PRECISIONS)
    one_of("cluster.compute", cl.compute, COMPUTE_MODES)
    if cl.samples_per_s is not None:
        require(0 < cl.samples_per_s <= 1e9, "cluster.samples_per_s", cl.samples_per_s,
                "must be in (0, 1e9] samples/s (or null: the measured table)")
        require(cl.compute == "measured", "cluster.samples_per_s", cl.samples_per_s,
                f"is read only with cluster.compute=measured, not {cl.compute}")
        require(len(set(cl.worker_devices)) <= 1 and len(set(cl.gpu_devices)) <= 1, "cluster.samples_per_s",
                cl.samples_per_s,
                "is one device's throughput: with several cluster.worker_devices register a row per device"
                " (pssim.cluster.compute.register_measured)")
    gpm = cl.gpus_per_machine
    require(gpm >= 1, "cluster.gpus_per_machine", gpm, "must be >= 1")
    require(cl.gpus % gpm == 0, "cluster.gpus_per_machine", gpm,
            f"must divide the GPUs (cluster.workers x cluster.gpus_per_worker = {cl.gpus});"
            " machines = GPUs / gpus_per_machine")
    require(cl.server_cores >= 1, "cluster.server_cores", cl.server_cores, "must be >= 1")
    require(cl.cpu_machines >= 0, "cluster.cpu_machines", cl.cpu_machines, "must be >= 0")
    require(cl.nics_per_machine >= 1, "cluster.nics_per_machine", cl.nics_per_machine, "must be >= 1")
    require(0 <= cl.aggregation_ns_per_byte <= 1e6, "cluster.aggregation_ns_per_byte", cl.aggregation_ns_per_byte,
            "must be in [0, 1e6] ns per byte")
    require(cl.workers <= 1_000_000, "cluster.workers", cl.workers, "must be <= 1,000,000")
    c.network.check("network", ("tcp", "rdma", "efa"))
    c.intra.check("intra", ("nvlink", "pcie"))

    w = c.workload
    one_of("workload.dtype", w.dtype, ("float32", "float64"))
    require(w.features >= 1, "workload.features", w.features, "must be >= 1")
    require(w.classes >= 2, "workload.classes", w.classes, "must be >= 2")
    require(all(h >= 1 for h in w.hidden), "workload.hidden", list(w.hidden), "every width must be >= 1")
    require(w.eval_samples >= 1, "workload.eval_samples", w.eval_samples, "must be >= 1")
    require(0 <= w.separation <= 1e6, "workload.separation", w.separation, "must be in [0, 1e6]")
    require(math.isfinite(w.density) and 0 < w.density <= 1, "workload.density", w.density, "must be in (0, 1]")
    require(w.classes <= 10_000, "workload.classes", w.classes, "must be <= 10,000")
    require(1 <= w.context <= 10_000, "workload.context", w.context, "must be in [1, 10,000] tokens")
    require(math.isfinite(w.zipf) and 0 <= w.zipf <= 10, "workload.zipf", w.zipf, "must be in [0, 10]")
    if c.train.numerics:  # the generated data must fit in memory (8 bytes a value at most)
        row = w.context if w.dataset == "zipf_topics" else w.features  # token ids, or features
        data_bytes = (w.train_samples + w.eval_samples) * row * 8
        require(data_bytes <= 8e9, "workload.train_samples", w.train_samples,
                f"with {row} values a sample the data set would take {data_bytes / 1e9:.0f} GB; at most 8 GB")

    t = c.train
    require(t.steps >= 1, "train.steps", t.steps, "must be >= 1")
    require(t.samples is None or t.samples >= 1, "train.samples", t.samples, "must be >= 1 (or null: use train.steps)")
    require(t.batch_size >= 1, "train.batch_size", t.batch_size, "must be >= 1")
    if t.numerics:  # timing-only runs never read the data set
        require(w.train_samples >= cl.workers * t.batch_size, "workload.train_samples", w.train_samples,
                f"must be >= cluster.workers * train.batch_size = {cl.workers * t.batch_size}"
                " so that every worker's shard holds a batch")
    require(0 < t.lr <= 1e6, "train.lr", t.lr, "must be in (0, 1e6]")
    require(t.target_loss is None or 0 <= t.target_loss <= 1e6, "train.target_loss", t.target_loss,
            "must be in [0, 1e6] (a cross-entropy), or null")
    require(0 <= t.momentum < 1, "train.momentum", t.momentum, "must be in [0, 1)")
    one_of("train.optimizer", t.optimizer, OPTIMIZERS)
    require(len(t.betas) == 2 and all(0 <= b < 1 for b in t.betas), "train.betas", list(t.betas),
            "must be two numbers in [0, 1) (Adam's beta1, beta2)")
    require(0 < t.eps <= 1, "train.eps", t.eps, "must be in (0, 1]")
    require(0 <= t.alpha < 1, "train.alpha", t.alpha, "must be in [0, 1)")
    require(0 <= t.warmup_steps <= 10_000_000, "train.warmup_steps", t.warmup_steps, "must be in [0, 1e7] (0: no warm-up)")
    require(0 <= t.weight_decay <= 1e3, "train.weight_decay", t.weight_decay, "must be in [0, 1e3]")
    require(c.eval.every >= 1, "eval.every", c.eval.every, "must be >= 1")
    require(c.eval.every_samples is None or c.eval.every_samples >= 1, "eval.every_samples", c.eval.every_samples,
            "must be >= 1 (or null: use eval.every)")
    require(c.output.trace_steps >= 0, "output.trace_steps", c.output.trace_steps, "must be >= 0 (0: all)")
