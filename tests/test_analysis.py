"""analysis/: loading, lines, tables and every command, on one small real sweep and on hand-written runs.

The sweep (built once per module with pssim.simulate + Result.save, a second or two) has three parts:
  policies/  sync, async x 2, 4 workers x seeds 0, 1, exponential stragglers (seeds differ in time)
  ssp/       ssp with policy.staleness 0 and 10 x 2, 4 workers (a non-policy key swept)
  servers/   sync with cluster.servers 2 x 2, 4 workers (another non-policy key)
Expected numbers are computed here from the run files themselves (summary.json, config.yaml, parquet),
never through the analysis code under test.
"""

import json
import math
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from analysis.cli import main
from analysis.groups import assign_lines, caption, varying_keys
from analysis.load import load_evals, load_runs
from analysis.tables import interpolated_crossing, read_markdown, scaling_table

REPO = Path(__file__).resolve().parents[1]
TINY = {"train.steps": 12, "eval.every": 4, "workload.train_samples": 512, "workload.eval_samples": 128,
        "output.progress": False, "output.trace": False}


def _run(directory: Path, overrides: list[str]) -> None:
    import pssim

    pssim.simulate([*overrides, *(f"{k}={v}" for k, v in TINY.items())]).save(directory)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("analysis") / "sweeps"
    for policy in ("sync", "async"):
        for workers in (2, 4):
            for seed in (0, 1):
                _run(root / "policies" / f"{policy}_w{workers}_s{seed}",
                     [f"+policy={policy}", f"cluster.workers={workers}", f"seed={seed}", "stragglers=exponential"])
    for staleness in (0, 10):
        for workers in (2, 4):
            _run(root / "ssp" / f"s{staleness}_w{workers}",
                 ["+policy=ssp", f"policy.staleness={staleness}", f"cluster.workers={workers}"])
    for workers in (2, 4):
        _run(root / "servers" / f"w{workers}", ["+policy=sync", "cluster.servers=2", f"cluster.workers={workers}"])
    return root


# --- independent readings of the run files -------------------------------------------------------

def _flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _configs(root: Path) -> dict[str, dict]:
    return {str(p.parent.resolve()): _flat(yaml.safe_load(p.read_text())) for p in root.rglob("config.yaml")}


def _summaries(root: Path) -> dict[str, dict]:
    return {str(p.parent.resolve()): json.loads(p.read_text()) for p in root.rglob("summary.json")}


def _same(a, b) -> bool:
    missing = lambda v: v is None or (isinstance(v, float) and math.isnan(v))  # noqa: E731
    if missing(a) or missing(b):
        return missing(a) and missing(b)
    if isinstance(a, (list, tuple)):
        return json.dumps(list(a), separators=(",", ":")) == b
    if isinstance(a, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-12)
    return a == b


# --- loading --------------------------------------------------------------------------------------

def test_load_runs_has_every_summary_key_and_every_config_key_dotted(sweep):
    runs = load_runs(sweep, sweep / "ssp")  # overlapping paths count a run once
    configs, summaries = _configs(sweep), _summaries(sweep)
    assert len(runs) == len(summaries) == 14
    for row in runs.to_dict("records"):
        config, summary = configs[row["run_dir"]], summaries[row["run_dir"]]
        assert {k for k in config if "." in k} <= set(row)
        for key, value in [*config.items(), *summary.items()]:
            assert _same(value, row[key]), (key, value, row[key])
        assert row["gpus"] == config["cluster.workers"] * config["cluster.gpus_per_worker"]
    # a key only ssp has: NaN elsewhere, never dropped
    assert set(runs.loc[runs["policy.name"] == "ssp", "policy.staleness"]) == {0, 10}
    assert runs.loc[runs["policy.name"] != "ssp", "policy.staleness"].isna().all()


