"""Conformance checks a policy author can call: `check_policy("mypolicy")` runs the policy on a small
cluster and asserts what every policy must do (it trains, it accounts, its records are consistent).

They hold for clusters of any shape: host names come from the run's own layout.
"""

from __future__ import annotations

import math
from typing import Any

from pssim.api import Result, simulate
from pssim.cluster.layout import Layout
from pssim.policies import POLICIES, Policy
from pssim.simulation import Simulation

# lr 0.025: asynchronous updates apply each worker's gradient whole (policy.gradient_scale=sum), so with
# 4 workers and momentum 0.9 the default 0.1 is too large for ASP to learn in 40 steps.
SMALL = {"cluster.workers": 4, "cluster.servers": 2, "train.steps": 40, "eval.every": 10, "train.lr": 0.025,
         "stragglers": "exponential", "stragglers.mean_s": 2e-4, "workload.train_samples": 2048,
         "workload.eval_samples": 256, "output.progress": False, "output.trace": True}


def run_small(policy: str, **overrides: Any) -> Result:
    """`policy` on SMALL's cluster (4 workers, 2 servers, exponential stragglers, 40 steps) with overrides;
    a preset chosen in `overrides` (e.g. stragglers="none") drops SMALL's keys of that group, and
    SMALL's keys the policy never reads (cluster.servers under allreduce) are left out."""
    ignored = POLICIES[policy].ignores
    base = {k: v for k, v in SMALL.items()
            if (k.split(".")[0] not in overrides or k in overrides) and k not in ignored}
    return simulate(**{**base, "policy": policy, **overrides})


def check_policy(policy: str, **overrides: Any) -> Result:
    """Run `policy` on SMALL plus `overrides` and assert the conformance rules; returns the Result."""
    result = run_small(policy, **overrides)
    check_result(result)
    return result


def check_result(result: Result) -> None:
    """The rules every run obeys, whatever its policy and cluster shape."""
    s, steps, evals, links, cfg = result.summary, result.steps, result.evals, result.links, result.config
    policy = POLICIES[cfg.policy.name]
    uses_servers = policy.uses_servers
    if policy.placement.__func__ is Policy.placement.__func__:
        layout = Layout.build(cfg.cluster.workers, cfg.cluster.gpus_per_machine, cfg.cluster.cpu_machines,
                              cfg.cluster.servers if uses_servers else 0, gpus_per_worker=cfg.cluster.gpus_per_worker)
    else:  # the policy places its workers on GPUs itself (hetpipe's allocations): the run's own layout
        layout = Simulation(cfg, progress=False).ctx.cluster.layout

    # It runs to the requested number of global updates, and every worker takes part.
    assert s["global_steps"] == cfg.train.steps
    assert set(steps["worker"]) == set(range(cfg.cluster.workers))
    # Records are causally ordered and within the run; a step the run stopped while it was still
    # communicating (its gradient already at the servers) has no comm_end.
    done = steps[steps["comm_end"].notna()]
    assert (steps["compute_start"] <= steps["compute_end"]).all()
    assert (done["compute_end"] <= done["comm_end"]).all()
    assert (steps["compute_start"] <= steps["comm_start"]).all()  # may overlap backward, never precede the step
    assert (done["comm_start"] <= done["comm_end"]).all()
    assert (done["comm_end"] <= s["sim_time_s"] + 1e-12).all()
    assert (steps["staleness"] >= 0).all() and (steps["clock_lead"] >= 0).all()
    assert (steps["version"] <= cfg.train.steps).all()
    # Each worker's steps are consecutive, never overlap, and only its last may be unfinished; a policy
    # that pipelines steps (m = steps_in_flight > 1) has at most m in progress at once: step i + m starts
    # after step i ended, and only its last m may be unfinished.
    m = POLICIES[cfg.policy.name].steps_in_flight(cfg)
    for _, g in steps.groupby("worker"):
        assert list(g["step"]) == list(range(len(g)))
        assert (g["compute_start"].iloc[m:].to_numpy() >= g["comm_end"].iloc[:-m].to_numpy()).all()
        assert g["comm_end"].iloc[:-m].notna().all()
        assert g["compute_start"].is_monotonic_increasing
    # Evaluations at step 0 and every eval.every steps, in simulated-time order; it learned.
    if cfg.train.numerics:
        assert list(evals["step"]) == list(range(0, cfg.train.steps + 1, cfg.eval.every))
        assert evals["sim_time_s"].is_monotonic_increasing
        assert evals["loss"].iloc[-1] < evals["loss"].iloc[0]
    # Bytes: every byte a worker sent left through its hosts' first links (its stages' GPUs: a pipelined
    # worker's stages push their own layers); no link beyond line rate.
    assert s["bytes_sent"] > 0 and s["events"] > 0
    assert (links["utilisation"] <= 1 + 1e-9).all() and (links["busy_fraction"] <= 1 + 1e-9).all()
    out_of = links.groupby("src")["bytes"].sum()
    for w, g in steps.groupby("worker"):
        assert sum(out_of.get(h, 0) for h in layout.stage_hosts(w)) >= g["bytes_sent"].sum()
    # Throughput is samples over simulated time.
    assert math.isclose(s["throughput_samples_per_s"], s["samples"] / s["sim_time_s"], rel_tol=1e-12)
    if result.trace is not None:
        _check_trace(result.trace, layout, links, uses_servers)


def _check_trace(trace: dict, layout: Layout, links, uses_servers: bool) -> None:
    """A compute track per worker; core tracks per server (dedicated hosts, or the cluster's own
    machines); flow lanes only on links that carried bytes (docs/OUTPUTS.md, trace.json)."""
    names = {(e["pid"], e["args"]["name"]) for e in trace["traceEvents"] if e["name"] == "thread_name"}
    names = {(p, n.rstrip("0123456789").removesuffix(" ") if " compute " in n else n) for p, n in names}  # lanes
    assert {n.removesuffix(" compute") for p, n in names if p == 1 and n.endswith(" compute")} == set(layout.hosts)
    servers = {n.rsplit(" core ", 1)[0] for p, n in names if p == 2}
    if uses_servers:
        assert servers == set(layout.servers)
    else:
        assert servers <= set(links["src"])
    carried = {n.rsplit(" flow ", 1)[0] for p, n in names if p == 3}
    assert carried and carried <= set(links.loc[links["bytes"] > 0, "link"])
