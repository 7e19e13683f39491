"""python -m analysis COMMAND PATHS... [options]: figures and tables from pssim run directories.

Commands (each writes its files to --out, default PATH/analysis/ for the first PATH):
  scaling         throughput vs GPUs, log-log, with each line's ideal    throughput.{svg,png}, scaling.{csv,md}
  efficiency      scaling efficiency vs GPUs, ideal at 100%              efficiency.{svg,png}, scaling.{csv,md}
  convergence     held-out loss vs simulated time, a panel per GPU count convergence.{svg,png}, convergence.{csv,md}
  time-to-target  simulated time to a target loss vs GPUs                time_to_target.{svg,png}, time_to_target.{csv,md}
  staleness       distribution of gradient staleness (steps.parquet)     staleness.{svg,png}, staleness.{csv,md}
  breakdown       compute vs communication time per iteration            breakdown.{svg,png}, breakdown.{csv,md}
  links           utilisation of the busiest links (links.parquet)       links.{svg,png}, links.{csv,md}
  table           the tidy table, one row per run                        runs.csv (every column), runs.md
  all             every command above that applies to the runs

Lines: runs that differ in any config key (other than the x axis, the panel and the seed) are
separate lines; seeds are averaged, with a min-max spread (--spread std for mean ± 1 sd).
--hue KEY... draws lines by those keys only and averages over the others, which the caption names.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import figures, tables
from analysis.groups import (SEED, KeyNotFound, Lines, assign_lines, caption, distinct, fmt, label_keys, norm,
                             resolve_key, sort_key, varying_keys, where)
from analysis.load import load_evals, load_links, load_runs, load_steps
from analysis.plots import caption_width, is_counts, save

PROG = "python -m analysis"


class Skip(Exception):
    """The runs do not allow this figure (one GPU count for a scaling plot, no evaluations...): the
    message says why and what to run instead. Exit status 2 when the command was asked for alone."""


@dataclass
class Job:
    runs: pd.DataFrame
    args: argparse.Namespace
    out: Path
    paths: list[Path]

    def key(self, name: str | None, default: str) -> str:
        return resolve_key(self.runs, name or default)

    def lines(self, exclude: list[str]) -> tuple[pd.DataFrame, Lines]:
        return assign_lines(self.runs, exclude=exclude, hue=self.args.hue or None)

    def caption(self, runs, lines, drawn, spread=True, extra=(), width=100, marks="error bars",
                points="Points") -> str:
        return caption(runs, lines, drawn, self.args.spread if spread else None, list(extra), width, marks, points)


def _written(paths) -> list[str]:
    return [f"wrote {p}" for p in paths]


def _dodged(lines: Lines, table: pd.DataFrame, x: str) -> list[str]:
    return [DODGED] if len(lines.labels) > 1 and is_counts(table[x]) else []


def _need_several(runs: pd.DataFrame, x: str, what: str) -> None:
    values = distinct(runs[x])
    if len(values) < 2:
        raise Skip(f"{what} needs at least two values of {x}; all {len(runs)} runs have {x}={fmt(values[0])}"
                   f" (sweep e.g. cluster.workers=2,4,8; for one cluster size see `breakdown` or `table`)")


def _need_numeric(runs: pd.DataFrame, x: str) -> None:
    if not pd.api.types.is_numeric_dtype(runs[x]) or pd.api.types.is_bool_dtype(runs[x]):
        raise KeyNotFound(f"--x {x} is not a number in these runs; the x axis is a count such as gpus or "
                          "cluster.workers (use --hue for other keys)")


DODGED = "Markers of different lines are offset sideways by a few percent so their error bars stay apart."


def _figure_caption(fig, job: Job, runs, lines, drawn, **kw) -> str:
    return job.caption(runs, lines, drawn, width=caption_width(fig), **kw)


def _scaling_parts(job: Job, what: str):
    x = job.key(getattr(job.args, "x", None), "gpus")
    _need_numeric(job.runs, x)
    _need_several(job.runs, x, what)
    runs, lines = job.lines([x])
    table = tables.scaling_table(runs, x, lines)
    return x, runs, lines, table


def cmd_scaling(job: Job) -> list[str]:
    x, runs, lines, table = _scaling_parts(job, "a scaling plot")
    fig = figures.throughput(table, lines, x, "", job.args.spread)
    figures.add_caption(fig, _figure_caption(fig, job, runs, lines, [x], extra=_dodged(lines, table, x)))
    out = save(fig, job.out, "throughput") + tables.export(table, job.out, "scaling")
    view = ["line", x, "runs", "throughput", "throughput_min", "throughput_max", "efficiency"]
    return [tables.print_table(table, view), "", *_written(out)]


def cmd_efficiency(job: Job) -> list[str]:
    x, runs, lines, table = _scaling_parts(job, "a scaling-efficiency plot")
    fig = figures.efficiency(table, lines, x, "", job.args.spread)
    figures.add_caption(fig, _figure_caption(fig, job, runs, lines, [x], extra=_dodged(lines, table, x)))
    out = save(fig, job.out, "efficiency") + tables.export(table, job.out, "scaling")
    view = ["line", x, "runs", "throughput", "ideal_throughput", "efficiency", "efficiency_min", "efficiency_max"]
    return [tables.print_table(table, view), "", *_written(out)]


def _panels(job: Job, runs: pd.DataFrame) -> tuple[list[str], list, object]:
    """Panels by GPU count when the runs have several and --hue does not name the cluster size."""
    hue = {resolve_key(runs, h) for h in job.args.hue or []}
    if len(distinct(runs["gpus"])) > 1 and not hue & {"gpus", "cluster.workers"}:
        return ["gpus"], distinct(runs["gpus"]), (lambda g: f"{fmt(g)} GPUs")
    return [], [None], None


def _curve(one_run_evals: list[pd.DataFrame], x: str, metric: str, spread_how: str) -> pd.DataFrame:
    """Mean and spread of several runs' evaluations: matched by step when they all evaluated the same
    steps (seeds of one setting do), otherwise interpolated onto the union of their times up to the
    earliest end."""
    steps = [tuple(e["step"]) for e in one_run_evals]
    if len(set(steps)) == 1:
        stacked = pd.concat(one_run_evals)
        grouped = stacked.groupby("step")
        xs = grouped[x].mean()
        values = [grouped[metric].get_group(s) for s in xs.index]
    else:
        end = min(e[x].max() for e in one_run_evals)
        xs = pd.Series(sorted({t for e in one_run_evals for t in e[x] if t <= end}))
        values = [pd.Series([np.interp(t, e[x], e[metric]) for e in one_run_evals]) for t in xs]
    rows = []
    for xv, vals in zip(xs, values):
        mean = vals.mean()
        if spread_how == "std":
            sd = vals.std(ddof=1) if len(vals) > 1 else 0.0
            lo, hi = mean - sd, mean + sd
        else:
            lo, hi = vals.min(), vals.max()
        rows.append({"x": xv, "mean": mean, "lo": lo, "hi": hi, "runs": len(vals)})
    return pd.DataFrame(rows)


def cmd_convergence(job: Job) -> list[str]:
    metric = job.args.metric
    x = getattr(job.args, "time_x", None) or "sim_time_s"
    facet, panels, title = _panels(job, job.runs)
    runs, lines = job.lines(facet)
    evals = load_evals(runs=runs)
    if evals.empty:
        raise Skip("convergence needs evals.parquet; these runs have none (timing-only runs: train.numerics=false)")
    evals = evals.drop(columns=["policy", "workers", "network"], errors="ignore").merge(
        runs[["run_dir", "line", "gpus"]], on="run_dir")
    curves, rows = {}, []
    panel_of = runs["gpus"] if facet else pd.Series(-1, index=runs.index)
    for (panel, label), group in runs.groupby([panel_of, "line"], sort=False):
        panel = panel if facet else None
        per_run = [e.sort_values("step") for _, e in evals[evals["run_dir"].isin(group["run_dir"])].groupby("run_dir")]
        if not per_run:
            continue
        curve = _curve(per_run, x, metric, job.args.spread)
        curves[(panel, label)] = curve
        rows.append({"line": label, "gpus": group["gpus"].iloc[0], "runs": len(per_run),
                     f"final_{metric}": curve["mean"].iloc[-1], f"final_{metric}_min": curve["lo"].iloc[-1],
                     f"final_{metric}_max": curve["hi"].iloc[-1], f"end_{x}": curve["x"].iloc[-1]})
    fig = figures.convergence(curves, lines, panels, title, x, metric, "")
    figures.add_caption(fig, _figure_caption(fig, job, runs, lines, facet, marks="bands", points="Lines", extra=[
        f"Held-out {metric} of the servers' model at each evaluation."]))
    table = tables.with_keys(pd.DataFrame(rows).sort_values(["line", "gpus"]), runs, lines)
    out = save(fig, job.out, "convergence") + tables.export(table, job.out, "convergence")
    view = ["line", "gpus", "runs", f"final_{metric}", f"final_{metric}_min", f"final_{metric}_max", f"end_{x}"]
    return [tables.print_table(table, view), "", *_written(out)]


def cmd_time_to_target(job: Job) -> list[str]:
    x = job.key(getattr(job.args, "x", None), "gpus")
    _need_numeric(job.runs, x)
    runs, lines = job.lines([x])
    evals = load_evals(runs=runs)
    if evals.empty and job.args.target is not None:
        raise Skip("time-to-target --target needs evals.parquet; these runs have none")
    if evals.empty and runs["time_to_target_s"].isna().all():
        raise Skip("time-to-target: no run has evaluations or a recorded time_to_target_s")
    ttt, target, how = tables.time_to_target_runs(runs, evals, job.args.target)
    runs = runs.assign(ttt=ttt.to_numpy())
    table = tables.target_table(runs, x, lines)
    missed = table[table["reached"] < table["runs"]]
    extra = [f"Target: held-out loss {target:.4g}; {how}.", *_dodged(lines, table, x)]
    if not missed.empty:
        extra.append("Not reached by: " + "; ".join(
            f"{r.line} at {fmt(getattr(r, x) if x != 'gpus' else r.gpus)} {'GPUs' if x == 'gpus' else x}"
            f" ({r.runs - r.reached} of {r.runs} runs)" for r in missed.itertuples()) + ".")
    if table["reached"].sum() == 0:
        raise Skip(f"time-to-target: no run reached loss {target:.4g}; pass a higher --target")
    fig = figures.time_to_target(table, lines, x, target, "", job.args.spread)
    figures.add_caption(fig, _figure_caption(fig, job, runs, lines, [x], extra=extra))
    out = save(fig, job.out, "time_to_target") + tables.export(table, job.out, "time_to_target")
    view = ["line", x, "runs", "reached", "time_to_target_s", "time_to_target_s_min", "time_to_target_s_max"]
    return [f"target loss {target:.6g}: {how}", tables.print_table(table, view), "", *_written(out)]


def cmd_staleness(job: Job) -> list[str]:
    column = job.args.column
    facet, panels, title = _panels(job, job.runs)
    runs, lines = job.lines(facet)
    steps = load_steps(runs=runs)
    if steps.empty or column not in steps:
        raise Skip(f"staleness needs steps.parquet with a {column} column; these runs have none")
    steps = steps.merge(runs[["run_dir", "line", "gpus"]], on="run_dir")
    panel_of = steps["gpus"] if facet else pd.Series(-1, index=steps.index)
    dists = {(panel if facet else None, label): group[column].dropna().to_numpy()
             for (panel, label), group in steps.groupby([panel_of, "line"], sort=False)}
    what = ("staleness: updates a gradient missed between the version it was computed on and the version it "
            "was applied to" if column == "staleness" else "clock lead: clocks a worker was ahead of the slowest")
    fig = figures.staleness(dists, lines, panels, title, column, "")
    figures.add_caption(fig, _figure_caption(fig, job, runs, lines, facet, spread=False, extra=[
        f"Every applied gradient of every run, seeds pooled; {what}."]))
    table = tables.staleness_table(steps, column, lines, runs)
    out = save(fig, job.out, "staleness") + tables.export(table, job.out, "staleness")
    return [tables.print_table(table), "", *_written(out)]


def cmd_breakdown(job: Job) -> list[str]:
    runs, lines = job.lines(["gpus"])
    table = tables.breakdown_table(runs, lines)
    fig = figures.breakdown(table, lines, "")
    figures.add_caption(fig, _figure_caption(fig, job, runs, lines, ["gpus"], marks="whiskers (on the total)",
                                             points="Bars", extra=[
        "Compute: mean of compute_end - compute_start per worker step; communication: mean of comm_end - "
        "compute_end (push, server work, waiting at barriers or gates, pull)."]))
    out = save(fig, job.out, "breakdown") + tables.export(table, job.out, "breakdown")
    view = ["line", "gpus", "runs", "compute_s", "communication_s", "iteration_s", "communication_share"]
    return [tables.print_table(table, view), "", *_written(out)]


def cmd_links(job: Job) -> list[str]:
    runs, lines = job.lines(["gpus"])
    links = load_links(runs=runs)
    if links.empty:
        raise Skip("links needs links.parquet; these runs have none")
    links = links.merge(runs[["run_dir", "line", "gpus"]], on="run_dir")
    table = tables.links_table(links, job.args.top, lines, runs)
    fig = figures.links(table, lines, "", job.args.top)
    figures.add_caption(fig, _figure_caption(fig, job, runs, lines, ["gpus"], spread=False, extra=[
        "Link directions ranked by utilisation, each the mean over the runs (seeds) of its line and size."]))
    out = save(fig, job.out, "links") + tables.export(table, job.out, "links")
    return [tables.print_table(table, ["line", "gpus", "rank", "link", "utilisation", "busy_fraction", "bytes"]),
            "", *_written(out)]


def run_table(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(every column, the compact view): the compact view has the keys that tell the runs apart (the
    fewest that do, cluster size last), the seed when several, and the headline results."""
    keys = label_keys(runs, varying_keys(runs), [], ("cluster.workers",))
    if len(distinct(runs[SEED])) > 1:
        keys.append(SEED)
    keys = [*keys, "gpus"] if "gpus" not in keys else keys
    metrics = [m for m in tables.METRICS if m in runs]
    compact = runs[[*keys, *metrics]].copy()
    order = sorted(range(len(runs)), key=lambda i: [sort_key(norm(runs[k].iloc[i])) for k in keys])
    compact = compact.iloc[order].reset_index(drop=True)
    front = [*keys, *metrics]
    full = runs.iloc[order][[*front, *[c for c in runs.columns if c not in front]]].reset_index(drop=True)
    return full, compact


