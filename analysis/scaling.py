"""Scaling report for a set of runs: four figures and a text table.

    python -m analysis.scaling PATH [PATH ...] [--out DIR] [--format png|svg]

Figures written to --out (default: the first PATH):
  throughput.FMT          throughput vs workers, one line per policy (and per network if several)
  scaling_efficiency.FMT  throughput(n) / (n / n_min * throughput(n_min)); 1 means linear scaling
  convergence.FMT         held-out loss vs simulated time at the largest worker count
  time_breakdown.FMT      mean compute vs communication time per iteration, stacked

Runs that share a policy, network and worker count (e.g. several seeds) are averaged in the summary
figures; the convergence figure draws each of them. Other settings (workload, stragglers, steps) are
not told apart, so point it at the runs of one experiment. Exit status 2 when no runs are found.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed, and none opened under tests or CI
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import EngFormatter  # noqa: E402

from analysis.load import load_evals, load_runs  # noqa: E402

POLICY_ORDER = ["sync", "async", "ssp"]
LINESTYLES = ["-", "--", ":", "-."]
MARKERS = ["o", "s", "^", "D", "v"]
TABLE_COLUMNS = ["policy", "network", "workers", "seed", "throughput_samples_per_s", "mean_iteration_s",
                 "final_loss", "time_to_target_s"]
OPTIONAL_COLUMNS = ["network", "seed"]  # shown in the table only when the runs differ in them


def series_keys(runs: pd.DataFrame) -> list[str]:
    """Columns that name one line: the policy, plus the network when the runs used more than one."""
    return ["policy", "network"] if runs["network"].nunique() > 1 else ["policy"]


def _order(runs: pd.DataFrame) -> pd.DataFrame:
    """Known policies in their usual order (sync, async, ssp), others after them by name."""
    rank = runs["policy"].map(lambda p: (POLICY_ORDER.index(p) if p in POLICY_ORDER else len(POLICY_ORDER), p))
    by = ["_rank"] + [c for c in ("network", "workers", "seed") if c in runs]
    return runs.assign(_rank=rank).sort_values(by).drop(columns="_rank")


def _label(key) -> str:
    """Legend text for a series key: 'sync', or 'sync (tcp_10g)' when networks differ."""
    key = key if isinstance(key, tuple) else (key,)
    return key[0] if len(key) == 1 else f"{key[0]} ({key[1]})"


def _legend(ax, keys: list[str], **kwargs) -> None:
    """A legend titled by what a line stands for: 'policy' or 'policy (network)'."""
    ax.legend(title=_label(tuple(keys)), **kwargs)


def _style(runs: pd.DataFrame):
    """A function from series key to plot keywords: colour and marker by policy, dashes by network.

    Later policies get thinner lines and smaller markers, so series that coincide (async and ssp
    often do when no worker lags) still show as nested outlines instead of one hiding the other.
    """
    policies = list(dict.fromkeys(_order(runs)["policy"]))
    networks = sorted(runs["network"].unique())

    def style(key):
        key = key if isinstance(key, tuple) else (key,)
        i = policies.index(key[0])
        dash = LINESTYLES[networks.index(key[1]) % len(LINESTYLES)] if len(key) > 1 else "-"
        return {"color": f"C{i % 10}", "marker": MARKERS[i % len(MARKERS)], "linestyle": dash,
                "linewidth": max(3.0 - 0.8 * i, 1.0), "markersize": max(9 - 2 * i, 4)}

    return style


def _time_unit(seconds: float) -> tuple[float, str]:
    """A (scale, unit) that shows `seconds` as a number of at least 1: simulated times span µs to s."""
    for scale, unit in ((1.0, "s"), (1e3, "ms")):
        if seconds * scale >= 1:
            return scale, unit
    return 1e6, "µs"


def scaling_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean throughput per series and worker count, and scaling efficiency against the series' smallest n.

    efficiency(n) = throughput(n) / (n / n_min * throughput(n_min)): the fraction of perfect linear
    speed-up from the smallest cluster that series was run with (1.0 at n_min by definition).
    """
    keys = series_keys(runs)
    table = (runs.groupby([*keys, "workers"], as_index=False)["throughput_samples_per_s"].mean()
                 .rename(columns={"throughput_samples_per_s": "throughput"}))
    first = table.sort_values("workers").groupby(keys)[["workers", "throughput"]].transform("first")
    table["efficiency"] = table["throughput"] / (table["workers"] / first["workers"] * first["throughput"])
    return table


def _lines(ax, table: pd.DataFrame, keys: list[str], y: str, style) -> None:
    """One marker line per series of `table[y]` against workers, with ticks at the worker counts run."""
    for key, group in _order(table).groupby(keys, sort=False):
        key = key[0] if len(keys) == 1 else key
        ax.plot(group["workers"], group[y], label=_label(key), **style(key))
    ax.set_xticks(sorted(table["workers"].unique()))
    ax.set_xlabel("workers")
    ax.grid(alpha=0.3)


def plot_throughput(runs: pd.DataFrame, style) -> plt.Figure:
    """Simulated training throughput against cluster size."""
    fig, ax = plt.subplots(figsize=(6, 4))
    _lines(ax, scaling_table(runs), series_keys(runs), "throughput", style)
    ax.yaxis.set_major_formatter(EngFormatter())  # 300 k, 1 M rather than an offset "1e6"
    ax.set_ylabel("throughput (samples / simulated s)")
    ax.set_ylim(bottom=0)
    _legend(ax, series_keys(runs), loc="upper left")
    ax.set_title("Throughput vs workers")
    return fig


