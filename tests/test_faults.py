"""Faults (the `faults` config group): each system's recovery against numbers derived independently.

Closed forms used here (REFERENCES.md's parameter-server and SyncReplicasOptimizer descriptions):
- BSP with b backup workers applies the mean of the first n of n+b gradients of each version, so its round
  time is set by the n-th fastest worker, not the slowest.
- Until a fault hits, a run is the fault-free run (same seed, same events), so where the crash falls in a
  worker's step (computing, pushing, pulling) is read from the fault-free run's steps table.
- A lockstep policy abandons the step a member crashed in and starts it again when the member is back:
  with equal workers (step T), a crash at t in step k (started at kT) with restart after d ends the run
  (t - kT) + d later than the fault-free run, and the math (final parameters) is unchanged.
- MTBF faults of a class form a Poisson process of rate 1/mtbf: over a run of length T their count N has
  mean and variance T/mtbf; we allow |N - T/mtbf| <= 4 sqrt(T/mtbf) (a false failure below 1e-4).
"""

import json
import math

import numpy as np
import pytest
import torch

from pssim import simulate, to_config
from pssim.config import ConfigError
from conftest import fast


def run(config=None, **overrides):
    """simulate() with keyword keys written with '__' for dots (as conftest.fast does)."""
    return simulate(config, **{k.replace("__", "."): v for k, v in overrides.items()})


def events(*items) -> list[str]:
    """Overrides for scheduled faults: each item (at_s, kind, target, for_s[, fraction])."""
    rows = []
    for at, kind, target, for_s, *rest in items:
        row = f"{{at_s: {at!r}, kind: {kind}, target: '{target}', for_s: {'null' if for_s is None else repr(for_s)}"
        row += f", fraction: {rest[0]!r}}}" if rest else "}"
        rows.append(row)
    return ["faults=worker_crash", f"faults.events=[{', '.join(rows)}]"]


def timing(**overrides):
    return fast(train__numerics=False, network="rdma_100g", **overrides)


# -- BSP with backup workers ----------------------------------------------------------------------------

def test_backup_workers_take_the_pace_of_the_nth_fastest_not_the_slowest():
    """n = 3, b = 1: four workers, worker 3 ten times slower. With the backup the servers apply the three
    fast gradients of each version and drop the slow one's (late, of an old version): the round is an
    equal three-worker cluster's round. Without it (b = 0, four workers) every round waits for the slow
    worker: 10c plus at most an equal cluster's communication. c is the fault-free compute time."""
    steps = 200
    common = timing(train__steps=steps, eval__every=steps)
    slow = {"stragglers": "slow_worker", "stragglers.worker": 3, "stragglers.factor": 10.0}
    equal3 = run(policy="sync", **common, cluster__workers=3)
    c = equal3.summary["mean_compute_s"]
    round3 = equal3.summary["sim_time_s"] / steps

    backup = run(policy="sync", **{**common, "cluster.workers": 4, "policy.backup_workers": 1, **slow})
    assert backup.config.stragglers.factor == 10.0 and backup.config.policy.backup_workers == 1
    per_round = backup.summary["sim_time_s"] / steps
    assert per_round == pytest.approx(round3, rel=2e-3)  # the slow worker's late pushes cost a little
    assert per_round < 2 * c  # nowhere near 10c
    assert backup.summary["samples"] == steps * 3 * backup.config.train.batch_size  # n gradients a round

    none = run(policy="sync", **{**common, "cluster.workers": 4, **slow})
    round_b0 = none.summary["sim_time_s"] / steps
    assert 10 * c < round_b0 < 10 * c + (round3 - c) * 1.5


def test_backup_workers_zero_changes_no_number():
    base = run(policy="sync", **fast(cluster__workers=3))
    zero = run(policy="sync", **fast(cluster__workers=3, policy__backup_workers=0))
    assert torch.equal(base.params, zero.params) and base.summary["sim_time_s"] == zero.summary["sim_time_s"]


def test_backup_workers_must_leave_a_round_at_least_one_gradient():
    with pytest.raises(ConfigError, match="policy.backup_workers"):
        to_config(policy="sync", **{"cluster.workers": 2, "policy.backup_workers": 2})


