"""A tool that never loses a result: absurd values get one clear line, runs that cannot go on end with a
status, run directories are written atomically, sweeps survive a bad job."""

import json
import math
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pssim
from pssim import ConfigError, simulate, to_config
from pssim.api import OUTPUT_FILES
from conftest import fast

# key -> (a preset that has it, or None) for every number a user can type
NUMBERS = {
    "cluster.workers": None, "cluster.servers": None, "cluster.gpus_per_machine": None,
    "cluster.aggregation_ns_per_byte": None, "cluster.server_cores": None, "cluster.nics_per_machine": None,
    "network.bandwidth_gbps": None, "network.efficiency": None, "network.latency_us": None,
    "network.hop_latency_us": None, "network.flow_cap_gbps": None, "network.cpu_ns_per_byte": None,
    "intra.latency_us": None, "train.steps": None, "train.batch_size": None, "train.lr": None,
    "train.momentum": None, "train.weight_decay": None, "train.target_loss": None, "eval.every": None,
    "workload.features": None, "workload.classes": None, "workload.train_samples": None,
    "workload.separation": None, "seed": None,
    "stragglers.mean_s": "exponential", "stragglers.mu": "lognormal", "stragglers.sigma": "lognormal",
    "stragglers.scale_s": "pareto", "stragglers.alpha": "pareto", "stragglers.factor": "slow_worker",
    "topology.oversubscription": "two_tier", "topology.hosts_per_rack": "two_tier",
}
ABSURD = st.sampled_from([math.inf, -math.inf, math.nan, -1e300, 1e300, -1])
NEGATIVE_IS_FINE = {"stragglers.mu"}  # a log-delay: exp(-1) s is an ordinary straggler


def preset_for(key):
    group = NUMBERS[key]
    return {key.split(".")[0]: group} if group else {}


@settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(sorted(NUMBERS)), value=ABSURD)
def test_every_absurd_number_is_refused_with_one_line_naming_its_key(key, value):
    """inf, NaN, +-1e300 and (where a negative value means nothing) -1: refused with a ConfigError of one
    line naming the key, never a traceback, a hang or a silent acceptance."""
    if value == -1 and key in NEGATIVE_IS_FINE:
        return
    with pytest.raises(ConfigError) as err:
        to_config(**preset_for(key), **{key: value})
    message = str(err.value)
    assert key in message and "\n" not in message


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(workers=st.integers(1, 12), servers=st.integers(1, 4), batch=st.sampled_from([1, 7, 64]),
       latency=st.sampled_from([0.0, 1e-3, 1e5]), lr=st.sampled_from([1e-6, 0.1, 1e3]),
       policy=st.sampled_from(pssim.registered_policies()))
def test_valid_extreme_configurations_finish_with_a_status(workers, servers, batch, latency, lr, policy):
    """Extreme but valid values finish (possibly diverged), with a summary that is valid JSON."""
    r = simulate(**fast(policy=policy, cluster__workers=workers, cluster__servers=servers,
                        train__batch_size=batch, train__steps=6, network__latency_us=latency, train__lr=lr,
                        workload__train_samples=max(2048, workers * batch)))
    assert r.summary["status"] in ("completed", "diverged")
    assert r.summary["global_steps"] == 6 or r.summary["status"] == "diverged"
    json.dumps(r.summary, allow_nan=False)


def test_a_diverging_run_stops_at_the_step_its_parameters_stop_being_finite():
    r = simulate(**fast(train__lr=1e5, train__steps=50, train__momentum=0.0))
    assert r.summary["status"] == "diverged" and r.summary["final_loss"] is None
    step = r.summary["diverged_at_step"]
    assert r.summary["global_steps"] == step < 50
    # The same run recording its parameters shows exactly that step as the first non-finite one.
    history = simulate(record_params=True, **fast(train__lr=1e5, train__steps=step, train__momentum=0.0))
    finite = [bool(p.isfinite().all()) for p in history.param_history]
    assert finite.index(False) == step


