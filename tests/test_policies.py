"""Every registered policy: determinism (same seed, identical tables) and conformance (it trains, it
accounts, its records are consistent)."""

import pandas as pd
import pytest

from pssim import policies, simulate
from pssim.policies import POLICIES
from conftest import fast

CLUSTER = fast(cluster__workers=4, cluster__servers=2, train__steps=40, eval__every=10,
               stragglers__model="exponential", stragglers__mean_s=2e-4, output__trace=True)


def run(name, **extra):
    return simulate(**{**CLUSTER, "policy.name": name, **extra})


@pytest.mark.parametrize("name", policies())
def test_same_seed_gives_identical_tables(name):
    a, b = run(name), run(name)
    for table in ("steps", "evals", "links"):
        pd.testing.assert_frame_equal(getattr(a, table), getattr(b, table), check_exact=True)
    drop = lambda s: {k: v for k, v in s.items() if k != "wall_s"}  # noqa: E731
    assert drop(a.summary) == drop(b.summary)
    assert a.trace == b.trace


@pytest.mark.parametrize("name", policies())
def test_another_seed_gives_other_tables(name):
    a, b = run(name), run(name, seed=1)
    assert not a.steps["compute_end"].equals(b.steps["compute_end"])
    assert a.evals["loss"].iloc[-1] != b.evals["loss"].iloc[-1]


@pytest.mark.parametrize("name", policies())
def test_policy_conformance(name):
    result = run(name)
    s, steps, evals, links = result.summary, result.steps, result.evals, result.links
    cfg = result.config

    # It runs to the requested number of global updates, and every worker takes part.
    assert s["global_steps"] == cfg.train.steps
    assert set(steps["worker"]) == set(range(cfg.cluster.workers))
    # Records are causally ordered and within the run.
    assert (steps["compute_start"] <= steps["compute_end"]).all()
    assert (steps["compute_end"] <= steps["comm_end"]).all()
    # Communication may overlap the backward pass, but never starts before the step does.
    assert (steps["compute_start"] <= steps["comm_start"]).all()
    assert (steps["comm_start"] <= steps["comm_end"]).all()
    assert (steps["comm_end"] <= s["sim_time_s"] + 1e-12).all()
    assert (steps["staleness"] >= 0).all()
    assert (steps["version"] <= cfg.train.steps).all()
    # Each worker's steps are consecutive and never overlap.
    for _, g in steps.groupby("worker"):
        assert list(g["step"]) == list(range(len(g)))
        assert (g["compute_start"].iloc[1:].to_numpy() >= g["comm_end"].iloc[:-1].to_numpy()).all()
    # Evaluations at step 0 and every eval.every steps, in simulated-time order; it learned.
    assert list(evals["step"]) == list(range(0, cfg.train.steps + 1, cfg.eval.every))
    assert evals["sim_time_s"].is_monotonic_increasing
    assert evals["loss"].iloc[-1] < evals["loss"].iloc[0]
    # Bytes: every byte a worker sent crossed its NIC uplink; links never exceed their line rate.
    assert s["bytes_sent"] > 0 and s["events"] > 0
    assert (links["utilisation"] <= 1 + 1e-9).all() and (links["busy_fraction"] <= 1 + 1e-9).all()
    uplinks = links.set_index("link")
    for w, g in steps.groupby("worker"):
        assert uplinks.loc[f"worker{w}->switch", "bytes"] >= g["bytes_sent"].sum()
    # Throughput is samples over simulated time.
    assert s["throughput_samples_per_s"] == pytest.approx(s["samples"] / s["sim_time_s"])
    # The trace has a track per worker, server and link.
    names = {(e["pid"], e["args"]["name"]) for e in result.trace["traceEvents"] if e["name"] == "thread_name"}
    assert {n for p, n in names if p == 1} == {f"worker{i}" for i in range(4)}
    servers = {n for p, n in names if p == 2}
    if POLICIES[name].uses_servers:
        assert servers == {"server0", "server1"}
    else:  # servers, if the system has any, run on the cluster's own machines
        assert servers <= set(links["src"])
    assert len({n for p, n in names if p == 3}) == len(links)


@pytest.mark.parametrize("name", policies())
def test_timing_only_mode_keeps_the_timing(name):
    """Without numerics the schedule is the same: gradients change no simulated time."""
    full, timing = run(name), run(name, **{"train.numerics": False})
    pd.testing.assert_frame_equal(full.steps, timing.steps)
    assert timing.evals.empty and timing.summary["final_loss"] is None


def test_the_trace_covers_only_the_first_trace_steps():
    full = run("sync", **{"output.trace_steps": 0})
    short = run("sync", **{"output.trace_steps": 5})
    def last_start(r):
        return max(e["ts"] for e in r.trace["traceEvents"] if e["ph"] == "X")
    assert last_start(short) < last_start(full)
    # Under sync, global step 5 is applied within round 4 (0-based), before any worker's round 5 starts.
    cutoff = short.steps.groupby("step")["comm_end"].max().iloc[4] * 1e6
    assert last_start(short) <= cutoff + 1e-6
    assert full.summary["bytes_sent"] == short.summary["bytes_sent"]  # accounting is not traced
