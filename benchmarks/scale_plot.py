"""Plot of a scale sweep: wall time of simulate() against GPUs, one line per policy (log-log).

What: reads the JSON that ``benchmarks/scale.py --json`` writes (one or several files: a later file's
runs replace an earlier file's runs of the same policy and size) and writes a PNG: CPU seconds (or,
with --key wall_s, wall seconds) of simulate() against GPUs on log-log axes, one line per policy with
its fitted growth exponent in the legend, runs that passed the (wall-clock) timeout drawn as an open
marker at the timeout, and dotted guides of slope 1 and 2. CPU seconds by default: on a shared
machine the wall time measures the other processes as much as the simulator.

Why: the growth exponent is the number to watch (docs/PERFORMANCE.md, "Scale"); a picture shows at a
glance which policy bends away from linear and where.

Usage:
    python benchmarks/scale.py --gpus 64 256 1024 4096 --steps 10 --json scale.json
    python benchmarks/scale_plot.py scale.json -o docs/scale.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale import POLICIES, exponent  # noqa: E402


def load(paths: list[str]) -> tuple[list[dict], dict]:
    """Every run of the files (later files win per (policy, gpus)) and the last file's meta."""
    runs: dict = {}
    meta: dict = {}
    for path in paths:
        data = json.loads(Path(path).read_text())
        meta = data.get("meta", meta)
        for r in data["runs"]:
            runs[r["policy"], r["gpus"]] = r
    return list(runs.values()), meta


def plot(runs: list[dict], meta: dict, out: str, key: str = "cpu_s") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    sizes = sorted({r["gpus"] for r in runs})
    for i, policy in enumerate(p for p in POLICIES if any(r["policy"] == p for r in runs)):
        mine = sorted((r for r in runs if r["policy"] == policy), key=lambda r: r["gpus"])
        done = [r for r in mine if key in r]
        b = exponent(done, key)
        label = f"{policy} (b = {b:.2f})" if b is not None else policy
        line, = ax.plot([r["gpus"] for r in done], [r[key] for r in done], "o-", label=label)
        late = [r for r in mine if "timeout_s" in r]
        if late:
            ax.plot([r["gpus"] for r in late], [r["timeout_s"] for r in late], "o", mfc="none",
                    color=line.get_color(), ms=6 + i)  # nested rings where several time out at one size
    lo = min(r[key] for r in runs if key in r)
    for slope in (1, 2):
        ax.plot(sizes, [lo * (g / sizes[0]) ** slope for g in sizes], ":", color="grey", lw=1)
        ax.annotate(f"slope {slope}", (sizes[-1], lo * (sizes[-1] / sizes[0]) ** slope), color="grey",
                    fontsize=8, ha="right", va="bottom")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(sizes, [f"{g:,}" for g in sizes])
    ax.set_xlabel("GPUs (8 per machine, two_tier)")
    ax.set_ylabel(f"{'CPU' if key == 'cpu_s' else 'wall'} seconds of simulate()")
    steps = meta.get("steps", "?")
    ax.set_title(f"pssim timing-only runs, resnet50, {steps} steps "
                 f"({meta.get('cpus', '?')} CPUs, commit {meta.get('commit', '?')})", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, title="policy (growth exponent)", title_fontsize=8)
    fig.text(0.01, 0.01, "open marker: passed the wall-clock timeout (drawn at the timeout)", fontsize=7,
             color="grey")
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json", nargs="+", help="files written by benchmarks/scale.py --json")
    ap.add_argument("-o", "--out", default="scale.png", help="the PNG to write (scale.png)")
    ap.add_argument("--key", choices=["cpu_s", "wall_s"], default="cpu_s", help="what to plot (cpu_s)")
    args = ap.parse_args()
    runs, meta = load(args.json)
    if not any(args.key in r for r in runs):
        sys.exit("no finished runs in " + ", ".join(args.json))
    plot(runs, meta, args.out, args.key)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
