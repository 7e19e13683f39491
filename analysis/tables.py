"""The numbers behind each figure, as DataFrames: computed here, drawn in figures.py, exported as CSV/Markdown.

Every function takes the tidy runs table (analysis.load.load_runs, with a `line` column from
analysis.groups.assign_lines) and returns one row per point drawn, with the line's keys as columns.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.groups import SEED, Lines, assign_lines, distinct, fmt, norm

# summary.json keys that are results (the others repeat config values), in the order tables show them.
METRICS = ["global_steps", "samples", "sim_time_s", "throughput_samples_per_s", "mean_iteration_s",
           "mean_compute_s", "mean_communication_s", "mean_staleness", "max_staleness", "final_loss",
           "final_accuracy", "time_to_target_s", "bytes_sent"]


def _stats(values: pd.Series, prefix: str) -> dict:
    values = values.dropna()
    return {f"{prefix}": values.mean(), f"{prefix}_min": values.min(), f"{prefix}_max": values.max(),
            f"{prefix}_std": values.std(ddof=1) if len(values) > 1 else 0.0}


def line_columns(runs: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """One row per line: its label and the values of the keys that define it."""
    return runs.drop_duplicates("line")[["line", *keys]].reset_index(drop=True)


def scaling_table(runs: pd.DataFrame, x: str, lines: Lines | None = None) -> pd.DataFrame:
    """Throughput and scaling efficiency per line and x (GPUs), over the runs of each point (seeds).

    throughput: mean of the runs' throughput_samples_per_s, with _min, _max and _std over them.
    ideal_throughput(n) = throughput(n_min) x n / n_min, n_min the line's smallest x.
    efficiency(n) = throughput(n) / ideal_throughput(n) (1 at n_min by definition); efficiency_min and
    _max are the same ratio for the slowest and fastest run of the point.
    Without `lines`, lines are every varying key but x (analysis.groups.assign_lines).
    """
    if lines is None:
        runs, lines = assign_lines(runs, exclude=[x])
    rows = []
    for (line, xv), group in runs.groupby(["line", x], sort=False):
        rows.append({"line": line, x: xv, "runs": len(group), "seeds": _seeds(group),
                     **_stats(group["throughput_samples_per_s"], "throughput")})
    table = pd.DataFrame(rows).sort_values(["line", x], kind="stable")
    first = table.groupby("line")[[x, "throughput"]].transform("first")
    table["ideal_throughput"] = first["throughput"] * table[x] / first[x]
    for suffix in ("", "_min", "_max"):
        table[f"efficiency{suffix}"] = table[f"throughput{suffix}"] / table["ideal_throughput"]
    table["efficiency_std"] = table["throughput_std"] / table["ideal_throughput"]
    return with_keys(table, runs, lines)


def _seeds(group: pd.DataFrame) -> str:
    return " ".join(fmt(s) for s in distinct(group[SEED])) if SEED in group else ""


def with_keys(table: pd.DataFrame, runs: pd.DataFrame, lines: Lines) -> pd.DataFrame:
    """The line's keys as columns, right after the label; rows in the lines' display order."""
    keys = [k for k in lines.keys if k not in table]
    merged = table.merge(line_columns(runs, keys), on="line", how="left")
    order = {label: i for i, label in enumerate(lines.labels)}
    merged = merged.assign(_o=merged["line"].map(order)).sort_values("_o", kind="stable").drop(columns="_o")
    first = ["line", *keys]
    return merged[first + [c for c in merged.columns if c not in first]].reset_index(drop=True)


def breakdown_table(runs: pd.DataFrame, lines: Lines | None = None) -> pd.DataFrame:
    """Mean compute and communication time per iteration per line and GPU count (mean over runs).

    iteration_min/_max: the spread of compute + communication over the runs of the point.
    """
    if lines is None:
        runs, lines = assign_lines(runs, exclude=["gpus"])
    rows = []
    for (line, gpus), group in runs.groupby(["line", "gpus"], sort=False):
        total = group["mean_compute_s"] + group["mean_communication_s"]
        rows.append({"line": line, "gpus": gpus, "runs": len(group), "seeds": _seeds(group),
                     "compute_s": group["mean_compute_s"].mean(),
                     "communication_s": group["mean_communication_s"].mean(),
                     "iteration_s": total.mean(), "iteration_min_s": total.min(), "iteration_max_s": total.max()})
    table = pd.DataFrame(rows).sort_values(["line", "gpus"], kind="stable")
    table["communication_share"] = table["communication_s"] / table["iteration_s"]
    return with_keys(table, runs, lines)


def interpolated_crossing(times: np.ndarray, losses: np.ndarray, target: float) -> float:
    """The simulated time the loss first reaches `target`, linear between the two evaluations around
    the crossing (the first evaluation if it is already there); NaN if it never does."""
    below = np.flatnonzero(losses <= target)
    if len(below) == 0:
        return math.nan
    i = below[0]
    if i == 0:
        return float(times[0])
    t0, t1, l0, l1 = times[i - 1], times[i], losses[i - 1], losses[i]
    return float(t0 + (l0 - target) / (l0 - l1) * (t1 - t0))


def time_to_target_runs(runs: pd.DataFrame, evals: pd.DataFrame, target: float | None) -> tuple[pd.Series, float, str]:
    """(time to target per run, the target, how it was measured).

    With `target`: from each run's evals.parquet, interpolated linearly between the evaluations around
    the crossing. Without: the runs' own time_to_target_s when they all ran with one train.target_loss
    (the simulator measures it at the exact global step); otherwise the highest loss every run reaches
    (the largest of the runs' best losses), interpolated as above.
    """
    targets = set(distinct(runs["train.target_loss"])) if "train.target_loss" in runs else {None}
    if target is None and len(targets) == 1 and None not in targets:
        return (runs["time_to_target_s"].astype(float), float(targets.pop()),
                "the runs' own time_to_target_s (train.target_loss)")
    how = "each run's time interpolated linearly between the two evaluations around the crossing"
    if target is None:
        target = float(evals.groupby("run_dir")["loss"].min().max())
        how = "the highest loss every run reaches (--target sets it); " + how
    times = {}
    for run_dir, one in evals.sort_values("sim_time_s").groupby("run_dir"):
        times[run_dir] = interpolated_crossing(one["sim_time_s"].to_numpy(), one["loss"].to_numpy(), target)
    return runs["run_dir"].map(times).astype(float), float(target), how


def target_table(runs: pd.DataFrame, x: str, lines: Lines | None = None) -> pd.DataFrame:
    """Time to target per line and x: mean/min/max/std over the runs that reached it, and how many did."""
    rows = []
    for (line, xv), group in runs.groupby(["line", x], sort=False):
        reached = group["ttt"].dropna()
        rows.append({"line": line, x: xv, "runs": len(group), "reached": len(reached), "seeds": _seeds(group),
                     **_stats(reached, "time_to_target_s")})
    return with_keys(pd.DataFrame(rows).sort_values(["line", x], kind="stable"), runs, lines)


def staleness_table(steps: pd.DataFrame, column: str, lines: Lines, runs: pd.DataFrame) -> pd.DataFrame:
    """The distribution of `column` (staleness or clock_lead) per line and GPU count, seeds pooled."""
    rows = []
    for (line, gpus), group in steps.groupby(["line", "gpus"], sort=False):
        values = group[column].dropna()
        rows.append({"line": line, "gpus": gpus, "runs": group["run_dir"].nunique(), "gradients": len(values),
                     "mean": values.mean(), "p50": values.quantile(0.5), "p95": values.quantile(0.95),
                     "max": values.max(), "share_zero": (values == 0).mean()})
    return with_keys(pd.DataFrame(rows).sort_values(["line", "gpus"], kind="stable"), runs, lines)


def links_table(links: pd.DataFrame, top: int, lines: Lines, runs: pd.DataFrame) -> pd.DataFrame:
    """The `top` links with the highest utilisation per line and GPU count (mean over the runs)."""
    rows = []
    for (line, gpus), group in links.groupby(["line", "gpus"], sort=False):
        per_link = (group.groupby("link", as_index=False)
                    .agg(utilisation=("utilisation", "mean"), busy_fraction=("busy_fraction", "mean"),
                         bytes=("bytes", "mean"), runs=("run_dir", "nunique"))
                    .sort_values(["utilisation", "link"], ascending=[False, True]).head(top))
        rows.extend({"line": line, "gpus": gpus, "rank": i + 1, **r} for i, r in enumerate(per_link.to_dict("records")))
    return with_keys(pd.DataFrame(rows).sort_values(["line", "gpus", "rank"], kind="stable"), runs, lines)


def _cell(value) -> str:
    """A Markdown cell: numbers to 6 significant digits (enough to read back), pipes escaped."""
    value = norm(value)
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value).replace("|", "\\|")


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub Markdown table (no extra dependency); numbers right-aligned."""
    numeric = [pd.api.types.is_numeric_dtype(table[c]) and not pd.api.types.is_bool_dtype(table[c])
               for c in table.columns]
    head = "| " + " | ".join(str(c) for c in table.columns) + " |"
    rule = "|" + "|".join("---:" if n else "---" for n in numeric) + "|"
    body = ["| " + " | ".join(_cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([head, rule, *body]) + "\n"


def read_markdown(text: str) -> pd.DataFrame:
    """A Markdown table written by to_markdown back into a DataFrame (cells as numbers where they are)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip().startswith("|")]
    split = [[c.strip().replace("\\|", "|") for c in _cells(line)] for line in lines]
    table = pd.DataFrame(split[2:], columns=split[0])
    for col in table.columns:
        converted = pd.to_numeric(table[col].replace("", np.nan), errors="coerce")
        if converted.notna().sum() == (table[col] != "").sum():
            table[col] = converted
    return table


def _cells(line: str) -> list[str]:
    cells, current, escaped = [], "", False
    for ch in line.strip()[1:-1]:
        if ch == "|" and not escaped:
            cells.append(current)
            current = ""
        else:
            current += ch
        escaped = ch == "\\"
    return [*cells, current]


def export(table: pd.DataFrame, out: Path, name: str) -> list[Path]:
    """`name`.csv (every column, full precision) and `name`.md; the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    csv, md = out / f"{name}.csv", out / f"{name}.md"
    table.to_csv(csv, index=False)
    md.write_text(to_markdown(table))
    return [csv, md]


def _readable(value) -> str:
    """A terminal cell: 298,600 rather than 2.986e+05; 4 significant digits below 10,000."""
    value = norm(value)
    if isinstance(value, float) and abs(value) >= 1e4:
        return f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 1e4:
        return f"{value:,}"
    return fmt(value)


def print_table(table: pd.DataFrame, columns: list[str] | None = None) -> str:
    """A compact text rendering for the terminal: '-' for missing, thousands separated."""
    view = table[[c for c in columns if c in table]] if columns else table
    return view.to_string(index=False, na_rep="-", formatters={c: _readable for c in view.columns})
