"""analysis/: loading run directories and the scaling report, on hand-written fake runs (no simulation)."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from analysis.load import load_evals, load_runs
from analysis.scaling import scaling_table

REPO = Path(__file__).resolve().parents[1]
FIGURES = ["throughput", "scaling_efficiency", "convergence", "time_breakdown"]

# (policy, workers, throughput samples/s, final loss): numbers chosen so efficiencies are easy by hand.
RUNS = [("sync", 2, 1000.0, 0.9), ("sync", 4, 1800.0, 0.8), ("async", 2, 1100.0, 1.0), ("async", 4, 2000.0, 1.2)]


def write_run(directory: Path, policy: str, workers: int, throughput: float, loss: float) -> None:
    """A run directory as pssim leaves it, reduced to the two files the analysis reads."""
    directory.mkdir(parents=True)
    summary = {
        "policy": policy, "workers": workers, "servers": 1, "network": "tcp_10g", "workload": "mlp",
        "device": "v100", "seed": 0, "global_steps": 10, "samples": 320, "sim_time_s": 320 / throughput,
        "throughput_samples_per_s": throughput, "mean_iteration_s": 0.002, "mean_compute_s": 0.0015,
        "mean_communication_s": 0.0005, "mean_staleness": 0.0, "max_staleness": 0, "final_loss": loss,
        "final_accuracy": 0.5, "target_loss": None, "time_to_target_s": None, "bytes_sent": 1e6,
        "wall_s": 0.1, "events": 100,
    }
    (directory / "summary.json").write_text(json.dumps(summary))
    end = summary["sim_time_s"]
    pd.DataFrame({"step": [0, 5, 10], "sim_time_s": [0.0, end / 2, end], "loss": [3.0, 2.0, loss],
                  "accuracy": [0.1, 0.3, 0.5]}).to_parquet(directory / "evals.parquet")


@pytest.fixture
def sweep(tmp_path):
    """Four fake runs laid out like a Hydra multirun: sweep/N_overrides/."""
    root = tmp_path / "sweep"
    for i, (policy, workers, throughput, loss) in enumerate(RUNS):
        write_run(root / f"{i}_+policy={policy},cluster.workers={workers}", policy, workers, throughput, loss)
    return root


def scaling(*args):
    return subprocess.run([sys.executable, "-m", "analysis.scaling", *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, timeout=60)


def test_load_runs_one_row_per_run_without_repeats(sweep):
    runs = load_runs(sweep, sweep / "0_+policy=sync,cluster.workers=2")  # overlapping paths
    assert len(runs) == 4
    got = set(zip(runs["policy"], runs["workers"], runs["throughput_samples_per_s"], runs["final_loss"]))
    assert got == set(RUNS)
    assert all((Path(d) / "summary.json").exists() for d in runs["run_dir"])
    assert runs["time_to_target_s"].isna().all() and runs["time_to_target_s"].dtype == float


def test_load_evals_attaches_the_run(sweep):
    evals = load_evals(sweep)
    assert len(evals) == 4 * 3
    assert {"step", "sim_time_s", "loss", "accuracy", "policy", "workers", "network", "run_dir"} <= set(evals)
    last = evals[evals["step"] == 10].set_index(["policy", "workers"])["loss"]
    assert last.to_dict() == {(p, w): loss for p, w, _, loss in RUNS}
    assert (evals["network"] == "tcp_10g").all()


def test_load_on_an_empty_tree_is_empty(tmp_path):
    assert load_runs(tmp_path).empty and load_evals(tmp_path).empty


def test_scaling_efficiency_matches_hand_computation(sweep):
    table = scaling_table(load_runs(sweep)).set_index(["policy", "workers"])["efficiency"]
    # efficiency(n) = throughput(n) / (n / n_min * throughput(n_min)), n_min = 2
    assert table[("sync", 2)] == pytest.approx(1.0)
    assert table[("sync", 4)] == pytest.approx(1800 / (4 / 2 * 1000))  # 0.9
    assert table[("async", 2)] == pytest.approx(1.0)
    assert table[("async", 4)] == pytest.approx(2000 / (4 / 2 * 1100))  # 0.909...


def test_cli_writes_the_figures_and_prints_the_table(sweep):
    proc = scaling(sweep)  # no --out: the figures go to the first path
    assert proc.returncode == 0, proc.stderr
    for name in FIGURES:
        assert (sweep / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    header = proc.stdout.splitlines()[0].split()
    assert header == ["policy", "workers", "throughput_samples_per_s", "mean_iteration_s", "final_loss",
                      "time_to_target_s"]
    assert "1,800" in proc.stdout


def test_cli_on_an_empty_directory_exits_2_with_one_line(tmp_path):
    proc = scaling(tmp_path)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "no runs" in proc.stderr and "Traceback" not in proc.stderr
    assert not list(tmp_path.iterdir())  # nothing written