def test_runs_without_config_yaml_load_from_summary_json(sweep, tmp_path):
    old = tmp_path / "old_run"
    old.mkdir()
    source = next((sweep / "policies").iterdir())
    shutil.copy(source / "summary.json", old / "summary.json")
    shutil.copy(source / "evals.parquet", old / "evals.parquet")
    runs = load_runs(old)
    summary = json.loads((old / "summary.json").read_text())
    assert len(runs) == 1 and runs["config_source"].iloc[0] == "summary.json"
    assert runs["cluster.workers"].iloc[0] == summary["workers"]
    assert runs["policy.name"].iloc[0] == summary["policy"]
    assert runs["network.name"].iloc[0] == summary["network"]
    assert len(load_evals(old)) == len(pd.read_parquet(old / "evals.parquet"))
    # mixed with newer runs, it stays a line of its own and says why
    mixed, lines = assign_lines(load_runs(old, sweep / "policies"), exclude=["gpus"])
    assert any("summary.json only" in label for label in lines.labels)


def test_load_on_an_empty_tree_is_empty(tmp_path):
    assert load_runs(tmp_path).empty and load_evals(tmp_path).empty


def test_varying_keys_are_the_config_keys_that_differ_but_never_seed_or_output(sweep):
    configs = _configs(sweep / "policies")
    keys = set().union(*configs.values())
    expected = {k for k in keys if not k.startswith("output.") and k != "seed"
                and len({json.dumps(c.get(k)) for c in configs.values()}) > 1}
    got = set(varying_keys(load_runs(sweep / "policies")))
    assert got == expected
    assert {"policy.name", "cluster.workers"} <= got  # sync/async also differ in policy.gradient_scale


# --- lines: every varying key apart, seeds together ------------------------------------------------

def test_a_swept_non_policy_key_gives_a_line_per_value_and_a_column(sweep):
    runs = load_runs(sweep / "ssp")
    table = scaling_table(runs, "gpus")
    assert "policy.staleness" in table
    assert sorted(set(table["policy.staleness"])) == [0, 10]
    assert len(set(table["line"])) == 2 and table.groupby("line")["gpus"].apply(sorted).tolist() == [[2, 4]] * 2
    summaries, configs = _summaries(sweep / "ssp"), _configs(sweep / "ssp")
    for _, row in table.iterrows():
        expected = [s["throughput_samples_per_s"] for d, s in summaries.items()
                    if configs[d]["policy.staleness"] == row["policy.staleness"] and s["workers"] == row["gpus"]]
        assert len(expected) == 1 and row["throughput"] == pytest.approx(expected[0])
        assert row["runs"] == 1


def test_runs_of_several_sweeps_are_never_averaged_together(sweep):
    runs, lines = assign_lines(load_runs(sweep), exclude=["gpus"])
    configs = _configs(sweep)
    # independent grouping: every config key but where it was written, the seed and the cluster size
    ignore = lambda k: k.startswith("output.") or k in ("seed", "cluster.workers")  # noqa: E731
    settings = {d: json.dumps({k: v for k, v in c.items() if not ignore(k)}, sort_keys=True)
                for d, c in configs.items()}
    assert len(lines.labels) == len(set(settings.values())) == 5  # sync, async, ssp s=0, ssp s=10, sync 2 servers
    for label, group in runs.groupby("line"):
        assert len({settings[d] for d in group["run_dir"]}) == 1, label
    table = scaling_table(runs, "gpus", lines)
    assert set(table["cluster.servers"]) == {1, 2} and set(table["policy.staleness"].dropna()) == {0, 10}
    # labelled by every key that differs (not the fewest that would separate them), policy first
    assert lines.labels == ["sync, stragglers=exponential, servers=1", "sync, stragglers=none, servers=2",
                            "async, stragglers=exponential, servers=1", "ssp, stragglers=none, servers=1, staleness=0",
                            "ssp, stragglers=none, servers=1, staleness=10"]


def test_seeds_become_one_line_with_a_min_max_spread(sweep):
    runs = load_runs(sweep / "policies")
    table = scaling_table(runs, "gpus").set_index(["policy.name", "gpus"])
    summaries = _summaries(sweep / "policies").values()
    for policy in ("sync", "async"):
        for workers in (2, 4):
            values = [s["throughput_samples_per_s"] for s in summaries
                      if s["policy"] == policy and s["workers"] == workers]
            assert len(values) == 2 and values[0] != values[1]  # stragglers: seeds differ
            row = table.loc[(policy, workers)]
            assert row["runs"] == 2
            assert row["throughput"] == pytest.approx(sum(values) / 2)
            assert (row["throughput_min"], row["throughput_max"]) == pytest.approx((min(values), max(values)))
    assert len(set(table["line"])) == 2


