"""simulate(config) -> Result: the one entry point for code, tests and the command line."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from omegaconf import OmegaConf

from pssim.config import Config
from pssim.metrics import chrome_trace, evals_frame, links_frame, steps_frame, summarize
from pssim.presets import to_config
from pssim.simulation import Simulation


@dataclass
class Result:
    """Everything one run produced. `save(dir)` writes the run directory's files."""

    config: Config
    summary: dict
    steps: pd.DataFrame
    evals: pd.DataFrame
    links: pd.DataFrame
    trace: dict | None
    params: torch.Tensor | None
    param_history: list[torch.Tensor] | None = None

    def save(self, directory: str | Path) -> Path:
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(self.config)))
        (out / "summary.json").write_text(json.dumps(self.summary, indent=2) + "\n")
        self.steps.to_parquet(out / "steps.parquet", index=False)
        self.evals.to_parquet(out / "evals.parquet", index=False)
        self.links.to_parquet(out / "links.parquet", index=False)
        if self.trace is not None:
            (out / "trace.json").write_text(json.dumps(self.trace))
        return out


def simulate(config: Any = None, *, record_params: bool = False, progress: bool | None = None,
             **overrides: Any) -> Result:
    """Run one simulation: the same run as `python -m pssim` with the same overrides.

    Args:
        config: the command line's override strings (``["+policy=byteps", "network=tcp_25g",
            "cluster.workers=64"]``), a dict of dotted keys, a Config or a composed DictConfig;
            None runs the defaults. Presets come from pssim/conf/, exactly as on the command line.
        record_params: keep a copy of the servers' parameters after every global step.
        progress: show a progress bar (default: config.output.progress); it appears after 2 seconds.
        **overrides: a group name picks a preset (``policy="ssp"``, ``network="rdma_100g"``); a dotted
            key sets a value (``**{"cluster.workers": 8}``).

    Returns:
        The Result; if config.output.dir is set, its files are written there too.
    """
    cfg = to_config(config, **overrides)
    sim = Simulation(cfg, record_params=record_params, progress=progress).run()
    ctx = sim.ctx
    steps = steps_frame(ctx.recorder.steps)
    evals = evals_frame(ctx.recorder.evals)
    result = Result(
        config=cfg,
        summary=summarize(ctx, sim.policy.gradients_per_update, sim.sim_time, sim.wall_s, steps, evals,
                          stalled=sim.stalled),
        steps=steps,
        evals=evals,
        links=links_frame(ctx.network, sim.sim_time),
        trace=chrome_trace(ctx) if cfg.output.trace else None,
        params=sim.params,
        param_history=sim.param_history,
    )
    if cfg.output.dir:
        result.save(cfg.output.dir)
    return result