def plot_efficiency(runs: pd.DataFrame, style) -> plt.Figure:
    """Scaling efficiency against cluster size, with the linear-scaling reference at 1."""
    fig, ax = plt.subplots(figsize=(6, 4))
    table = scaling_table(runs)
    ax.axhline(1.0, color="grey", linewidth=1, linestyle="--")
    _lines(ax, table, series_keys(runs), "efficiency", style)
    ax.set_ylabel("scaling efficiency (1 = linear from fewest workers)")
    ax.set_ylim(0, max(1.1, 1.05 * table["efficiency"].max()))
    _legend(ax, series_keys(runs), loc="lower left")
    ax.set_title("Scaling efficiency")
    return fig


def plot_convergence(runs: pd.DataFrame, evals: pd.DataFrame, style) -> plt.Figure | None:
    """Held-out loss against simulated time for every run at the largest worker count (None: no evals)."""
    workers = runs["workers"].max()
    evals = evals[evals["workers"] == workers]
    if evals.empty:
        return None
    keys = series_keys(runs)
    scale, unit = _time_unit(evals["sim_time_s"].max())
    fig, ax = plt.subplots(figsize=(6, 4))
    labelled = set()
    for run in _order(runs[runs["workers"] == workers]).itertuples():
        one = evals[evals["run_dir"] == run.run_dir].sort_values("sim_time_s")
        key = tuple(getattr(run, k) for k in keys)
        key = key[0] if len(keys) == 1 else key
        ax.plot(one["sim_time_s"] * scale, one["loss"], **style(key),
                label=None if key in labelled else _label(key))
        labelled.add(key)
    ax.set_xlabel(f"simulated time ({unit})")
    ax.set_ylabel("held-out loss")
    ax.grid(alpha=0.3)
    _legend(ax, keys)
    ax.set_title(f"Convergence at {workers} workers")
    return fig


def plot_breakdown(runs: pd.DataFrame) -> plt.Figure:
    """Stacked bars of mean compute and communication time per iteration, one bar per series and n.

    pssim's mean_communication_s runs from the end of compute to the end of the pull, so it includes
    queueing and, under sync, waiting at the barrier: the legend says so.
    """
    keys = series_keys(runs)
    means = (_order(runs).groupby([*keys, "workers"], sort=False, as_index=False)
                         [["mean_compute_s", "mean_communication_s"]].mean())
    scale, unit = _time_unit((means["mean_compute_s"] + means["mean_communication_s"]).max())
    # Bars of one series sit together; a one-bar gap separates series.
    positions, labels, x, previous = [], [], 0, None
    for row in means.itertuples():
        key = tuple(getattr(row, k) for k in keys)
        x += 1 if previous in (None, key) else 2
        previous = key
        positions.append(x)
        labels.append("\n".join([*key, f"{row.workers}w"]))
    compute = means["mean_compute_s"] * scale
    comm = means["mean_communication_s"] * scale
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * positions[-1] + 1), 4.5))
    ax.bar(positions, compute, color="C0", label="compute")
    ax.bar(positions, comm, bottom=compute, color="C1", label="communication (incl. waiting)")
    ax.set_xticks(positions, labels, fontsize=9)
    ax.set_xlabel(", ".join([*keys, "workers"]))
    ax.set_ylabel(f"mean time per iteration ({unit})")
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    ax.set_title("Where an iteration's time goes")
    fig.tight_layout()
    return fig


def summary_table(runs: pd.DataFrame) -> str:
    """The runs as a tidy text table; network and seed columns only when the runs differ in them."""
    cols = [c for c in TABLE_COLUMNS if c in runs and (c not in OPTIONAL_COLUMNS or runs[c].nunique() > 1)]
    return _order(runs)[cols].to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.4g}",
                                        formatters={"throughput_samples_per_s": lambda v: f"{v:,.0f}"})


def main(argv: list[str] | None = None) -> int:
    """Load the runs under the given paths, write the four figures and print the table."""
    parser = argparse.ArgumentParser(prog="python -m analysis.scaling", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, help="run, sweep or runs/ directories")
    parser.add_argument("--out", type=Path, help="where the figures go (default: the first PATH)")
    parser.add_argument("--format", choices=["png", "svg"], default="png", help="figure file format")
    args = parser.parse_args(argv)

    runs = load_runs(*args.paths)
    if runs.empty:
        where = ", ".join(map(str, args.paths))
        print(f"analysis.scaling: error: no runs (summary.json) found under {where}", file=sys.stderr)
        return 2

    first = args.paths[0]
    out = args.out or (first if first.is_dir() else first.parent)
    out.mkdir(parents=True, exist_ok=True)
    style = _style(runs)
    figures = {
        "throughput": plot_throughput(runs, style),
        "scaling_efficiency": plot_efficiency(runs, style),
        "convergence": plot_convergence(runs, load_evals(*args.paths), style),
        "time_breakdown": plot_breakdown(runs),
    }
    written, skipped = [], []
    for name, fig in figures.items():
        if fig is None:
            skipped.append(name)
            continue
        written.append(out / f"{name}.{args.format}")
        fig.savefig(written[-1], dpi=120, bbox_inches="tight")
        plt.close(fig)
    print(summary_table(runs))
    print()
    for path in written:
        print(f"wrote {path}")
    for name in skipped:
        print(f"skipped {name}: no evals.parquet at the largest worker count")
    return 0


if __name__ == "__main__":
    sys.exit(main())
