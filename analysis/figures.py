"""One function per figure: a table from analysis.tables in, a matplotlib Figure out (not yet saved).

Conventions every figure keeps: a line's colour and marker come from Lines.style (the same line looks
the same in every figure of the same runs); points are means over the seeds with error bars or
bands (min-max unless --spread std); the legend sits right of the panels; the caption under the
axes says what was held fixed; GPU counts are on a log2 axis with a tick at each count run.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import LogLocator, MaxNLocator, NullFormatter, PercentFormatter

from analysis.groups import Lines, fmt
from analysis.plots import add_caption, count_axis, eng, figure, is_counts, legend, time_unit

IDEAL = {"color": "0.45", "linestyle": (0, (1, 1.5)), "linewidth": 1.2}


def _legend_width(lines: Lines, extra: int = 24) -> float:
    """Inches the legend right of the panels takes: the figure is widened by it, not the axes narrowed."""
    longest = max([len(label) for label in lines.labels] + [len(lines.title), extra])
    return 0.7 + 0.062 * longest


def x_label(x: str) -> str:
    return {"gpus": "GPUs (log2 scale)", "cluster.workers": "workers (log2 scale)"}.get(x, x)


def _x_axis(ax, x: str, values) -> None:
    if is_counts(values):
        count_axis(ax, values, x_label(x))
    else:
        ax.set_xlabel(x)
        ax.margins(x=0.08)


DODGE = 0.06  # octaves between neighbouring lines' markers on a log2 axis


def _dodge(xs, lines: Lines, label: str, table: pd.DataFrame, x: str):
    """x positions shifted sideways by a few percent per line (log2 axes only), so the error bars of
    lines that meet (every line is at 100% efficiency at its smallest count) stay apart."""
    if not is_counts(table[x]) or len(lines.labels) < 2:
        return xs
    present = [lab for lab in lines.labels if lab in set(table["line"])]
    i = present.index(label) if label in present else 0
    return xs * 2 ** (DODGE * (i - (len(present) - 1) / 2))


def _errorbar(ax, xs, mean, lo, hi, style: dict, label: str) -> None:
    yerr = np.vstack([np.asarray(mean) - np.asarray(lo), np.asarray(hi) - np.asarray(mean)])
    ax.errorbar(xs, mean, yerr=yerr, label=label, capsize=3, clip_on=False, zorder=3, **style)


def _finish(fig, axes, lines: Lines, caption: str, extra_legend=()) -> None:
    legend(fig, axes, lines.title, extra_legend, lines.labels)
    fig.canvas.draw()  # fix the layout before the caption is placed under it
    add_caption(fig, caption)


def throughput(table: pd.DataFrame, lines: Lines, x: str, caption: str, spread: str):
    """Throughput against GPUs (log-log), mean with spread over seeds, and each line's ideal:
    linear from its smallest GPU count (dotted, same colour)."""
    fig, (ax,) = figure(1, width=4.2 + _legend_width(lines), height=3.6)
    lo_col, hi_col = _bounds(table, "throughput", spread)
    for label in lines.labels:
        one = table[table["line"] == label]
        if one.empty:
            continue
        style = lines.style(label)
        xs = _dodge(one[x], lines, label, table, x)
        _errorbar(ax, xs, one["throughput"], lo_col(one), hi_col(one), style, label)
        if len(one) > 1:
            ax.plot(xs, one["ideal_throughput"], color=style["color"], linestyle=IDEAL["linestyle"],
                    linewidth=1.0, alpha=0.8, zorder=2)
    _x_axis(ax, x, table[x])
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))  # 20 k, 50 k, 100 k, 200 k ...
    ax.yaxis.set_minor_formatter(NullFormatter())  # no 6x10^4 between them
    eng(ax)
    ax.set_ylabel("throughput (samples / simulated s, log scale)")
    ax.grid(alpha=0.3, which="both")
    ax.set_title("Throughput vs GPUs" if x == "gpus" else f"Throughput vs {x}")
    ideal = Line2D([], [], **IDEAL, label="ideal: linear from the\nline's smallest count")
    _finish(fig, [ax], lines, caption, [(ideal, ideal.get_label())])
    return fig


def _bounds(table: pd.DataFrame, prefix: str, spread: str):
    """Functions from rows to the low and high ends of the error bars: min/max or mean -/+ std."""
    if spread == "std":
        return (lambda t: t[prefix] - t[f"{prefix}_std"]), (lambda t: t[prefix] + t[f"{prefix}_std"])
    return (lambda t: t[f"{prefix}_min"]), (lambda t: t[f"{prefix}_max"])


def efficiency(table: pd.DataFrame, lines: Lines, x: str, caption: str, spread: str):
    """Scaling efficiency against GPUs with the ideal at 1: throughput(n) / (throughput(n_min) n / n_min)."""
    fig, (ax,) = figure(1, width=4.2 + _legend_width(lines), height=3.6)
    ax.axhline(1.0, **IDEAL, label="ideal (linear scaling)", zorder=1)
    lo_col, hi_col = _bounds(table, "efficiency", spread)
    for label in lines.labels:
        one = table[table["line"] == label]
        if not one.empty:
            _errorbar(ax, _dodge(one[x], lines, label, table, x), one["efficiency"], lo_col(one), hi_col(one),
                      lines.style(label), label)
    _x_axis(ax, x, table[x])
    ax.set_ylim(0, max(1.1, 1.08 * float(hi_col(table).max())))
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_ylabel("scaling efficiency\n(throughput / ideal from the line's smallest count)")
    ax.grid(alpha=0.3)
    ax.set_title("Scaling efficiency")
    _finish(fig, [ax], lines, caption)
    return fig


def convergence(curves: dict, lines: Lines, panels: list, panel_title, x: str, metric: str, caption: str):
    """Held-out `metric` against simulated time (or step), one panel per GPU count when several:
    each line is the mean over its runs at each evaluation, the band their spread."""
    fig, axes = figure(len(panels), width=3.4 if len(panels) > 1 else 4.6, height=2.9 if len(panels) > 1 else 3.4,
                       extra_width=_legend_width(lines))
    t_max = max((c["x"].max() for c in curves.values() if len(c)), default=1.0)
    scale, unit = time_unit(t_max) if x == "sim_time_s" else (1.0, "")
    for ax, panel in zip(axes, panels):
        for label in lines.labels:
            curve = curves.get((panel, label))
            if curve is None or curve.empty:
                continue
            style = lines.style(label)
            ax.plot(curve["x"] * scale, curve["mean"], label=label, clip_on=False,
                    **{**style, "markersize": style["markersize"] * 0.55, "linewidth": style["linewidth"] * 0.7})
            if (curve["hi"] > curve["lo"]).any():
                ax.fill_between(curve["x"] * scale, curve["lo"], curve["hi"], color=style["color"], alpha=0.18,
                                linewidth=0)
        ax.set_xlabel(f"simulated time ({unit})" if x == "sim_time_s" else "global step")
        ax.set_xlim(left=0)
        ax.margins(x=0.03, y=0.05)
        ax.grid(alpha=0.3)
        if panel_title:
            ax.set_title(panel_title(panel))
    axes[0].set_ylabel(f"held-out {metric}")
    _finish(fig, axes, lines, caption)
    return fig


def time_to_target(table: pd.DataFrame, lines: Lines, x: str, target: float, caption: str, spread: str):
    """Simulated time to reach the target loss against GPUs (several counts) or one bar per line."""
    several = table[x].nunique() > 1
    fig, (ax,) = figure(1, width=4.2 + (_legend_width(lines) if several else 0.065 * max(map(len, lines.labels))),
                        height=3.6 if several else 1.4 + 0.32 * len(lines.labels))
    scale, unit = time_unit(table["time_to_target_s_max"].max())
    lo_col, hi_col = _bounds(table, "time_to_target_s", spread)
    if several:
        for label in lines.labels:
            one = table[(table["line"] == label) & (table["reached"] > 0)]
            if not one.empty:
                _errorbar(ax, _dodge(one[x], lines, label, table, x), one["time_to_target_s"] * scale, lo_col(one) * scale, hi_col(one) * scale,
                          lines.style(label), label)
        _x_axis(ax, x, table[x])
        ax.set_ylim(bottom=0)
        ax.set_ylabel(f"simulated time to loss {target:.4g} ({unit})")
        ax.grid(alpha=0.3)
    else:
        _bars(ax, table, lines, scale, lo_col, hi_col)
        ax.set_xlabel(f"simulated time to held-out loss {target:.4g} ({unit})")
    ax.set_title(f"Time to target loss {target:.4g}")
    if several:
        _finish(fig, [ax], lines, caption)
    else:  # the bars are labelled by line: no legend
        fig.canvas.draw()
        add_caption(fig, caption)
    return fig


def _bars(ax, table, lines: Lines, scale, lo_col, hi_col) -> None:
    rows = [table[(table["line"] == label)] for label in lines.labels]
    rows = [r for r in rows if not r.empty]
    for y, row in enumerate(rows):
        label = row["line"].iloc[0]
        mean = float(row["time_to_target_s"].iloc[0]) * scale
        if np.isnan(mean):
            ax.text(0, y, "  not reached", va="center", fontsize=8, color="0.3")
            continue
        ax.barh(y, mean, color=lines.style(label)["color"], label=label, height=0.6,
                xerr=[[mean - float(lo_col(row).iloc[0]) * scale], [float(hi_col(row).iloc[0]) * scale - mean]],
                capsize=3)
    ax.set_yticks(range(len(rows)), [r["line"].iloc[0] for r in rows])
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)


def staleness(dists: dict, lines: Lines, panels: list, panel_title, column: str, caption: str):
    """The cumulative distribution of staleness over every applied gradient (seeds pooled): the share of
    gradients at most s versions old, a step per integer s, one panel per GPU count."""
    fig, axes = figure(len(panels), width=3.4 if len(panels) > 1 else 4.6, height=2.9 if len(panels) > 1 else 3.4,
                       extra_width=_legend_width(lines))
    for ax, panel in zip(axes, panels):
        top = max((int(v.max()) for (p, _), v in dists.items() if p == panel and len(v)), default=0)
        for label in lines.labels:
            values = dists.get((panel, label))
            if values is None or len(values) == 0:
                continue
            s = np.arange(-1, top + 2)
            share = np.array([(values <= v).mean() for v in s])
            style = lines.style(label)
            ax.step(s, share, where="post", color=style["color"], linestyle=style["linestyle"],
                    linewidth=style["linewidth"], label=label)
            # a marker at the mean, on the curve, tells lines apart where the steps coincide
            mean = float(np.mean(values))
            ax.plot([mean], [(values <= mean).mean()], marker=style["marker"], color=style["color"],
                    linestyle="none", markersize=6, markeredgecolor="white", clip_on=False, zorder=4)
        ax.set_xlim(-0.5, top + 1)
        ax.set_ylim(0, 1.04)
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.set_xlabel("staleness s (versions)" if column == "staleness" else "clock lead (clocks)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if top <= 10:
            ax.set_xticks(range(0, top + 1))
        ax.grid(alpha=0.3)
        if panel_title:
            ax.set_title(panel_title(panel))
    axes[0].set_ylabel("share of gradients ≤ s")
    marker = Line2D([], [], marker="o", color="0.4", linestyle="none", label="mean of the line")
    _finish(fig, axes, lines, caption, [(marker, marker.get_label())])
    return fig


def _row_labels(table: pd.DataFrame, lines: Lines) -> list[str]:
    several_gpus = table["gpus"].nunique() > 1
    several_lines = table["line"].nunique() > 1
    labels = []
    for row in table.itertuples():
        parts = ([row.line] if several_lines or not several_gpus else []) + \
                ([f"{fmt(row.gpus)} GPUs"] if several_gpus else [])
        labels.append(" · ".join(parts))
    return labels


def breakdown(table: pd.DataFrame, lines: Lines, caption: str):
    """Stacked horizontal bars of mean compute (solid) and communication (hatched) per iteration for
    each line and GPU count; the whisker is the spread of their sum over the runs."""
    n = len(table)
    labels = _row_labels(table, lines)
    fig, (ax,) = figure(1, width=4.2 + 0.065 * max(map(len, labels)), height=1.4 + 0.3 * n)
    scale, unit = time_unit(table["iteration_max_s"].max())
    ys = _positions(table)
    for y, row in zip(ys, table.itertuples()):
        color = lines.style(row.line)["color"]
        compute, comm = row.compute_s * scale, row.communication_s * scale
        ax.barh(y, compute, color=color, height=0.7)
        ax.barh(y, comm, left=compute, color=color, alpha=0.35, hatch="///", edgecolor=color, linewidth=0,
                height=0.7)
        total = compute + comm
        low, high = max(0.0, total - row.iteration_min_s * scale), max(0.0, row.iteration_max_s * scale - total)
        if high + low > 0:
            ax.errorbar(total, y, xerr=[[low], [high]], color="0.2", capsize=2, linewidth=0.8)
    ax.set_yticks(ys, labels)
    for tick, line in zip(ax.get_yticklabels(), table["line"]):
        tick.set_color(lines.style(line)["color"])
    ax.invert_yaxis()
    ax.set_xlabel(f"mean time per iteration ({unit})")
    ax.grid(axis="x", alpha=0.3)
    fig.suptitle("Where an iteration's time goes", fontsize=10)
    parts = [(Patch(facecolor="0.35"), "compute"),
             (Patch(facecolor="0.35", alpha=0.35, hatch="///", edgecolor="0.35"),
              "communication not overlapped\nwith compute (incl. waiting)")]
    _marks_legend(ax, parts)
    fig.canvas.draw()
    add_caption(fig, caption)
    return fig


def _marks_legend(ax, parts) -> None:
    """What the marks mean, above the axes under the title: never over a bar. The row labels name the
    lines (in their colours, as in every figure), so no colour legend is needed."""
    ax.legend([h for h, _ in parts], [t for _, t in parts], loc="lower left", bbox_to_anchor=(0, 1.0), ncol=2,
              frameon=False, fontsize=7.5)


def _positions(table: pd.DataFrame) -> list[float]:
    """Bar positions: rows of one line together, a half-row gap between lines."""
    ys, y, previous = [], 0.0, None
    for line in table["line"]:
        y += 1 if previous in (None, line) else 1.5
        previous = line
        ys.append(y)
    return ys


def links(table: pd.DataFrame, lines: Lines, caption: str, top: int):
    """The busiest links of each line and GPU count: utilisation (bar) and busy fraction (diamond)."""
    groups = list(table.groupby(["line", "gpus"], sort=False))
    n_rows = len(table) + len(groups)
    several_gpus = table["gpus"].nunique() > 1
    headers = [line + (f" · {fmt(gpus)} GPUs" if several_gpus else "") for (line, gpus), _ in groups]
    widest = max([len(h) * 1.1 for h in headers] + [len(link) for link in table["link"]])
    fig, (ax,) = figure(1, width=4.0 + 0.07 * widest, height=1.3 + 0.2 * n_rows)
    ticks, labels, bold = [], [], []
    y = 0
    for header, ((line, gpus), group) in zip(headers, groups):
        ticks.append(y)
        labels.append(header)
        bold.append(line)
        y += 1
        color = lines.style(line)["color"]
        for row in group.itertuples():
            ax.barh(y, row.utilisation, color=color, height=0.7)
            ax.plot([row.busy_fraction], [y], marker="D", color="0.15", markersize=4, linestyle="none",
                    clip_on=False)
            ticks.append(y)
            labels.append(row.link)
            bold.append(None)
            y += 1
        y += 0.4
    ax.set_yticks(ticks, labels, fontsize=7.5)
    for tick, header in zip(ax.get_yticklabels(), bold):
        if header:
            tick.set_fontweight("bold")
            tick.set_fontsize(8.5)
            tick.set_color(lines.style(header)["color"])
    ax.set_ylim(y - 0.3, -0.7)
    high = max(float(table["utilisation"].max()), float(table["busy_fraction"].max()))
    ax.set_xlim(0, min(1.0, high * 1.12) if high > 0 else 1.0)
    ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_xlabel("share of the run's simulated time")
    ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"The {top} busiest link directions", fontsize=10)
    parts = [(Patch(facecolor="0.5"), "utilisation: bytes /\n(line rate x simulated time)"),
             (Line2D([], [], marker="D", color="0.15", linestyle="none", markersize=4),
              "busy: share of time with\nat least one flow")]
    _marks_legend(ax, parts)
    fig.canvas.draw()
    add_caption(fig, caption)
    return fig
