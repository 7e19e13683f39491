"""summary.json: the headline numbers of one run, and the table printed at its end."""

from __future__ import annotations

import math

import pandas as pd


def _mean(series: pd.Series) -> float | None:
    return float(series.mean()) if len(series) else None


def device_names(cluster) -> str:
    """The GPU type, or the types of a heterogeneous cluster with their counts ("titan_v x4, rtx2060 x4")."""
    per_gpu = list(cluster.gpu_devices) or [d for d in cluster.worker_devices for _ in range(cluster.gpus_per_worker)]
    if not per_gpu or len(set(per_gpu)) == 1:
        return per_gpu[0] if per_gpu else cluster.device
    counts = {d: per_gpu.count(d) for d in dict.fromkeys(per_gpu)}
    return ", ".join(f"{d} x{k}" for d, k in counts.items())


def summarize(ctx, gradients_per_update: int, sim_time: float, wall_s: float, steps: pd.DataFrame,
              evals: pd.DataFrame, status: str = "completed", diverged_at: int | None = None,
              diagnosis: str | None = None) -> dict:
    """Headline metrics of a finished run (its RunContext); every key is documented in docs/OUTPUTS.md."""
    c = ctx.config
    global_steps = ctx.progress.global_step
    per_step = gradients_per_update * c.train.batch_size
    samples = global_steps * per_step
    last = evals.iloc[-1] if not evals.empty and status != "diverged" else None
    target = ctx.recorder.target  # (global step, simulated time) of the exact crossing
    faults = getattr(ctx.recorder, "faults", [])  # FaultRecords (pssim/faults.py), none without faults
    return _json_safe({
        "policy": c.policy.name,
        "workers": c.cluster.workers,
        "gpus": c.cluster.gpus,
        "gpus_per_machine": c.cluster.gpus_per_machine,
        "servers": len(ctx.servers.shards) if ctx.servers is not None else None,  # PS shards (None: no PS)
        "network": c.network.name,
        "topology": c.topology.name,
        "profile": c.profile.name,
        "workload": c.workload.name,
        "device": device_names(c.cluster),
        "precision": c.cluster.precision,
        "stragglers": c.stragglers.model,
        "fault_model": c.faults.model,
        "batch_size": c.train.batch_size,
        "seed": c.seed,
        "global_steps": global_steps,
        "status": status,
        "diverged_at_step": diverged_at,
        "diagnosis": diagnosis,
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
        "time_to_target_s": target[1] if target else None,
        "steps_to_target": target[0] if target else None,
        "samples_to_target": target[0] * per_step if target else None,
        "bytes_sent": ctx.network.bytes_delivered,
        "faults": len(faults),
        "time_lost_to_faults_s": float(sum(f.time_lost_s for f in faults)),
        "updates_lost": int(sum(f.updates_lost for f in faults)),
        "wall_s": wall_s,
        "events": ctx.env.events,
    })


def _json_safe(summary: dict) -> dict:
    """NaN and infinities (a diverged run's loss) become None: summary.json is always valid JSON."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in summary.items()}


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def seconds(value) -> str:
    """A duration with a unit that keeps 3-4 significant digits: 0.218 ms, 42.99 ms, 1.204 s."""
    if _missing(value):
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if abs(value) >= scale or unit == "us":
            return f"{value / scale:.4g} {unit}"


def size(value) -> str:
    """Bytes in decimal units: 1.72 MB, 17.6 GB."""
    if _missing(value):
        return "-"
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.0f} B"


def count(value) -> str:
    return "-" if _missing(value) else f"{value:,.0f}"


STATUS_TEXT = {
    "stalled": "STALLED: nothing left to happen before train.steps (e.g. a barrier waiting for a dead worker)",
    "interrupted": "INTERRUPTED (Ctrl-C): the tables hold the run so far",
}


def format_summary(s: dict) -> str:
    """The table printed at the end of a run: the setup on top, then the results with units."""
    servers = f", {s['servers']} PS shard{'s' * (s['servers'] != 1)}" if s.get("servers") else ""
    setup = [
        f"{s['policy']}: {s['workers']} workers, {s['gpus']} GPUs ({s['device']}, {s['precision']}, "
        f"{s['gpus_per_machine']} per machine){servers}",
        f"network {s['network']} on {s['topology']}; timing profile {s['profile']}, numerics {s['workload']}; "
        f"stragglers {s['stragglers']}; batch {s['batch_size']} per worker; seed {s['seed']}",
    ]
    loss = "-" if _missing(s["final_loss"]) else f"{s['final_loss']:.4f} (accuracy {s['final_accuracy']:.4f})"
    if s["status"] == "diverged":
        loss = f"DIVERGED at global step {s['diverged_at_step']:,} (parameters or loss not finite)"
    target = "-" if s["target_loss"] is None else (
        f"not reached (target {s['target_loss']})" if s["time_to_target_s"] is None else
        f"{seconds(s['time_to_target_s'])} at step {s['steps_to_target']:,} (target {s['target_loss']})")
    rows = [
        ("global steps", f"{count(s['global_steps'])} ({count(s['samples'])} samples)"
                         + (f"  {STATUS_TEXT[s['status']]}" if s["status"] in STATUS_TEXT else "")),
        ("simulated time", seconds(s["sim_time_s"])),
        ("throughput", f"{count(s['throughput_samples_per_s'])} samples/s"),
        ("iteration", f"{seconds(s['mean_iteration_s'])} (compute {seconds(s['mean_compute_s'])}, "
                      f"communication {seconds(s['mean_communication_s'])})"),
        ("staleness", "-" if _missing(s["mean_staleness"]) else
                      f"mean {s['mean_staleness']:.3g}, max {s['max_staleness']} updates"),
        ("final loss", loss),
        ("time to target", target),
        ("bytes sent", size(s["bytes_sent"])),
        *([("faults", f"{s['faults']} ({seconds(s['time_lost_to_faults_s'])} lost, "
                      f"{s['updates_lost']} update{'s' * (s['updates_lost'] != 1)} lost)")]
          if s.get("faults") else []),
        *([("diagnosis", s["diagnosis"])] if s.get("diagnosis") else []),
        *([("partitions", f"{s['partition_search']['partitions']} (the partition search's pick of "
                          f"{', '.join(s['partition_search']['seconds_per_step'])} tried)")]
          if s.get("partition_search") else []),
        ("wall time", f"{s['wall_s']:.2f} s ({count(s['events'])} events)"),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k.ljust(width)}  {v}" for k, v in rows]
    rule = "-" * max(len(line) for line in [*setup, *lines])
    return "\n".join([rule, *setup, rule, *lines, rule])
