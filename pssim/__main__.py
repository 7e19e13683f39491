"""The command line: `python -m pssim [+policy=NAME] [key=value ...]`, a Hydra app.

This is the only module that imports Hydra. It registers the schemas, composes the config, calls the
same `simulate()` that tests call, writes the run directory and prints the summary table.
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from pssim.api import simulate
from pssim.config import Config, ConfigError, PolicyConfig
from pssim.metrics.summary import format_summary

CONFIG_PATH = "../conf"


def register_configs() -> None:
    """Put the schemas in Hydra's ConfigStore: a typo'd key or a wrongly typed value fails to compose."""
    cs = ConfigStore.instance()
    cs.store(name="pssim_schema", node=Config)
    cs.store(group="policy", name="base_policy", node=PolicyConfig)
    if not OmegaConf.has_resolver("pssim_suffix"):
        OmegaConf.register_new_resolver("pssim_suffix", lambda s: f"_{s}" if s else "")


register_configs()


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="config")
def main(cfg: DictConfig) -> dict:
    cfg.output.dir = HydraConfig.get().runtime.output_dir
    try:
        result = simulate(cfg)
    except ConfigError as err:
        print(f"pssim: error: {err}", file=sys.stderr)
        sys.exit(2)
    print(format_summary(result.summary))
    print(f"outputs: {cfg.output.dir}")
    return result.summary


if __name__ == "__main__":
    main()
