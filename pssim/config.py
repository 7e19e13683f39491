"""The run's configuration: typed schemas, defaults and validation.

The dataclasses here are the single source of truth for every key a user can type. Hydra registers them
in its ConfigStore (see ``pssim/__main__.py``), so a misspelt key fails at composition time; the value
checks in :func:`validate` then stop a run whose values are out of range, naming the key and what is
allowed. The core never imports Hydra: it receives a :class:`Config` (or anything OmegaConf can merge
into one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING, OmegaConf


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key and the allowed values."""


@dataclass
class ClusterConfig:
    """Who takes part: data-parallel workers, parameter-server shards and their devices."""

    workers: int = 4
    servers: int = 1
    # GPUs per machine; machines = workers / gpus_per_machine, joined inside by the `intra` fabric.
    gpus_per_machine: int = 1
    # CPU-only machines (BytePS runs a summation service on each).
    cpu_machines: int = 0
    # NICs per machine, bonded into one link of nics x bandwidth.
    nics_per_machine: int = 1
    device: str = "v100"
    # One device name per worker for a heterogeneous cluster; empty means every worker uses `device`.
    worker_devices: list[str] = field(default_factory=list)
    precision: str = "fp32"
    # Server CPU time to add one byte of gradient into its aggregate (summation, memory traffic).
    aggregation_ns_per_byte: float = 0.1
    # Cores of each BytePS / Herring summation service (a PS shard is one single-threaded process).
    server_cores: int = 8


@dataclass
class NetworkConfig:
    """A transport profile: NIC bandwidth, per-message overhead and the transport's costs."""

    name: str = "tcp_10g"
    transport: str = "tcp"
    bandwidth_gbps: float = 10.0
    # Fraction of line rate a transfer reaches (headers, acknowledgements, stack).
    efficiency: float = 0.9
    # Per-message software overhead of the transport (stack, syscalls, completion handling).
    latency_us: float = 25.0
    # Propagation and switching delay of one link of the route.
    hop_latency_us: float = 0.5
    # Most one flow can reach, whatever the link offers (0: no cap).
    flow_cap_gbps: float = 0.0
    # CPU time per byte at each end (TCP copies and checksums; zero for kernel-bypass RDMA).
    cpu_ns_per_byte: float = 0.25
    # Spray each message over every equal-cost path (AWS EFA's SRD) instead of one ECMP-hashed path.
    multipath: bool = False


def _nvlink() -> "NetworkConfig":
    return NetworkConfig(name="nvlink", transport="nvlink", bandwidth_gbps=1200.0, efficiency=0.8,
                         latency_us=2.0, hop_latency_us=0.0, flow_cap_gbps=0.0, cpu_ns_per_byte=0.0)


@dataclass
class TopologyConfig:
    """How the machines' NICs are wired: one switch, or racks under spine switches."""

    name: str = "star"
    # two_tier / leaf_spine: machines per rack (top-of-rack switch) and spine switches.
    hosts_per_rack: int = 4
    spines: int = 1
    # Rack downlink bandwidth over uplink bandwidth (1: non-blocking).
    oversubscription: float = 1.0


@dataclass
class ProfileConfig:
    """Timing profile: whose tensor sizes and FLOPs set time and bytes (`model`: the numerics model's own)."""

    name: str = "model"


@dataclass
class StragglerConfig:
    """Per-step slowdowns of workers' compute."""

    model: str = "none"
    # exponential: extra delay with this mean (rate lambda = 1/mean_s).
    mean_s: float = 0.0
    # lognormal: extra delay exp(N(mu, sigma)) seconds; pareto: scale_s * Lomax(alpha).
    mu: float = -6.0
    sigma: float = 1.0
    scale_s: float = 0.001
    alpha: float = 2.5
    # slow_worker: this worker's compute is `factor` times slower on every step.
    worker: int = 0
    factor: float = 2.0


@dataclass
class WorkloadConfig:
    """The real model and data every worker computes gradients on."""

    name: str = "mlp"
    dataset: str = "teacher"
    features: int = 32
    classes: int = 10
    hidden: list[int] = field(default_factory=lambda: [64])
    train_samples: int = 16384
    eval_samples: int = 2048
    # gaussian_mixture: distance between class means, in units of the noise's standard deviation.
    separation: float = 2.0
    dtype: str = "float32"


@dataclass
class TrainConfig:
    """How long to train and with which optimizer (SGD with momentum, applied by the servers)."""

    steps: int = 200
    batch_size: int = 32
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0
    target_loss: float | None = None
    # False: timing only, no gradients (for very large clusters).
    numerics: bool = True


