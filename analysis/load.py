"""Run directories to tables: one row per run (summary.json) and the held-out evaluations of each run.

A run directory is any directory holding a summary.json; the paths given may be single runs, sweep
directories or whole trees such as runs/. Overlapping paths do not count a run twice.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

SUMMARY = "summary.json"
EVALS = "evals.parquet"
# Columns copied from a run's summary onto each of its evaluation rows, so evals can be grouped alone.
RUN_KEYS = ["policy", "workers", "network", "run_dir"]


def find_run_dirs(*paths: str | Path) -> list[Path]:
    """Every directory at or below `paths` that holds a summary.json, sorted and without repeats."""
    found = set()
    for path in map(Path, paths):
        if path.is_file() and path.name == SUMMARY:
            found.add(path.parent.resolve())
        elif path.is_dir():
            found.update(p.parent.resolve() for p in path.rglob(SUMMARY))
    return sorted(found)


def load_runs(*paths: str | Path) -> pd.DataFrame:
    """One row per run: the keys of its summary.json plus `run_dir` (the directory, as a string).

    Keys that are null in every run (time_to_target_s when no target was set) become NaN floats
    rather than object columns, so they can be formatted and averaged like the others.
    """
    rows = [{**json.loads((d / SUMMARY).read_text()), "run_dir": str(d)} for d in find_run_dirs(*paths)]
    runs = pd.DataFrame(rows, columns=None if rows else ["run_dir"])
    for col in runs.columns:
        if runs[col].map(lambda v: v is None or isinstance(v, (int, float))).all():
            runs[col] = pd.to_numeric(runs[col])
    return runs


def load_evals(*paths: str | Path) -> pd.DataFrame:
    """Every row of every run's evals.parquet (step, sim_time_s, loss, accuracy) with RUN_KEYS attached.

    Runs without an evals.parquet are skipped; with none at all the result is empty but has the columns.
    """
    runs = load_runs(*paths)
    frames = []
    for run in runs.to_dict("records"):
        path = Path(run["run_dir"]) / EVALS
        if path.exists():
            frames.append(pd.read_parquet(path).assign(**{k: run.get(k) for k in RUN_KEYS}))
    if not frames:
        return pd.DataFrame(columns=["step", "sim_time_s", "loss", "accuracy", *RUN_KEYS])
    return pd.concat(frames, ignore_index=True)
