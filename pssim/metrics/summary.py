"""summary.json: the headline numbers of one run, and the table printed at its end."""

from __future__ import annotations

import math

import pandas as pd


def _time_to_target(evals: pd.DataFrame, target: float | None) -> float | None:
    """Simulated seconds until the held-out loss first reaches `target` (None if never)."""
    if target is None or evals.empty:
        return None
    hit = evals[evals["loss"] <= target]
    return None if hit.empty else float(hit["sim_time_s"].iloc[0])


def _mean(series: pd.Series) -> float | None:
    return float(series.mean()) if len(series) else None


def summarize(ctx, gradients_per_update: int, sim_time: float, wall_s: float, steps: pd.DataFrame,
              evals: pd.DataFrame, stalled: bool = False) -> dict:
    """Headline metrics of a finished run (its RunContext); every key is documented in docs/OUTPUTS.md."""
    c = ctx.config
    global_steps = ctx.progress.global_step
    samples = global_steps * gradients_per_update * c.train.batch_size
    last = evals.iloc[-1] if not evals.empty else None
    return {
        "policy": c.policy.name,
        "workers": c.cluster.workers,
        "servers": c.cluster.servers,
        "network": c.network.name,
        "workload": c.workload.name,
        "device": c.cluster.device,
        "seed": c.seed,
        "global_steps": global_steps,
        "stalled": stalled,
        "samples": samples,
        "sim_time_s": sim_time,
        "throughput_samples_per_s": samples / sim_time if sim_time > 0 else None,
        "mean_iteration_s": _mean(steps["comm_end"] - steps["compute_start"]),
        "mean_compute_s": _mean(steps["compute_end"] - steps["compute_start"]),
        "mean_communication_s": _mean(steps["comm_end"] - steps["compute_end"]),
        "mean_staleness": _mean(steps["staleness"]),
        "max_staleness": int(steps["staleness"].max()) if len(steps) else None,
        "final_loss": float(last["loss"]) if last is not None else None,
        "final_accuracy": float(last["accuracy"]) if last is not None else None,
        "target_loss": c.train.target_loss,
        "time_to_target_s": _time_to_target(evals, c.train.target_loss),
        "bytes_sent": ctx.network.bytes_delivered,
        "wall_s": wall_s,
        "events": ctx.env.events,
    }


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def format_summary(summary: dict) -> str:
    """A two-column text table of the summary, for the end of a run."""
    width = max(len(k) for k in summary)
    lines = [f"{k.ljust(width)}  {_fmt(v)}" for k, v in summary.items()]
    rule = "-" * max(len(line) for line in lines)
    return "\n".join([rule, *lines, rule])