def test_a_crashed_worker_is_absent_from_bsp_rounds_with_a_backup_and_stalls_them_without():
    common = timing(cluster__workers=4, train__steps=60)
    lost = events((1e-3, "worker_crash", 1, None))
    with_backup = run(["+policy=sync", *lost], **common, policy__backup_workers=1)
    assert with_backup.summary["status"] == "completed" and with_backup.summary["global_steps"] == 60
    rows = with_backup.steps[with_backup.steps.worker == 1]
    assert (rows.compute_start < 1e-3).all()

    stalled = run(["+policy=sync", *lost], **common)
    s = stalled.summary
    assert s["status"] == "stalled" and s["global_steps"] < 60
    assert "worker 1 crashed" in s["diagnosis"] and "backup_workers=0" in s["diagnosis"]
    assert s["sim_time_s"] < 1e-3 + 1e-3  # ends promptly: within a round of the crash
    from pssim.metrics.summary import format_summary
    table = format_summary(s)
    assert "STALLED" in table and "diagnosis" in table and "worker 1 crashed" in table


# -- async / ssp: a crash loses the in-flight gradient ------------------------------------------------

@pytest.mark.parametrize("phase", ["push", "compute"])
@pytest.mark.parametrize("policy", ["async", "ssp"])
def test_an_async_worker_crash_loses_only_its_in_flight_gradient(policy, phase):
    """Worker 1 crashes at t inside step 5's push (its gradient has not reached the server: lost, 1) or
    inside step 5's compute (nothing pushed yet: 0 lost), restarts after d with a fresh pull and goes on
    with step 5; no step of it starts in [t, t + d). t is read from the fault-free run."""
    common = timing(cluster__workers=4, train__steps=400, eval__every=400)
    free = run(policy=policy, **common)
    row = free.steps[(free.steps.worker == 1) & (free.steps.step == 5)].iloc[0]
    t = float((row.comm_start + row.push_end) / 2 if phase == "push" else (row.compute_start + row.compute_end) / 2)
    expected_lost = 1 if phase == "push" else 0
    d = 5 * float(row.comm_end - row.compute_start)

    r = run([f"+policy={policy}", *events((t, "worker_crash", 1, d))], **common)
    assert r.summary["status"] == "completed" and r.summary["global_steps"] == 400
    mine = r.steps[r.steps.worker == 1]
    assert not ((mine.compute_start >= t) & (mine.compute_start < t + d)).any()
    assert list(mine[mine.compute_start < t].step) == list(range(5))  # step 5 had no row: it was lost
    after = mine[mine.compute_start >= t + d]
    assert after.step.iloc[0] == 5 and list(after.step) == list(range(5, 5 + len(after)))  # its own count
    # A fresh pull: the first step after the restart is computed on every update applied by t + d.
    assert after.version.iloc[0] >= (r.steps.push_end <= t + d).sum() > 0
    assert r.summary["updates_lost"] == expected_lost == int(r.faults.updates_lost.sum())
    assert r.summary["faults"] == 1 and r.faults.recovered_at_s.iloc[0] == pytest.approx(t + d)
    assert r.summary["time_lost_to_faults_s"] == pytest.approx(d)  # PS policies: the downtime
    # Every applied gradient has a row (global step = gradients applied; the unfinished last ones too).
    assert r.summary["global_steps"] <= len(r.steps)


# -- lockstep policies: the step restarts ---------------------------------------------------------------

def test_an_allreduce_member_crash_restarts_the_step_after_the_restart_and_changes_no_math():
    steps = 20
    # Without Horovod's cycle grid every step takes the same time T, which the closed form needs.
    common = fast(cluster__workers=4, train__steps=steps, network="rdma_100g", policy__cycle_ms=0)
    free = run(policy="allreduce", **common)
    T = free.summary["sim_time_s"] / steps
    k, t, d = 7, 7 * T + 0.3 * T, 50 * T
    assert free.steps[free.steps.step == k].compute_start.iloc[0] == pytest.approx(k * T)

    r = run(["+policy=allreduce", *events((t, "worker_crash", 2, d))], **common)
    assert r.summary["status"] == "completed"
    assert r.summary["sim_time_s"] == pytest.approx(steps * T + (t - k * T) + d, rel=1e-9)
    restarted = r.steps[r.steps.step == k]
    assert np.allclose(restarted.compute_start, t + d, rtol=1e-9)  # the step from its beginning
    assert np.allclose(restarted.comm_end - restarted.compute_start, T, rtol=1e-6)  # a full step
    assert torch.equal(r.params, free.params)  # the update is the same mean of the same gradients
    assert r.summary["time_lost_to_faults_s"] == pytest.approx((t - k * T) + d)
    assert r.summary["updates_lost"] == 0


def test_a_permanent_allreduce_member_crash_stalls_with_a_diagnosis():
    r = run(["+policy=allreduce", *events((1e-3, "worker_crash", 0, None))],
                 **timing(cluster__workers=4, train__steps=60))
    assert r.summary["status"] == "stalled" and "worker 0 crashed" in r.summary["diagnosis"]
    assert "waits for worker(s) 0 to restart" in r.summary["diagnosis"]