def cmd_table(job: Job) -> list[str]:
    full, compact = run_table(job.runs)
    job.out.mkdir(parents=True, exist_ok=True)
    csv, md = job.out / "runs.csv", job.out / "runs.md"
    full.to_csv(csv, index=False)
    md.write_text(tables.to_markdown(compact))
    return [tables.print_table(compact), "", *_written([csv, md])]


COMMANDS = {
    "scaling": cmd_scaling,
    "efficiency": cmd_efficiency,
    "convergence": cmd_convergence,
    "time-to-target": cmd_time_to_target,
    "staleness": cmd_staleness,
    "breakdown": cmd_breakdown,
    "links": cmd_links,
    "table": cmd_table,
}
HELP = {
    "scaling": "throughput vs GPUs (log-log) with each line's ideal linear scaling",
    "efficiency": "scaling efficiency vs GPUs: throughput / ideal from the line's smallest count",
    "convergence": "held-out loss vs simulated time (a panel per GPU count)",
    "time-to-target": "simulated time to reach a target loss vs GPUs",
    "staleness": "distribution of gradient staleness over every applied gradient",
    "breakdown": "compute vs communication time per iteration, per line and GPU count",
    "links": "utilisation of the busiest link directions",
    "table": "the tidy table, one row per run: runs.csv (every column) and runs.md",
    "all": "every command that applies to the runs",
}


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("paths", nargs="*", type=Path, metavar="PATH",
                        help="run directories, sweep directories or trees such as runs/ (searched for summary.json)")
    common.add_argument("--hue", nargs="+", action="extend", metavar="KEY",
                        help="draw lines by these keys only; other varying keys are averaged into the lines "
                             "(the caption names them). Default: every key that varies")
    common.add_argument("--where", nargs="+", action="extend", metavar="KEY=VALUE", default=[],
                        help="keep runs with KEY=VALUE (KEY=V1,V2: any; KEY!=VALUE: not); repeatable")
    common.add_argument("--out", type=Path, help="where files go (default: the first PATH's analysis/)")
    common.add_argument("--spread", choices=["minmax", "std"], default="minmax",
                        help="error bars over seeds: min-max (default) or mean ± 1 sample standard deviation")
    top = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                  epilog="Keys: a dotted config key (policy.staleness), a preset group (network), "
                                         "a summary name (workers) or the unique key ending in it (staleness).",
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in [*COMMANDS, "all"]:
        p = sub.add_parser(name, parents=[common], help=HELP[name], description=HELP[name])
        if name in ("scaling", "efficiency", "time-to-target", "all"):
            p.add_argument("--x", metavar="KEY", help="x axis: a count key (default gpus = workers x GPUs per worker)")
        if name == "convergence":
            p.add_argument("--x", dest="time_x", choices=["sim_time_s", "step"], help="x axis (default sim_time_s)")
        if name in ("convergence", "all"):
            p.add_argument("--metric", choices=["loss", "accuracy"], default="loss", help="held-out metric")
        if name in ("time-to-target", "all"):
            p.add_argument("--target", type=float, help="target held-out loss (default: the runs' "
                           "train.target_loss, else the highest loss every run reaches)")
        if name in ("staleness", "all"):
            p.add_argument("--column", choices=["staleness", "clock_lead"], default="staleness",
                           help="steps.parquet column (default staleness, in versions)")
        if name in ("links", "all"):
            p.add_argument("--top", type=int, default=3, help="links shown per line and size (default 3)")
    return top


