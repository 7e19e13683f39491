"""The run's tables as pandas DataFrames, built once at the end from flat records.

Columns are documented in docs/OUTPUTS.md.
"""

from __future__ import annotations

from dataclasses import fields

import pandas as pd

from pssim.cluster.worker import StepRecord

STEP_COLUMNS = [f.name for f in fields(StepRecord)]
EVAL_COLUMNS = ["step", "sim_time_s", "loss", "accuracy"]
FAULT_COLUMNS = ["time_s", "component", "kind", "recovered_at_s", "updates_lost", "bytes_resent", "time_lost_s"]
LINK_COLUMNS = ["link", "src", "dst", "bandwidth_Bps", "bytes", "busy_s", "busy_fraction", "utilisation"]


def steps_frame(records: list[StepRecord]) -> pd.DataFrame:
    """One row per completed worker step, ordered by (worker, step)."""
    frame = pd.DataFrame([vars(r) for r in records], columns=STEP_COLUMNS)  # vars: 10x asdict's speed
    return frame.sort_values(["worker", "step"], kind="stable").reset_index(drop=True)


def evals_frame(evals: list[tuple[int, float, float, float]]) -> pd.DataFrame:
    return pd.DataFrame(evals, columns=EVAL_COLUMNS)


def links_frame(network, sim_time: float) -> pd.DataFrame:
    """Per directed link: bytes carried, seconds with at least one flow, and utilisation of line rate."""
    rows = []
    for link in network.topology.links:
        carried = network.link_bytes.get(link, 0.0)
        busy = network.link_busy_s.get(link, 0.0)
        line = link.transport.bandwidth
        rows.append((link.name, link.src, link.dst, line, carried, busy,
                     busy / sim_time if sim_time > 0 else 0.0,
                     carried / (line * sim_time) if sim_time > 0 else 0.0))
    return pd.DataFrame(rows, columns=LINK_COLUMNS)


def faults_frame(records) -> pd.DataFrame:
    """One row per fault, in time order (FaultRecord of pssim/faults.py; empty without faults)."""
    return pd.DataFrame([[getattr(r, c) for c in FAULT_COLUMNS] for r in records], columns=FAULT_COLUMNS)
