"""Run directories to tables.

`load_runs` gives the tidy table: one row per run, every key of its summary.json plus every key of its
config flattened to a dotted column (`cluster.workers`, `policy.staleness`, `network.name`, ...), plus
`run_dir`, `gpus` (workers x GPUs per worker) and `config_source` (where the config columns came from).
`load_evals`, `load_steps` and `load_links` give the rows of each run's parquet file with `run_dir`
attached, to be joined with the runs table.

A run directory is any directory holding a summary.json; the paths given may be single runs, sweep
directories or whole trees such as runs/. Overlapping paths do not count a run twice.

The config columns come from the run's config.yaml (the whole validated config, every key); a run
without one falls back to Hydra's .hydra/config.yaml, and a run with neither (older runs) to the
config values its summary.json repeats (SUMMARY_CONFIG: policy, workers, network, device, seed, ...), so it still loads and still lines up with newer runs on those keys. Nothing here knows
the simulator's keys: whatever config.yaml holds becomes a column.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import yaml

SUMMARY = "summary.json"
CONFIG = "config.yaml"
HYDRA_CONFIG = Path(".hydra") / "config.yaml"
HYDRA_OVERRIDES = Path(".hydra") / "overrides.yaml"

# summary.json repeats these config values under short names: the config key each one is.
SUMMARY_CONFIG = {
    "policy": "policy.name",
    "workers": "cluster.workers",
    "servers": "cluster.servers",
    "network": "network.name",
    "workload": "workload.name",
    "device": "cluster.device",
    "seed": "seed",
    "target_loss": "train.target_loss",
    "gpus_per_machine": "cluster.gpus_per_machine",
    "topology": "topology.name",
    "profile": "profile.name",
    "precision": "cluster.precision",
    "stragglers": "stragglers.model",
    "batch_size": "train.batch_size",
}
# Columns the loader adds that are neither summary nor config keys.
META = ["run_dir", "gpus", "config_source", "overrides"]


def find_run_dirs(*paths: str | Path) -> list[Path]:
    """Every directory at or below `paths` that holds a summary.json, sorted and without repeats."""
    found = set()
    for path in map(Path, paths):
        if path.is_file() and path.name == SUMMARY:
            found.add(path.parent.resolve())
        elif path.is_dir():
            found.update(p.parent.resolve() for p in path.rglob(SUMMARY))
    return sorted(found)


def flatten(tree, prefix: str = "") -> dict:
    """A nested mapping as {dotted.key: value}; lists become their compact JSON text ('[64]')."""
    flat = {}
    for key, value in (tree or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        elif isinstance(value, (list, tuple)):
            flat[name] = json.dumps(list(value), separators=(",", ":"))
        else:
            flat[name] = value
    return flat


def _config_of(run_dir: Path, summary: dict) -> tuple[dict, str]:
    """(dotted config, source): config.yaml, else .hydra/config.yaml, else the summary's config keys."""
    for name, source in ((CONFIG, "config.yaml"), (HYDRA_CONFIG, ".hydra/config.yaml")):
        path = run_dir / name
        if path.exists():
            config = flatten(yaml.safe_load(path.read_text()))
            for short, key in SUMMARY_CONFIG.items():  # a partial config: the summary fills the gaps
                if key not in config and short in summary:
                    config[key] = summary[short]
            return config, source
    return {key: summary[short] for short, key in SUMMARY_CONFIG.items() if short in summary}, "summary.json"


def _overrides_of(run_dir: Path) -> str:
    """The keys typed on the command line (.hydra/overrides.yaml), comma separated; '' if none."""
    path = run_dir / HYDRA_OVERRIDES
    if not path.exists():
        return ""
    keys = [str(o).split("=", 1)[0].lstrip("+~") for o in yaml.safe_load(path.read_text()) or []]
    return ",".join(keys)


def _numeric(frame: pd.DataFrame) -> pd.DataFrame:
    """Columns holding only numbers and nulls become numeric (null everywhere: NaN floats, not objects)."""
    for col in frame.columns:
        values = frame[col]
        if values.map(lambda v: v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))).all():
            frame[col] = pd.to_numeric(values)
    return frame


def load_runs(*paths: str | Path) -> pd.DataFrame:
    """One row per run: its summary.json keys, every config key as a dotted column, and META.

    Keys that are null in every run (time_to_target_s when no target was set) become NaN floats
    rather than object columns, so they can be formatted and averaged like the others. A key a run
    does not have (policy.staleness for a sync run) is NaN in that run's row.
    """
    rows = []
    for run_dir in find_run_dirs(*paths):
        summary = json.loads((run_dir / SUMMARY).read_text())
        config, source = _config_of(run_dir, summary)
        rows.append({**summary, **config, "run_dir": str(run_dir), "config_source": source,
                     "overrides": _overrides_of(run_dir)})
    if not rows:
        return pd.DataFrame(columns=[*SUMMARY_CONFIG, *SUMMARY_CONFIG.values(), *META])
    runs = _numeric(pd.DataFrame(rows))
    per_worker = runs["cluster.gpus_per_worker"] if "cluster.gpus_per_worker" in runs else 1
    gpus = runs["cluster.workers"] * pd.Series(per_worker, index=runs.index).fillna(1)
    if "gpus" in runs:  # newer summaries say it themselves
        gpus = pd.to_numeric(runs["gpus"]).fillna(gpus)
    runs["gpus"] = gpus.astype(int)
    return runs


def _load_table(name: str, paths, runs: pd.DataFrame | None, columns: list[str]) -> pd.DataFrame:
    """Every row of every run's `name` parquet file with run_dir attached (runs without it skipped)."""
    runs = load_runs(*paths) if runs is None else runs
    frames = []
    for run_dir in runs["run_dir"]:
        path = Path(run_dir) / name
        if path.exists():
            frames.append(pd.read_parquet(path).assign(run_dir=run_dir))
    if not frames:
        return pd.DataFrame(columns=[*columns, "run_dir"])
    return pd.concat(frames, ignore_index=True)


def _with_run_keys(table: pd.DataFrame, runs: pd.DataFrame | None, paths) -> pd.DataFrame:
    """Attach the runs' short keys (policy, workers, network) so a table can be grouped alone."""
    runs = load_runs(*paths) if runs is None else runs
    keys = [k for k in ("policy", "workers", "network") if k in runs]
    return table.merge(runs[["run_dir", *keys]], on="run_dir", how="left") if keys else table


def load_evals(*paths: str | Path, runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every row of every run's evals.parquet (step, sim_time_s, loss, accuracy), with run_dir,
    policy, workers and network attached. Empty (with those columns) when no run has evaluations."""
    runs = load_runs(*paths) if runs is None else runs
    table = _load_table("evals.parquet", paths, runs, ["step", "sim_time_s", "loss", "accuracy"])
    if table.empty:
        return table.reindex(columns=[*table.columns, "policy", "workers", "network"])
    return _with_run_keys(table, runs, paths)


def load_steps(*paths: str | Path, runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every row of every run's steps.parquet (one per worker step), with run_dir attached."""
    return _load_table("steps.parquet", paths, runs, ["worker", "step", "staleness", "clock_lead"])


def load_links(*paths: str | Path, runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every row of every run's links.parquet (one per link direction), with run_dir attached."""
    return _load_table("links.parquet", paths, runs, ["link", "bytes", "busy_fraction", "utilisation"])
