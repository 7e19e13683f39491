"""The figures of docs/VALIDATION.md's convergence section, from pssim runs of the named experiments.

    python scripts/convergence_figures.py          # writes docs/img/convergence_*.png, prints the numbers

Each figure is one published claim on its experiment (pssim/conf/experiment/); the claims tests
(tests/test_convergence_claims.py) assert the same runs' numbers.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pssim import simulate  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "docs" / "img"
H8 = sum(1 / k for k in range(1, 9))


def run(experiment: str, *overrides: str):
    return simulate([f"+experiment={experiment}", *overrides, "output.progress=false"])


def staleness_aware(ax) -> None:
    every = "eval.every_samples=4096"
    for label, extra in [("BSP", ()), ("ASP, lr (sum)", ("+policy=async", "policy.gradient_scale=sum")),
                         ("ASP, lr / staleness", ("+policy=async", "policy.gradient_scale=staleness_aware"))]:
        r = run("staleness_aware_lr", every, *extra)
        per_step = r.summary["samples"] / r.summary["global_steps"]
        ax.plot(r.evals["step"] * per_step, r.evals["loss"], label=label)
        print(f"staleness_aware_lr {label}: loss {r.summary['final_loss']:.3f}, accuracy {r.summary['final_accuracy']:.3f}")
    ax.set(title="Zhang et al.: staleness-aware lr (8 workers)", xlabel="samples", ylabel="held-out loss")
    ax.legend()


def depth(axes) -> None:
    for ax, hidden in zip(axes, ("[64]", "[64,64,64,64]")):
        for n in (1, 8):
            r = run("staleness_depth", f"cluster.workers={n}", f"workload.hidden={hidden}", "eval.every=25",
                    "train.steps=800")
            ax.plot(r.evals["step"], r.evals["loss"],
                    label=f"{n} workers (staleness 0-{n - 1})" if n > 1 else "1 worker (no staleness)")
            print(f"staleness_depth hidden={hidden} workers={n}: updates to 1.0 = {r.summary['steps_to_target']}")
        ax.axhline(1.0, color="grey", lw=0.8, ls=":")
        ax.set(title=f"Dai et al.: MLP {hidden.count('64')} hidden layer(s)", xlabel="updates", ylabel="held-out loss")
        ax.legend()


def tax(ax) -> None:
    means = [0.0, 0.0005, 0.001, 0.002, 0.004]
    curves = {"BSP": ("+policy=sync",), "BSP, 2 backup workers": ("+policy=sync", "policy.backup_workers=2"),
              "ASP (lr/n)": ("+policy=async", "policy.gradient_scale=mean")}
    base = None
    for label, extra in curves.items():
        times = []
        for m in means:
            strag = ("stragglers=exponential", f"stragglers.mean_s={m}") if m else ()
            s = run("straggler_tax", *strag, *extra).summary
            times.append(s["time_to_target_s"])
            if label == "BSP" and m == 0:
                base = s
        ax.plot([m * 1e3 for m in means], times, marker="o", label=label)
        print(f"straggler_tax {label}: " + ", ".join(f"{m * 1e3:g} ms: {t:.3f} s" for m, t in zip(means, times)))
    predicted = [base["time_to_target_s"] + base["steps_to_target"] * H8 * m for m in means]
    ax.plot([m * 1e3 for m in means], predicted, ls="--", color="grey", label="BSP: T0 + steps x H_8 x mean")
    ax.set(title="The straggler tax (8 workers, exponential)", xlabel="straggler mean (ms)",
           ylabel="time to held-out loss 0.9 (s)")
    ax.legend()


def scaling(ax) -> None:
    small = run("linear_scaling", "cluster.workers=1", "train.lr=0.025", "train.warmup_steps=0").summary["final_loss"]
    sizes = [8, 32, 128]
    lines = {"lr x k, warm-up": [], "lr not scaled": []}
    for n in sizes:
        steps = 131072 // (32 * n)
        lines["lr x k, warm-up"].append(run("linear_scaling", f"cluster.workers={n}", f"train.lr={0.025 * n}",
                                             f"train.warmup_steps={max(1, steps // 10)}").summary["final_loss"])
        lines["lr not scaled"].append(run("linear_scaling", f"cluster.workers={n}", "train.lr=0.025",
                                           "train.warmup_steps=0").summary["final_loss"])
    for label, losses in lines.items():
        ax.plot([32 * n for n in sizes], losses, marker="o", label=label)
        print(f"linear_scaling {label}: " + ", ".join(f"batch {32 * n}: {l:.3f}" for n, l in zip(sizes, losses)))
    ax.axhline(small, color="grey", ls="--", label=f"batch 32, lr 0.025 ({small:.3f})")
    ax.set(xscale="log", title="Goyal et al.: linear scaling (131,072 samples)", xlabel="batch (n x 32)",
           ylabel="final held-out loss")
    ax.set_xticks([32 * n for n in sizes], [str(32 * n) for n in sizes])
    ax.minorticks_off()
    ax.legend()


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    staleness_aware(ax)
    fig.tight_layout()
    fig.savefig(OUT / "convergence_staleness_aware.png", dpi=120)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    depth(axes)
    fig.tight_layout()
    fig.savefig(OUT / "convergence_depth.png", dpi=120)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    tax(axes[0])
    scaling(axes[1])
    fig.tight_layout()
    fig.savefig(OUT / "convergence_stragglers_scaling.png", dpi=120)


if __name__ == "__main__":
    main()
