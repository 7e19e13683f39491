"""One source of configuration: the presets in pssim/conf/, composed by Hydra for the command line and
for Python alike, plus the validation that needs every registry.

`compose(overrides)` builds exactly the config `python -m pssim <overrides>` runs: the same defaults
list, the same presets, the same override grammar. This module and `pssim/__main__.py` are the only
ones that import Hydra.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pssim.cluster.device import DEVICES
from pssim.cluster.stragglers import STRAGGLER_MODELS
from pssim.cluster.topologies import TOPOLOGIES
from pssim.config import ClusterConfig, Config, ConfigError, PolicyConfig, check_core, require
from pssim.faults import FAULT_MODELS
from pssim.policies import POLICIES
from pssim.workload.data import DATASETS
from pssim.workload import conv, language  # noqa: F401  (register the cnn and bag_of_words models)
from pssim.workload.models import MODELS, build_model
from pssim.workload.profiles import PROFILES

CONFIG_DIR = Path(__file__).parent / "conf"
# Config groups a user picks a preset of; policy is added with `+` (sync is the default policy), and so
# is an experiment (a named setup that sets keys of several groups: conf/experiment/).
GROUPS = ("policy", "network", "intra", "topology", "stragglers", "faults", "workload", "profile", "cluster",
          "experiment")
ADDED_GROUPS = ("policy", "experiment")
# The key that names a group's preset: setting it alone would relabel, not load, a preset.
NAME_KEYS = {"policy.name": "policy", "network.name": "network", "intra.name": "intra",
             "topology.name": "topology", "stragglers.model": "stragglers", "faults.model": "faults", "workload.name": "workload",
             "profile.name": "profile"}


def register_schemas() -> None:
    """Put every schema in Hydra's ConfigStore: the root, and each policy's, straggler model's and
    topology's own (the presets in conf/ extend them), so a misspelt key fails to compose."""
    cs = ConfigStore.instance()
    cs.store(name="pssim_schema", node=Config)
    # The policy when none is chosen: the base schema (every policy's schema extends it, so `+policy=X`
    # merges over it); sync's own keys (policy.backup_workers) need `+policy=sync`.
    cs.store(group="policy", name="default_schema", node=PolicyConfig)
    for name, cls in POLICIES.items():
        cs.store(group="policy", name=f"{name}_schema", node=cls.Config)
    for name, schema in STRAGGLER_MODELS.items():
        cs.store(group="stragglers", name=f"{name}_schema", node=schema)
    for name, schema in TOPOLOGIES.items():
        cs.store(group="topology", name=f"{name}_schema", node=schema)
    for name, schema in FAULT_MODELS.items():
        cs.store(group="faults", name=f"{name}_schema", node=schema)
    if not OmegaConf.has_resolver("pssim_suffix"):
        OmegaConf.register_new_resolver("pssim_suffix", lambda s: f"_{s}" if s else "")
    if not OmegaConf.has_resolver("pssim_machines"):  # experiments: one CPU machine per GPU machine
        OmegaConf.register_new_resolver("pssim_machines", lambda gpus, per_machine: max(1, -(-gpus // per_machine)))


def preset_names(group: str) -> list[str]:
    """The presets of a config group, e.g. preset_names("network") -> ["efa_100g", ...]."""
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def check_overrides(overrides: Iterable[str]) -> None:
    """Refuse `network.name=tcp_25g` and the like: a name key relabels a run without loading its
    preset (the values would stay the default's). A new name for a custom set of values is allowed."""
    for item in overrides:
        key, _, value = item.lstrip("+~").partition("=")
        group = NAME_KEYS.get(key)
        if group is None:
            continue
        if group == "policy" or value in preset_names(group):
            pick = f"+policy={value}" if group == "policy" else f"{group}={value}"
            raise ConfigError(f"{key}={value} does not load the preset; choose it with {pick} "
                              f"(Python: simulate({group}={value!r})); allowed values are "
                              + ", ".join(preset_names(group)))


def normalize(override: str) -> str:
    """`policy=NAME` picks a policy as `+policy=NAME` does (sync is merged first as the default);
    `experiment=NAME` is `+experiment=NAME`."""
    return "+" + override if override.startswith(tuple(f"{g}=" for g in ADDED_GROUPS)) else override


def compose(overrides: Iterable[str] = ()) -> DictConfig:
    """The config `python -m pssim <overrides>` would run (Hydra's own composition of pssim/conf)."""
    overrides = [normalize(o) for o in overrides]
    check_overrides(overrides)
    register_schemas()
    if GlobalHydra.instance().is_initialized():  # e.g. called from inside a Hydra app
        GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(str(err).splitlines()[0]) from None


def _as_override(key: str, value: Any) -> str | None:
    """A keyword argument naming a group (network="tcp_25g") selects its preset."""
    if key in GROUPS and isinstance(value, str):
        return f"+{key}={value}" if key in ADDED_GROUPS else f"{key}={value}"
    return None


def to_config(config: Any = None, **overrides: Any) -> Config:
    """A validated Config from any of: None (the defaults), a list of command-line override strings,
    a Config, a DictConfig (already composed) or a dict of dotted keys; then keyword overrides,
    where a group name selects a preset (`policy="byteps"`, `network="tcp_25g"`) and a dotted key sets
    a value (`**{"cluster.workers": 8}`).

    >>> to_config(["+policy=ssp", "cluster.workers=8"], **{"policy.staleness": 2}).policy.staleness
    2
    """
    composed = isinstance(config, (Config, DictConfig))
    if not composed:
        overrides = {**(dict(config) if isinstance(config, dict) else {}), **overrides}
    picks = {k: o for k, v in overrides.items() if (o := _as_override(k, v))}
    overrides = {k: v for k, v in overrides.items() if k not in picks}
    if composed:
        if picks:
            raise ConfigError(f"{next(iter(picks.values()))}: presets are chosen when composing; pass a list "
                              "of overrides or a dict instead of a composed config")
        cfg = OmegaConf.structured(config) if isinstance(config, Config) else config.copy()
        OmegaConf.set_struct(cfg, True)
    else:
        strings = list(config) if isinstance(config, (list, tuple)) else []
        cfg = compose(strings + list(picks.values()))
    check_overrides(f"{k}={v}" for k, v in overrides.items())
    for key, value in overrides.items():
        if isinstance(OmegaConf.select(cfg, key, default=None), bool) and not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} is invalid: must be true or false")
        try:
            OmegaConf.update(cfg, key, value, merge=True)
        except OmegaConfBaseException as err:
            raise ConfigError(f"{key}={value!r} is invalid: {str(err).splitlines()[0]}") from None
    try:
        result = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:
        raise ConfigError(str(err).splitlines()[0]) from None
    validate(result)
    return result


def ignored_keys(c: Config) -> list[str]:
    """Keys set away from their default that the chosen policy never reads ("cluster.servers=4")."""
    default = ClusterConfig()
    policy = POLICIES[c.policy.name]
    return [f"{key}={getattr(c.cluster, key.split('.', 1)[1])}" for key in policy.ignores
            if getattr(c.cluster, key.split(".", 1)[1]) != getattr(default, key.split(".", 1)[1])]


def validate(c: Config) -> None:
    """Raise ConfigError for the first out-of-range value, naming the key and what is allowed: the core
    keys, every registry name, and each policy's, straggler model's and topology's own keys."""
    check_core(c)
    DEVICES.lookup(c.cluster.device)
    for i, name in enumerate(c.cluster.worker_devices):
        DEVICES.lookup(name, f"cluster.worker_devices[{i}]")
    for i, name in enumerate(c.cluster.gpu_devices):
        DEVICES.lookup(name, f"cluster.gpu_devices[{i}]")
    MODELS.lookup(c.workload.name)
    DATASETS.lookup(c.workload.dataset)
    PROFILES.lookup(c.profile.name)
    POLICIES.lookup(c.policy.name)
    STRAGGLER_MODELS.lookup(c.stragglers.model)
    TOPOLOGIES.lookup(c.topology.name)
    FAULT_MODELS.lookup(c.faults.model)
    for part in (c.policy, c.stragglers, c.topology, c.faults):
        part.check(c)
    try:
        model = build_model(c.workload)
    except ValueError as err:  # a model's own check of its widths
        raise ConfigError(f"workload.hidden={list(c.workload.hidden)} is invalid: {err}") from None
    require(c.cluster.servers <= model.n_params, "cluster.servers", c.cluster.servers,
            f"must be <= the model's {model.n_params} parameters (each shard holds at least one)")