def _default_out(paths: list[Path]) -> Path:
    first = paths[0]
    return (first if first.is_dir() else first.parent) / "analysis"


def _reclaim_paths(args: argparse.Namespace) -> None:
    """`--hue policy runs/x` takes runs/x as a key (the option takes several): give directories back."""
    for option in ("hue", "where"):
        values = getattr(args, option) or []
        paths = [v for v in values if "=" not in v and Path(v).is_dir()] if option == "where" else \
                [v for v in values if Path(v).is_dir()]
        args.paths += [Path(v) for v in paths]
        setattr(args, option, [v for v in values if v not in paths] or ([] if option == "where" else None))


def main(argv: list[str] | None = None) -> int:
    command_line = parser()
    args = command_line.parse_args(argv)
    _reclaim_paths(args)
    if not args.paths:
        command_line.error(f"{args.command}: give at least one PATH (a run, a sweep or runs/)")
    err = f"{PROG} {args.command}: error:"
    runs = load_runs(*args.paths)
    if runs.empty:
        print(f"{err} no runs (summary.json) found under {', '.join(map(str, args.paths))}", file=sys.stderr)
        return 2
    try:
        runs = where(runs, args.where)
        if args.hue:
            [resolve_key(runs, h) for h in args.hue]
    except KeyNotFound as e:
        print(f"{err} {e}", file=sys.stderr)
        return 2
    if runs.empty:
        print(f"{err} no run matches --where {' '.join(args.where)}", file=sys.stderr)
        return 2
    old = (runs["config_source"] != "config.yaml").sum()
    if old:
        print(f"note: {old} of {len(runs)} runs have no config.yaml; their settings come from "
              ".hydra/config.yaml or summary.json", file=sys.stderr)
    job = Job(runs.reset_index(drop=True), args, args.out or _default_out(args.paths), args.paths)
    names = list(COMMANDS) if args.command == "all" else [args.command]
    status = 0
    for name in names:
        if args.command == "all":
            print(f"== {name}")
        try:
            print("\n".join(COMMANDS[name](job)))
        except Skip as e:
            print(f"skipped {name}: {e}" if args.command == "all" else f"{err} {e}",
                  file=sys.stdout if args.command == "all" else sys.stderr)
            status = 0 if args.command == "all" else 2
        except KeyNotFound as e:
            print(f"{err} {e}", file=sys.stderr)
            return 2
        if args.command == "all":
            print()
    return status