@dataclass
class EvalConfig:
    every: int = 20


@dataclass
class PolicyConfig:
    """The synchronization policy and every policy's own knobs (each policy reads only its own)."""

    name: str = "sync"
    # ssp: a worker at clock c waits while c - min_clock > staleness.
    staleness: int = 3
    # async, ssp: each applied gradient is scaled by 1/workers ("mean") or not ("sum").
    gradient_scale: str = "mean"
    # allreduce, herring: gradients are grouped into fusion buffers of this many bytes (backward order);
    # None: the policy's own default (allreduce 64 MiB as Horovod, herring 25 MiB).
    fusion_bytes: int | None = None
    # allreduce: reduce inside the machine, ring across machines, broadcast inside.
    hierarchical: bool = False
    # byteps: tensors are cut into partitions of this many bytes, one key each.
    partition_bytes: int = 4_096_000
    # byteps: at most credit partitions of push bytes in flight per machine.
    credit: int = 4


@dataclass
class OutputConfig:
    # Where the run's tables go; None writes nothing (the Hydra app sets its run directory).
    dir: str | None = None
    trace: bool = True
    # trace.json covers the first this many global steps (0: the whole run); traces grow fast.
    trace_steps: int = 20
    progress: bool = True


@dataclass
class Config:
    seed: int = 0
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    intra: NetworkConfig = field(default_factory=_nvlink)
    topology: TopologyConfig = field(default_factory=TopologyConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    stragglers: StragglerConfig = field(default_factory=StragglerConfig)
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    output: OutputConfig = field(default_factory=OutputConfig)


def to_config(cfg: Any = None, **overrides: Any) -> Config:
    """Merge `cfg` (a Config, DictConfig or dict) and dotted `overrides` into a validated Config.

    >>> to_config(**{"cluster.workers": 8, "policy.name": "async"}).cluster.workers
    8
    """
    merged = OmegaConf.structured(Config)
    if cfg is not None:
        merged = OmegaConf.merge(merged, cfg)
    for key, value in overrides.items():
        OmegaConf.update(merged, key, value, merge=True)
    config = OmegaConf.to_object(merged)
    assert isinstance(config, Config)
    validate(config)
    return config


def _require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: {allowed}")


def _one_of(key: str, value: Any, allowed: list[str] | tuple[str, ...]) -> None:
    _require(value in allowed, key, value, "allowed values are " + ", ".join(sorted(allowed)))


def validate(c: Config) -> None:
    """Raise ConfigError for the first out-of-range value, naming the key and what is allowed."""
    from pssim.cluster.device import DEVICES
    from pssim.cluster.stragglers import STRAGGLER_MODELS
    from pssim.policies import registered
    from pssim.workload.data import DATASETS
    from pssim.workload.models import MODELS
    from pssim.workload.profiles import PROFILES

    _require(c.cluster.workers >= 1, "cluster.workers", c.cluster.workers, "must be >= 1")
    _require(c.cluster.servers >= 1, "cluster.servers", c.cluster.servers, "must be >= 1")
    _one_of("cluster.device", c.cluster.device, tuple(DEVICES))
    for i, name in enumerate(c.cluster.worker_devices):
        _one_of(f"cluster.worker_devices[{i}]", name, tuple(DEVICES))
    _require(
        len(c.cluster.worker_devices) in (0, c.cluster.workers),
        "cluster.worker_devices",
        list(c.cluster.worker_devices),
        f"give one device per worker ({c.cluster.workers}) or none",
    )
    _one_of("cluster.precision", c.cluster.precision, ("fp32", "fp16"))
    gpm = c.cluster.gpus_per_machine
    _require(gpm >= 1, "cluster.gpus_per_machine", gpm, "must be >= 1")
    _require(c.cluster.workers % gpm == 0, "cluster.gpus_per_machine", gpm,
             f"must divide cluster.workers={c.cluster.workers} (machines = workers / gpus_per_machine)")
    _require(c.cluster.server_cores >= 1, "cluster.server_cores", c.cluster.server_cores, "must be >= 1")
    _require(c.cluster.cpu_machines >= 0, "cluster.cpu_machines", c.cluster.cpu_machines, "must be >= 0")
    _require(c.cluster.nics_per_machine >= 1, "cluster.nics_per_machine", c.cluster.nics_per_machine,
             "must be >= 1")
    _require(c.cluster.aggregation_ns_per_byte >= 0, "cluster.aggregation_ns_per_byte",
             c.cluster.aggregation_ns_per_byte, "must be >= 0")

    _validate_transport("network", c.network, ("tcp", "rdma", "efa"))
    _validate_transport("intra", c.intra, ("nvlink", "pcie"))

    topo = c.topology
    _one_of("topology.name", topo.name, ("star", "two_tier", "leaf_spine"))
    _require(topo.hosts_per_rack >= 1, "topology.hosts_per_rack", topo.hosts_per_rack, "must be >= 1")
    _require(topo.spines >= 1, "topology.spines", topo.spines, "must be >= 1")
    _require(topo.oversubscription >= 1, "topology.oversubscription", topo.oversubscription,
             "must be >= 1 (1: non-blocking)")
    _one_of("profile.name", c.profile.name, tuple(PROFILES))

    s = c.stragglers
    _one_of("stragglers.model", s.model, tuple(STRAGGLER_MODELS))
    _require(s.mean_s >= 0, "stragglers.mean_s", s.mean_s, "must be >= 0")
    _require(s.sigma >= 0, "stragglers.sigma", s.sigma, "must be >= 0")
    _require(s.scale_s >= 0, "stragglers.scale_s", s.scale_s, "must be >= 0")
    _require(s.alpha > 0, "stragglers.alpha", s.alpha, "must be > 0")
    _require(s.factor >= 1, "stragglers.factor", s.factor, "must be >= 1")
    if s.model == "slow_worker":
        _require(0 <= s.worker < c.cluster.workers, "stragglers.worker", s.worker,
                 f"must be a worker index in [0, {c.cluster.workers - 1}]")

    w = c.workload
    _one_of("workload.name", w.name, tuple(MODELS))
    _one_of("workload.dataset", w.dataset, tuple(DATASETS))
    _one_of("workload.dtype", w.dtype, ("float32", "float64"))
    _require(w.features >= 1, "workload.features", w.features, "must be >= 1")
    _require(w.classes >= 2, "workload.classes", w.classes, "must be >= 2")
    _require(all(h >= 1 for h in w.hidden), "workload.hidden", list(w.hidden), "every width must be >= 1")
    _require(w.eval_samples >= 1, "workload.eval_samples", w.eval_samples, "must be >= 1")

    t = c.train
    _require(t.steps >= 1, "train.steps", t.steps, "must be >= 1")
    _require(t.batch_size >= 1, "train.batch_size", t.batch_size, "must be >= 1")
    _require(
        w.train_samples >= c.cluster.workers * t.batch_size,
        "workload.train_samples",
        w.train_samples,
        f"must be >= cluster.workers * train.batch_size = {c.cluster.workers * t.batch_size}"
        " so that every worker's shard holds a batch",
    )
    _require(t.lr > 0, "train.lr", t.lr, "must be > 0")
    _require(0 <= t.momentum < 1, "train.momentum", t.momentum, "must be in [0, 1)")
    _require(t.weight_decay >= 0, "train.weight_decay", t.weight_decay, "must be >= 0")
    _require(c.eval.every >= 1, "eval.every", c.eval.every, "must be >= 1")
    _require(c.output.trace_steps >= 0, "output.trace_steps", c.output.trace_steps, "must be >= 0 (0: all)")

    p = c.policy
    _one_of("policy.name", p.name, registered())
    _require(p.staleness >= 0, "policy.staleness", p.staleness, "must be >= 0")
    _one_of("policy.gradient_scale", p.gradient_scale, ("mean", "sum"))
    _require(p.fusion_bytes is None or p.fusion_bytes >= 1, "policy.fusion_bytes", p.fusion_bytes,
             "must be >= 1 (or null for the policy's default)")
    _require(p.partition_bytes >= 1, "policy.partition_bytes", p.partition_bytes, "must be >= 1")
    _require(p.credit >= 1, "policy.credit", p.credit, "must be >= 1")


def _validate_transport(group: str, n: NetworkConfig, kinds: tuple[str, ...]) -> None:
    _one_of(f"{group}.transport", n.transport, kinds)
    _require(n.bandwidth_gbps > 0, f"{group}.bandwidth_gbps", n.bandwidth_gbps, "must be > 0")
    _require(0 < n.efficiency <= 1, f"{group}.efficiency", n.efficiency, "must be in (0, 1]")
    _require(n.latency_us >= 0, f"{group}.latency_us", n.latency_us, "must be >= 0")
    _require(n.hop_latency_us >= 0, f"{group}.hop_latency_us", n.hop_latency_us, "must be >= 0")
    _require(n.flow_cap_gbps >= 0, f"{group}.flow_cap_gbps", n.flow_cap_gbps, "must be >= 0 (0: no cap)")
    _require(n.cpu_ns_per_byte >= 0, f"{group}.cpu_ns_per_byte", n.cpu_ns_per_byte, "must be >= 0")
