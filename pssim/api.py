"""simulate(config) -> Result: the one entry point for code, tests and the command line."""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from omegaconf import OmegaConf

from pssim.config import Config, ConfigError
from pssim.metrics import chrome_trace, evals_frame, links_frame, steps_frame, summarize
from pssim.metrics.tables import faults_frame
from pssim.policies import POLICIES
from pssim.presets import ignored_keys, to_config
from pssim.simulation import Simulation


@dataclass
class Result:
    """Everything one run produced. `save(dir)` writes the run directory's files."""

    config: Config
    summary: dict
    steps: pd.DataFrame
    evals: pd.DataFrame
    links: pd.DataFrame
    faults: pd.DataFrame  # one row per fault (empty with faults=none)
    trace: dict | None
    params: torch.Tensor | None
    param_history: list[torch.Tensor] | None = None

    def save(self, directory: str | Path) -> Path:
        """Write the run directory. Each file is written under a temporary name and renamed into place,
        summary.json last, so a directory with a summary.json is complete; outputs of an earlier run
        in the same directory that this run does not write (a trace.json) are removed first."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        for name in OUTPUT_FILES:
            (out / name).unlink(missing_ok=True)
        _write(out / "config.yaml", lambda p: p.write_text(OmegaConf.to_yaml(OmegaConf.structured(self.config))))
        _write(out / "steps.parquet", lambda p: self.steps.to_parquet(p, index=False))
        _write(out / "evals.parquet", lambda p: self.evals.to_parquet(p, index=False))
        _write(out / "links.parquet", lambda p: self.links.to_parquet(p, index=False))
        _write(out / "faults.parquet", lambda p: self.faults.to_parquet(p, index=False))
        if self.trace is not None:
            _write(out / "trace.json", lambda p: p.write_text(json.dumps(self.trace)))
        _write(out / "summary.json", lambda p: p.write_text(json.dumps(self.summary, indent=2, allow_nan=False) + "\n"))
        return out


class IgnoredKeyWarning(UserWarning):
    """A key was set that the chosen policy never reads."""


OUTPUT_FILES = ("summary.json", "config.yaml", "steps.parquet", "evals.parquet", "links.parquet", "faults.parquet",
                "trace.json")


def _write(path: Path, write) -> None:
    """write(tmp) then rename tmp to path: a reader never sees a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def check_writable(directory: str | Path) -> None:
    """Fail before the run, not after it, if the run directory cannot be written."""
    out = Path(directory)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".pssim-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"output.dir={str(directory)!r} is not writable: {err.strerror or err}") from None


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
    for item in ignored_keys(cfg):
        warnings.warn(f"{item} is ignored by policy {cfg.policy.name}", IgnoredKeyWarning, stacklevel=2)
    if cfg.output.dir:
        check_writable(cfg.output.dir)
    cfg, planned = POLICIES[cfg.policy.name].plan(cfg, seconds_per_step)
    sim = Simulation(cfg, record_params=record_params, progress=progress).run()
    ctx = sim.ctx
    steps = steps_frame(ctx.recorder.steps)
    evals = evals_frame(ctx.recorder.evals)
    result = Result(
        config=cfg,
        summary=summarize(ctx, sim.policy.gradients_per_update, sim.sim_time, sim.wall_s, steps, evals,
                          status=sim.status, diverged_at=sim.diverged_at, diagnosis=sim.diagnosis),
        steps=steps,
        evals=evals,
        links=links_frame(ctx.network, sim.sim_time),
        faults=faults_frame(getattr(ctx.recorder, "faults", [])),
        trace=chrome_trace(ctx) if cfg.output.trace else None,
        params=sim.params,
        param_history=sim.param_history,
    )
    result.summary.update(planned)
    if cfg.output.dir:
        result.save(cfg.output.dir)
    return result


def seconds_per_step(config: Config) -> float:
    """A trial run's simulated seconds per global step (a policy's `plan` times its candidates with it)."""
    sim = Simulation(config, progress=False).run()
    return sim.sim_time / max(1, sim.ctx.progress.global_step)