def test_hue_averages_the_other_keys_and_the_caption_says_so(sweep):
    runs, lines = assign_lines(load_runs(sweep / "policies", sweep / "ssp"), exclude=["gpus"], hue=["policy"])
    assert lines.labels == ["sync", "async", "ssp"]
    assert "policy.staleness" in lines.aggregated
    text = caption(runs, lines, ["gpus"]).replace("\n", " ")
    assert "Averaged into each line (--hue policy)" in text and "policy.staleness in {0, 10}" in text
    table = scaling_table(runs, "gpus", lines).set_index(["line", "gpus"])
    assert table.loc[("ssp", 2), "runs"] == 2  # staleness 0 and 10 folded together, as asked


def test_hue_before_the_paths_leaves_the_paths_alone(sweep, tmp_path):
    out = tmp_path / "hue"
    assert main(["scaling", "--hue", "policy", str(sweep / "policies"), str(sweep / "ssp"), "--out", str(out)]) == 0
    table = pd.read_csv(out / "scaling.csv")
    assert list(dict.fromkeys(table["line"])) == ["sync", "async", "ssp"]
    assert table.loc[table["line"] == "ssp", "runs"].tolist() == [2, 2]


# --- numbers behind the figures ---------------------------------------------------------------------

# (policy, workers, throughput samples/s): numbers chosen so efficiencies are easy by hand.
FAKE = [("sync", 2, 1000.0), ("sync", 4, 1800.0), ("sync", 8, 3000.0), ("async", 2, 1100.0), ("async", 4, 2000.0)]


@pytest.fixture
def fake(tmp_path):
    """Hand-written runs: summary.json and a config.yaml (nested, as pssim writes it)."""
    root = tmp_path / "fake"
    for i, (policy, workers, throughput) in enumerate(FAKE):
        d = root / f"{i}"
        d.mkdir(parents=True)
        (d / "summary.json").write_text(json.dumps({
            "policy": policy, "workers": workers, "seed": 0, "throughput_samples_per_s": throughput,
            "mean_compute_s": 0.001, "mean_communication_s": 0.0005, "time_to_target_s": None}))
        (d / "config.yaml").write_text(yaml.safe_dump({
            "seed": 0, "cluster": {"workers": workers, "gpus_per_worker": 1},
            "network": {"name": "tcp_10g"}, "policy": {"name": policy}, "output": {"dir": str(d)}}))
    return root


def test_scaling_efficiency_matches_hand_computation(fake):
    table = scaling_table(load_runs(fake), "gpus").set_index(["policy.name", "gpus"])
    # efficiency(n) = throughput(n) / (n / n_min * throughput(n_min)), n_min = 2
    assert table.loc[("sync", 2), "efficiency"] == pytest.approx(1.0)
    assert table.loc[("sync", 4), "efficiency"] == pytest.approx(1800 / (4 / 2 * 1000))  # 0.9
    assert table.loc[("sync", 8), "efficiency"] == pytest.approx(3000 / (8 / 2 * 1000))  # 0.75
    assert table.loc[("sync", 8), "ideal_throughput"] == pytest.approx(4000)
    assert table.loc[("async", 4), "efficiency"] == pytest.approx(2000 / (4 / 2 * 1100))  # 0.909...


def test_time_to_target_interpolates_between_evaluations():
    import numpy as np

    times, losses = np.array([0.0, 1.0, 3.0]), np.array([3.0, 2.0, 1.0])
    assert interpolated_crossing(times, losses, 1.5) == pytest.approx(2.0)  # halfway from 2.0 to 1.0: t=1+1
    assert interpolated_crossing(times, losses, 3.5) == pytest.approx(0.0)
    assert math.isnan(interpolated_crossing(times, losses, 0.5))


# --- the command line --------------------------------------------------------------------------------