@pytest.mark.parametrize("policy", ["byteps", "herring"])
def test_byteps_and_herring_survive_a_member_restart(policy):
    r = run([f"+policy={policy}", *events((1e-3, "worker_crash", 1, 2e-3))],
                 **timing(cluster__workers=4, train__steps=30))
    assert r.summary["status"] == "completed" and r.summary["global_steps"] == 30
    assert r.summary["time_lost_to_faults_s"] > 2e-3


# -- links ----------------------------------------------------------------------------------------------

LEAF_SPINE = {"topology": "leaf_spine", "topology.hosts_per_rack": 2, "topology.spines": 2}


@pytest.mark.parametrize("policy", ["async", "sync", "allreduce"])
def test_a_spine_link_down_for_good_reroutes_over_the_other_spine(policy):
    r = run([f"+policy={policy}", *events((1e-3, "link_down", "tor0-spine0", None))],
                 **timing(cluster__workers=4, train__steps=60), **LEAF_SPINE)
    assert r.summary["status"] == "completed" and r.summary["global_steps"] == 60
    assert r.summary["faults"] == 1 and math.isnan(r.faults.recovered_at_s.iloc[0])
    assert r.links.set_index("link").loc["tor0->spine1", "bytes"] > 0


def test_a_hosts_only_link_down_for_good_stalls_with_a_diagnosis_naming_it():
    r = run(["+policy=sync", *events((1e-3, "link_down", "worker1-switch", None))],
                 **timing(cluster__workers=4, train__steps=60))
    assert r.summary["status"] == "stalled"
    assert "link worker1-switch" in r.summary["diagnosis"] and "never restored" in r.summary["diagnosis"]


def test_a_link_down_and_back_resends_the_lost_messages():
    """A push cut by the link going down is sent again once the link is back: bytes re-sent are whole
    messages, the waiting time is charged to the fault, and the run completes."""
    r = run(["+policy=async", *events((1e-3, "link_down", "worker1-switch", 2e-3))],
                 **timing(cluster__workers=4, train__steps=400))
    assert r.summary["status"] == "completed" and r.summary["global_steps"] == 400
    row = r.faults.iloc[0]
    assert row.recovered_at_s == pytest.approx(3e-3) and row.bytes_resent > 0
    assert 0 < r.summary["time_lost_to_faults_s"] <= 2e-3 * 2  # at most a push and a pull waited
    mine = r.steps[r.steps.worker == 1]
    assert not ((mine.push_end > 1e-3) & (mine.push_end < 3e-3)).any()  # nothing of worker 1 got through


def test_a_degraded_link_slows_the_ring_and_is_restored():
    common = timing(cluster__workers=4, train__steps=40)
    free = run(policy="allreduce", **common)
    r = run(["+policy=allreduce", *events((1e-4, "link_degrade", "worker1-switch", 1.0, 0.01))], **common)
    assert r.summary["sim_time_s"] > free.summary["sim_time_s"]
    assert r.faults.iloc[0].kind == "link_degrade"


# -- MTBF -----------------------------------------------------------------------------------------------

def mtbf_run(seed, mtbf=0.005, steps=4000):
    return run(["+policy=async", "faults=mtbf", f"faults.worker_mtbf_s={mtbf}", "faults.worker_repair_s=1e-5"],
                    **timing(cluster__workers=4, train__steps=steps, seed=seed))


def test_mtbf_faults_are_deterministic_with_the_seed_and_about_run_time_over_mtbf():
    a, b, other = mtbf_run(0), mtbf_run(0), mtbf_run(1)
    assert a.faults.equals(b.faults) and not a.faults.equals(other.faults)
    for r in (a, other):
        expected = r.summary["sim_time_s"] / 0.005
        assert expected > 20
        assert abs(r.summary["faults"] - expected) <= 4 * math.sqrt(expected), (r.summary["faults"], expected)
        assert r.summary["status"] == "completed"


# -- configuration and outputs --------------------------------------------------------------------------

