"""Figure helpers shared by every command: axes, legends outside the data, captions, saving.

Every figure is written twice, as SVG (for papers) and as 300 dpi PNG, with its caption (what was
held fixed, what was averaged, what the error bars are) drawn under the axes.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed, and none opened under tests or CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import EngFormatter, FixedLocator, FuncFormatter, NullLocator  # noqa: E402

DPI = 300
FORMATS = ("svg", "png")
CAPTION_SIZE = 7.5
plt.rcParams.update({"font.size": 9, "axes.titlesize": 10, "legend.fontsize": 8, "legend.title_fontsize": 8,
                     "svg.fonttype": "none", "axes.spines.top": False, "axes.spines.right": False})


def figure(panels: int = 1, width: float = 4.6, height: float = 3.2, max_cols: int = 3, extra_width: float = 0.0):
    """A figure of `panels` axes (at most max_cols a row, shared y) and the flat list of axes in use;
    `width` is per panel, `extra_width` for the legend beside them."""
    cols = min(panels, max_cols)
    rows = -(-panels // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols + extra_width, height * rows), squeeze=False,
                             sharey=True, layout="constrained")
    flat = list(axes.flat)
    for ax in flat[panels:]:
        ax.set_visible(False)
    return fig, flat[:panels]


def count_axis(ax, values, label: str) -> None:
    """A log2 x axis with a tick at each count present (2, 4, 8, 16 rather than 0, 5, 10, 15)."""
    values = sorted({int(v) for v in values})
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(values))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_locator(NullLocator())
    if len(values) > 1:  # half an octave of room on each side keeps the end markers whole
        ax.set_xlim(values[0] / 2 ** 0.35, values[-1] * 2 ** 0.35)
    ax.set_xlabel(label)


def is_counts(values) -> bool:
    """Positive whole numbers, several of them: plotted on a log2 axis."""
    values = np.asarray(sorted(set(values)), dtype=float)
    return len(values) > 1 and bool(np.all(values > 0)) and bool(np.all(values == np.round(values)))


def eng(ax, axis: str = "y") -> None:
    """300 k, 1.2 M rather than an offset '1e6' at the top of the axis."""
    getattr(ax, f"{axis}axis").set_major_formatter(EngFormatter(sep=" "))


def time_unit(seconds: float) -> tuple[float, str]:
    """A (scale, unit) that shows `seconds` as numbers of at least 1: simulated times span µs to s."""
    for scale, unit in ((1.0, "s"), (1e3, "ms")):
        if seconds * scale >= 1:
            return scale, unit
    return 1e6, "µs"


def legend(fig, axes, title: str = "", extra: list = (), order: list[str] = ()) -> None:
    """One legend for the figure, right of the panels (never over data), without repeated entries,
    lines in `order` (the same in every figure), then the `extra` (handle, label) entries."""
    found = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            found.setdefault(label, handle)
    seen = {label: found[label] for label in order if label in found}
    seen.update({label: handle for label, handle in found.items() if label not in seen})
    for handle, label in extra:
        seen.setdefault(label, handle)
    if seen:
        fig.legend(list(seen.values()), list(seen.keys()), title=title or None, loc="outside right upper",
                   frameon=False)


def add_caption(fig, text: str) -> None:
    """The caption under the figure (bbox_inches='tight' grows the canvas to hold it)."""
    if text:
        fig.text(0.0, -0.02, text, ha="left", va="top", fontsize=CAPTION_SIZE, color="0.25",
                 transform=fig.transFigure)


def caption_width(fig) -> int:
    """Characters of caption text a line across the figure holds."""
    return max(60, int(fig.get_figwidth() * 17))


def save(fig, out: Path, name: str) -> list[Path]:
    """Write `name`.svg and `name`.png (300 dpi) to `out`; close the figure; the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for ext in FORMATS:
        path = out / f"{name}.{ext}"
        fig.savefig(path, dpi=DPI, bbox_inches="tight", pad_inches=0.08)
        written.append(path)
    plt.close(fig)
    return written
