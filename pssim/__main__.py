"""The command line: `python -m pssim [+policy=NAME] [key=value ...]`, a Hydra app.

It composes pssim/conf/ with the schemas pssim.presets registers (the same composition
`pssim.simulate([...])` uses), calls `simulate()`, writes the run directory and prints the summary table.
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from pssim.api import simulate
from pssim.config import ConfigError
from pssim.metrics.summary import format_summary
from pssim.presets import CONFIG_DIR, check_overrides, register_schemas

register_schemas()


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def main(cfg: DictConfig) -> dict:
    cfg.output.dir = HydraConfig.get().runtime.output_dir
    try:
        check_overrides(HydraConfig.get().overrides.task)
        result = simulate(cfg)
    except ConfigError as err:
        print(f"pssim: error: {err}", file=sys.stderr)
        sys.exit(2)
    print(format_summary(result.summary))
    print(f"outputs: {cfg.output.dir}")
    return result.summary


if __name__ == "__main__":
    main()