FILES = {
    "scaling": ["throughput.svg", "throughput.png", "scaling.csv", "scaling.md"],
    "efficiency": ["efficiency.svg", "efficiency.png", "scaling.csv", "scaling.md"],
    "convergence": ["convergence.svg", "convergence.png", "convergence.csv", "convergence.md"],
    "time-to-target": ["time_to_target.svg", "time_to_target.png", "time_to_target.csv", "time_to_target.md"],
    "staleness": ["staleness.svg", "staleness.png", "staleness.csv", "staleness.md"],
    "breakdown": ["breakdown.svg", "breakdown.png", "breakdown.csv", "breakdown.md"],
    "links": ["links.svg", "links.png", "links.csv", "links.md"],
    "table": ["runs.csv", "runs.md"],
}


def _png_dpi(path: Path) -> float:
    """Dots per inch from a PNG's pHYs chunk (pixels per metre)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    i = data.index(b"pHYs")
    x_ppm = struct.unpack(">I", data[i + 4:i + 8])[0]
    return x_ppm * 0.0254


@pytest.mark.parametrize("command", list(FILES))
def test_every_command_writes_its_files(sweep, tmp_path, command, capsys):
    out = tmp_path / command
    assert main([command, str(sweep), "--out", str(out)]) == 0
    for name in FILES[command]:
        path = out / name
        assert path.exists() and path.stat().st_size > 0, name
        if name.endswith(".png"):
            assert _png_dpi(path) == pytest.approx(300, abs=1)
        if name.endswith(".svg"):
            assert "<svg" in path.read_text()[:2000]
    assert "wrote" in capsys.readouterr().out


def test_command_tables_match_the_run_files(sweep, tmp_path):
    out = tmp_path / "t"
    for command in ("breakdown", "staleness", "links", "convergence"):
        assert main([command, str(sweep / "policies"), "--out", str(out)]) == 0
    summaries = {d: s for d, s in _summaries(sweep / "policies").items()}
    pick = lambda policy, workers: [d for d, s in summaries.items()  # noqa: E731
                                    if s["policy"] == policy and s["workers"] == workers]
    dirs = pick("async", 4)
    breakdown = pd.read_csv(out / "breakdown.csv").set_index(["line", "gpus"])
    assert breakdown.loc[("async", 4), "compute_s"] == pytest.approx(
        sum(summaries[d]["mean_compute_s"] for d in dirs) / 2)
    stale = pd.concat(pd.read_parquet(Path(d) / "steps.parquet") for d in dirs)["staleness"]
    staleness = pd.read_csv(out / "staleness.csv").set_index(["line", "gpus"])
    assert staleness.loc[("async", 4), "mean"] == pytest.approx(stale.mean())
    assert staleness.loc[("async", 4), "max"] == stale.max() and staleness.loc[("sync", 4), "max"] == 0
    links = pd.read_csv(out / "links.csv").set_index(["line", "gpus", "rank"])
    per_link = pd.concat(pd.read_parquet(Path(d) / "links.parquet") for d in dirs).groupby("link")["utilisation"]
    assert links.loc[("async", 4, 1), "utilisation"] == pytest.approx(per_link.mean().max())
    conv = pd.read_csv(out / "convergence.csv").set_index(["line", "gpus"])
    finals = [pd.read_parquet(Path(d) / "evals.parquet")["loss"].iloc[-1] for d in dirs]
    assert conv.loc[("async", 4), "final_loss"] == pytest.approx(sum(finals) / 2)
    assert (conv.loc[("async", 4), "final_loss_min"], conv.loc[("async", 4), "final_loss_max"]) == \
        pytest.approx((min(finals), max(finals)))


def test_time_to_target_with_a_target_uses_each_runs_evaluations(sweep, tmp_path):
    out = tmp_path / "ttt"
    assert main(["time-to-target", str(sweep / "policies"), "--target", "2.2", "--out", str(out)]) == 0
    table = pd.read_csv(out / "time_to_target.csv").set_index(["line", "gpus"])
    expected = []
    for d, s in _summaries(sweep / "policies").items():
        if s["policy"] == "sync" and s["workers"] == 2:
            evals = pd.read_parquet(Path(d) / "evals.parquet")
            hit = evals.index[evals["loss"] <= 2.2][0]
            (t0, l0), (t1, l1) = evals.loc[hit - 1, ["sim_time_s", "loss"]], evals.loc[hit, ["sim_time_s", "loss"]]
            expected.append(t0 + (l0 - 2.2) / (l0 - l1) * (t1 - t0))
    assert table.loc[("sync", 2), "reached"] == 2
    assert table.loc[("sync", 2), "time_to_target_s"] == pytest.approx(sum(expected) / 2)


def test_table_csv_and_markdown_round_trip(sweep, tmp_path):
    out = tmp_path / "table"
    assert main(["table", str(sweep), "--out", str(out)]) == 0
    runs = load_runs(sweep).set_index("run_dir")
    csv = pd.read_csv(out / "runs.csv").set_index("run_dir")
    assert set(csv.columns) == set(runs.columns) and len(csv) == len(runs)
    for col in ["throughput_samples_per_s", "final_loss", "cluster.workers", "policy.staleness", "cluster.servers"]:
        for d in runs.index:
            assert _same(runs.loc[d, col], csv.loc[d, col]), (col, d)
    assert set(csv["policy.name"]) == {"sync", "async", "ssp"}
    md = read_markdown((out / "runs.md").read_text())
    assert {"policy.name", "policy.staleness", "cluster.servers", "seed", "gpus", "throughput_samples_per_s"} <= set(md)
    assert len(md) == len(runs)
    key = ["policy.name", "policy.staleness", "cluster.servers", "stragglers.model", "gpus", "seed"]
    key = [k for k in key if k in md]
    left = md.set_index(key).sort_index()
    right = csv.reset_index().set_index(key).sort_index()
    for col in ["throughput_samples_per_s", "final_loss", "mean_staleness"]:
        assert left[col].to_numpy() == pytest.approx(right[col].to_numpy(), rel=1e-5)


def test_one_gpu_count_gives_a_message_not_a_degenerate_plot(sweep, tmp_path, capsys):
    out = tmp_path / "one"
    assert main(["scaling", str(sweep / "policies"), "--where", "workers=2", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "at least two values of gpus" in err[0]
    assert not (out / "throughput.png").exists()
    # the other figures still work at one size
    assert main(["breakdown", str(sweep / "policies"), "--where", "workers=2", "--out", str(out)]) == 0


def test_where_filters_and_a_misspelt_key_is_one_line(sweep, tmp_path, capsys):
    out = tmp_path / "w"
    assert main(["table", str(sweep), "--where", "policy=ssp", "staleness=10", "--out", str(out)]) == 0
    csv = pd.read_csv(out / "runs.csv")
    assert set(csv["policy.name"]) == {"ssp"} and set(csv["policy.staleness"]) == {10} and len(csv) == 2
    capsys.readouterr()
    assert main(["table", str(sweep), "--where", "polcy=ssp"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "polcy" in err[0] and "policy" in err[0]


def test_cli_and_old_alias_run_as_modules(sweep, tmp_path):
    work = tmp_path / "copy"
    shutil.copytree(sweep / "ssp", work)
    new = subprocess.run([sys.executable, "-m", "analysis", "scaling", str(work)], capture_output=True, text=True,
                         cwd=REPO, timeout=120)
    assert new.returncode == 0, new.stderr
    assert (work / "analysis" / "throughput.png").exists()  # default --out: PATH/analysis/
    old = subprocess.run([sys.executable, "-m", "analysis.scaling", str(work), "--format", "png"],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert old.returncode == 0, old.stderr
    assert "python -m analysis all" in old.stderr
    for name in ("throughput.png", "efficiency.png", "convergence.png", "breakdown.png", "runs.csv"):
        assert (work / "analysis" / name).exists(), name


def test_cli_on_an_empty_directory_exits_2_with_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "analysis", "scaling", str(tmp_path)], capture_output=True,
                          text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "no runs" in proc.stderr and "Traceback" not in proc.stderr
    assert not list(tmp_path.iterdir())  # nothing written