@pytest.mark.parametrize("items,key", [
    ([(1e-3, "worker_crash", 9, None)], "faults.events[0].target"),
    ([(1e-3, "link_down", "worker0-nowhere", None)], "faults.events[0].target"),
    ([(-1.0, "worker_crash", 0, None)], "faults.events[0].at_s"),
    ([(1e-3, "worker_crash", 0, -2.0)], "faults.events[0].for_s"),
    ([(1e-3, "link_degrade", "worker0-switch", 1.0, 1.5)], "faults.events[0].fraction"),
    ([(1e-3, "link_degrade", "worker0-switch", 1.0, 0.0)], "faults.events[0].fraction"),
])
def test_invalid_faults_are_refused_in_one_line_naming_the_key(items, key):
    with pytest.raises(ConfigError) as err:
        simulate(events(*items), **timing(cluster__workers=4, train__steps=5))
    assert key in str(err.value) and "\n" not in str(err.value)


def test_faults_a_policy_cannot_recover_from_yet_are_refused():
    with pytest.raises(ConfigError, match="faults.events.0..kind.*not modelled under policy byteps"):
        to_config(["+policy=byteps", *events((1e-3, "link_down", "worker0-switch", 1.0))])
    to_config(["+policy=bounded_delay", "faults=mtbf"])  # worker crashes under bounded delay are modelled


def test_an_unknown_fault_kind_or_a_bad_mtbf_is_refused():
    with pytest.raises(ConfigError, match="faults.events"):
        to_config(["faults=worker_crash", "faults.events=[{at_s: 0, kind: meteor, target: '0'}]"])
    with pytest.raises(ConfigError, match="faults.worker_mtbf_s"):
        to_config(["faults=mtbf", "faults.worker_mtbf_s=-1"])


@pytest.mark.parametrize("preset", ["none", "worker_crash", "worker_lost", "link_flap", "mtbf"])
def test_every_faults_preset_runs(preset):
    from pssim.presets import preset_names
    assert preset in preset_names("faults")
    r = run(faults=preset, **timing(cluster__workers=4, train__steps=200))
    assert r.summary["status"] == ("stalled" if preset == "worker_lost" else "completed")
    assert r.summary["fault_model"] == r.config.faults.model


def test_no_faults_changes_no_number_and_writes_an_empty_faults_table(tmp_path):
    plain = run(**fast(cluster__workers=3, output__dir=str(tmp_path / "a")))
    empty = run(["faults=worker_crash", "faults.events=[]"], **fast(cluster__workers=3))
    assert torch.equal(plain.params, empty.params) and plain.summary["sim_time_s"] == empty.summary["sim_time_s"]
    assert plain.summary["faults"] == 0 and plain.summary["updates_lost"] == 0
    assert plain.summary["time_lost_to_faults_s"] == 0.0 and plain.summary["diagnosis"] is None
    import pandas as pd
    table = pd.read_parquet(tmp_path / "a" / "faults.parquet")
    assert list(table.columns)[:6] == ["time_s", "component", "kind", "recovered_at_s", "updates_lost",
                                       "bytes_resent"] and table.empty


def test_faults_are_spans_on_a_faults_track_that_nest():
    r = run(["+policy=async", *events((1e-3, "worker_crash", 1, 2e-3), (1.5e-3, "link_down", "worker2-switch", 1e-3))],
                 **timing(cluster__workers=4, train__steps=400, output__trace=True, output__trace_steps=0))
    trace = json.loads(json.dumps(r.trace))
    names = {e["tid"]: e["args"]["name"] for e in trace["traceEvents"] if e["name"] == "thread_name" and e["pid"] == 4}
    assert sorted(names.values()) == ["link worker2-switch fault 1", "worker 1 fault 1"]
    spans = [e for e in trace["traceEvents"] if e["ph"] == "X" and e["pid"] == 4]
    assert sorted(e["name"] for e in spans) == ["link_down", "worker_crash"]
    crash = next(e for e in spans if e["name"] == "worker_crash")
    assert crash["ts"] == pytest.approx(1e3) and crash["dur"] == pytest.approx(2e3)


@pytest.mark.parametrize("policy", ["byteps", "herring"])
def test_byteps_and_herring_run_on_a_degraded_link_and_slow_down(policy):
    """link_degrade only changes a capacity, which every policy's flows follow: halving machine 0's NIC
    for the whole run must lengthen it (its NIC carries a full share of every step's bytes)."""
    setup = dict(cluster__workers=16, cluster__gpus_per_machine=8, cluster__cpu_machines=2, profile="resnet50",
                 train__steps=4, train__numerics=False, output__progress=False, output__trace=False)
    base = run([f"+policy={policy}"], **setup)
    slow = run([f"+policy={policy}", *events((0.0, "link_degrade", "machine0-switch", None, 0.5))], **setup)
    assert slow.summary["status"] == "completed"
    assert slow.summary["sim_time_s"] > 1.2 * base.summary["sim_time_s"]
    assert list(slow.faults["component"]) == ["link machine0-switch"]
