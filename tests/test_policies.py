"""Every registered policy: determinism (same seed, identical tables) and conformance (it trains, it
accounts, its records are consistent)."""

import pandas as pd
import pytest

from pssim import registered_policies as policies, simulate
from pssim.testing import check_policy
from conftest import fast

CLUSTER = fast(cluster__workers=4, cluster__servers=2, train__steps=40, eval__every=10,
               stragglers="exponential", stragglers__mean_s=2e-4, output__trace=True)


def run(name, **extra):
    return simulate(**{**CLUSTER, "policy": name, **extra})


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
    check_policy(name)


@pytest.mark.parametrize("name", policies())
def test_policy_conformance_on_other_cluster_shapes(name):
    """Machines of two GPUs in racks of two, a slow worker, timing only: the rules still hold."""
    check_policy(name, **{"cluster.workers": 6, "cluster.gpus_per_machine": 2, "cluster.cpu_machines": 1,
                          "cluster.servers": 3, "topology": "two_tier", "topology.hosts_per_rack": 2,
                          "stragglers": "slow_worker", "stragglers.worker": 1, "train.numerics": False})


@pytest.mark.parametrize("name", ["sync", "async", "ssp"])
def test_policy_conformance_with_replicas_of_two_gpus(name):
    """Parameter-server policies with pipelined replicas: two stages per worker, two GPUs per machine."""
    check_policy(name, **{"cluster.gpus_per_worker": 2, "cluster.gpus_per_machine": 2,
                          "workload.hidden": [64, 64]})


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
