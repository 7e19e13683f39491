"""End to end: `python -m pssim` in a subprocess, its output files, sweeps and its error messages."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from pssim.metrics.tables import EVAL_COLUMNS, LINK_COLUMNS, STEP_COLUMNS

SUMMARY_KEYS = {"policy", "workers", "servers", "network", "sim_time_s", "throughput_samples_per_s",
                "mean_iteration_s", "final_loss", "final_accuracy", "time_to_target_s", "bytes_sent",
                "wall_s", "events"}


def pssim(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "pssim", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_default_run_writes_every_output(tmp_path):
    out = tmp_path / "run"
    proc = pssim(f"hydra.run.dir={out}", "train.steps=40", "train.target_loss=2.0")
    assert proc.returncode == 0, proc.stderr
    assert "samples/s" in proc.stdout and "time to target" in proc.stdout  # the printed summary table

    summary = json.loads((out / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary)
    assert summary["policy"] == "sync" and summary["workers"] == 4 and summary["network"] == "tcp_10g"
    assert summary["time_to_target_s"] is not None and summary["time_to_target_s"] <= summary["sim_time_s"]

    steps = pd.read_parquet(out / "steps.parquet")
    assert list(steps.columns) == STEP_COLUMNS and len(steps) >= 4 * 39
    evals = pd.read_parquet(out / "evals.parquet")
    assert list(evals.columns) == EVAL_COLUMNS and evals["step"].iloc[-1] == 40
    links = pd.read_parquet(out / "links.parquet")
    assert list(links.columns) == LINK_COLUMNS and len(links) == 2 * 5  # 5 hosts, duplex NIC links
    assert links["bytes"].sum() > 0

    trace = json.loads((out / "trace.json").read_text())
    spans = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert {e["pid"] for e in spans} == {1, 2, 3}  # workers, servers, links
    assert all(e["dur"] >= 0 for e in spans)
    assert (out / ".hydra" / "config.yaml").exists()


def test_policy_choice_and_a_multirun_sweep(tmp_path):
    proc = pssim("-m", "+policy=sync,async,ssp", "cluster.workers=2,3", "train.steps=10",
                 f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    runs = sorted(p.parent for p in tmp_path.glob("*/summary.json"))
    assert len(runs) == 6
    seen = {(json.loads((r / "summary.json").read_text())["policy"],
             json.loads((r / "summary.json").read_text())["workers"]) for r in runs}
    assert seen == {(p, w) for p in ("sync", "async", "ssp") for w in (2, 3)}


def test_policy_keys_and_presets_from_the_command_line(tmp_path):
    proc = pssim("+policy=ssp", "policy.staleness=2", "stragglers=exponential", "network=rdma_100g",
                 "workload=softmax", "train.steps=12", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["policy"], summary["network"], summary["workload"]) == ("ssp", "rdma_100g", "softmax")
    config = (tmp_path / ".hydra" / "config.yaml").read_text()
    assert "staleness: 2" in config and "model: exponential" in config


@pytest.mark.parametrize("override,key", [
    ("cluster.workers=0", "cluster.workers"),
    ("network.bandwidth_gbps=-10", "network.bandwidth_gbps"),
    ("+policy=ssp policy.staleness=-1", "policy.staleness"),
    ("policy.name=bogus", "policy.name"),
    ("policy.name=async", "policy.name"),
    ("network.name=tcp_25g", "network.name"),
    ("stragglers.model=gaussian", "stragglers.model"),
])
def test_bad_values_stop_with_one_line_naming_the_key(tmp_path, override, key):
    proc = pssim(*override.split(), f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pssim: error: ") and key in lines[0]


@pytest.mark.parametrize("args,needle", [
    (["cluster.wokers=3"], "wokers"),
    (["+policy=herrring"], "policy/herrring"),
    (["cluster.workers=many"], "cluster.workers"),
    (["policy.staleness=2"], "staleness"),  # sync has no such key
    (["+policy=allreduce", "policy.credit=2"], "credit"),
])
def test_unknown_keys_and_options_are_refused_without_a_traceback(tmp_path, args, needle):
    proc = pssim(*args, f"hydra.run.dir={tmp_path}")
    assert proc.returncode != 0
    assert needle in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("policy", ["byteps", "herring", "allreduce"])
def test_a_64_gpu_comparison_runs_and_reports(tmp_path, policy):
    proc = pssim(f"+policy={policy}", "cluster.workers=64", "cluster.gpus_per_machine=8", "cluster.cpu_machines=4",
                 "profile=resnet50", "network=tcp_25g", "train.steps=3", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["policy"] == policy and summary["workers"] == 64 and summary["network"] == "tcp_25g"
    assert summary["throughput_samples_per_s"] > 0
    links = pd.read_parquet(tmp_path / "links.parquet")
    assert set(links["src"]) >= {"machine0", "machine7", "machine7.gpu7"}


def test_gpus_per_machine_must_divide_the_workers(tmp_path):
    proc = pssim("cluster.workers=12", "cluster.gpus_per_machine=8", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2 and "cluster.gpus_per_machine" in proc.stderr and "Traceback" not in proc.stderr