def test_a_run_directory_is_complete_and_holds_no_stale_file(tmp_path):
    simulate(**fast(train__steps=3, output__trace=True, output__dir=str(tmp_path)))
    assert {p.name for p in tmp_path.iterdir()} == set(OUTPUT_FILES)
    simulate(**fast(train__steps=3, output__trace=False, output__dir=str(tmp_path)))
    assert not (tmp_path / "trace.json").exists()  # the earlier run's trace is gone
    assert not list(tmp_path.glob(".*.tmp"))
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "completed"


def test_an_unwritable_output_directory_fails_before_the_run(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="output.dir"):
        simulate(**fast(train__steps=10 ** 6, output__dir=str(blocker / "run")))  # would run for minutes


def pssim_cli(*args):
    return subprocess.run([sys.executable, "-m", "pssim", *args], capture_output=True, text=True, timeout=300)


def test_a_sweep_records_a_failed_job_goes_on_and_skips_completed_runs_on_rerun(tmp_path):
    args = ["-m", "cluster.workers=2,0,4", "train.steps=4", "output.trace=false", f"hydra.sweep.dir={tmp_path}"]
    first = pssim_cli(*args)
    assert first.returncode == 0, first.stderr
    status = {p.parent.name.split("_")[0]: json.loads(p.read_text()) for p in tmp_path.glob("*/summary.json")}
    assert status["0"]["status"] == status["2"]["status"] == "completed"
    assert status["1"] == {"status": "failed", "error": "cluster.workers=0 is invalid: must be >= 1"}
    assert "2 completed, 1 failed" in first.stdout
    second = pssim_cli(*args)
    assert second.stdout.count("skipped") == 2 and "2 completed, 1 failed" in second.stdout
    forced = pssim_cli(*args, "output.force=true")
    assert "skipped" not in forced.stdout


@pytest.mark.parametrize("args,key", [
    (["network.multipath=2"], "network.multipath"),
    (["~cluster"], "~cluster"),
    (["+foo=1"], "foo"),
    (["+cluster.foo=1"], "cluster.foo"),
    (["seed=-1"], "seed"),
    (["network.latency_us=inf"], "network.latency_us"),
])
def test_the_command_line_refuses_them_in_one_line(tmp_path, args, key):
    proc = pssim_cli(*args, f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and key in lines[0]


def test_a_stalled_or_diverged_run_exits_non_zero_with_its_diagnosis(tmp_path):
    proc = pssim_cli("train.lr=100000", "train.steps=50", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 4 and "DIVERGED at global step" in proc.stdout
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "diverged"


def test_two_runs_started_together_get_two_directories(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-m", "pssim", "train.steps=2", "output.trace=false"], cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(2)]
    assert all(p.wait(timeout=300) == 0 for p in procs)
    assert len(list(tmp_path.glob("runs/*/*/summary.json"))) == 2


def test_ctrl_c_saves_the_run_so_far_with_status_interrupted(tmp_path):
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-m", "pssim", "train.steps=10000000", "output.trace=false",
                             f"hydra.run.dir={tmp_path}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (tmp_path / ".hydra").exists() and time.time() < deadline:  # the run has started
        time.sleep(0.2)
    time.sleep(2.0)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err and "INTERRUPTED" in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "interrupted" and 0 < summary["global_steps"] < 10_000_000
    assert (tmp_path / "steps.parquet").exists()


def test_a_key_the_policy_never_reads_draws_a_warning(tmp_path):
    with pytest.warns(pssim.api.IgnoredKeyWarning, match="cluster.servers=4 is ignored by policy allreduce"):
        simulate(**fast(policy="allreduce", cluster__servers=4, train__steps=2))
    proc = pssim_cli("policy=herring", "cluster.cpu_machines=2", "train.steps=2", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0 and "cluster.cpu_machines=2 is ignored by policy herring" in proc.stderr
