"""The command line as a user meets it: pssim's own help and listing, `policy=NAME`, one-line errors
for misspelt keys with the closest real key, and a summary table with units and the setup."""

import json
import shutil
import subprocess
import sys

import pytest

from pssim import preset_names, registered_policies
from pssim.metrics.summary import format_summary, seconds, size


def pssim(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "pssim", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


@pytest.mark.parametrize("args,closest", [
    (["cluster.worker=8"], "cluster.workers"),
    (["+cluster.worker=8"], "cluster.workers"),
    (["train.stpes=3"], "train.steps"),
    (["+policy=ssp", "policy.stalenes=2"], "policy.staleness"),
])
def test_a_misspelt_key_stops_with_one_line_naming_the_closest_key(tmp_path, args, closest):
    proc = pssim(*args, f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pssim: error: ") and f"did you mean {closest}?" in lines[0]
    assert not (tmp_path / "summary.json").exists()


def test_a_key_of_another_policy_says_which_policy_has_it(tmp_path):
    proc = pssim("policy.credit=2", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2 and "policy byteps" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_policy_equals_name_is_the_same_run_as_plus_policy(tmp_path):
    plain = pssim("policy=ssp", "policy.staleness=1", "train.steps=8", f"hydra.run.dir={tmp_path / 'a'}")
    plus = pssim("+policy=ssp", "policy.staleness=1", "train.steps=8", f"hydra.run.dir={tmp_path / 'b'}")
    assert plain.returncode == 0 and plus.returncode == 0, plain.stderr + plus.stderr
    a, b = (json.loads((tmp_path / d / "summary.json").read_text()) for d in "ab")
    assert a["policy"] == "ssp" and {k: v for k, v in a.items() if k != "wall_s"} == {
        k: v for k, v in b.items() if k != "wall_s"}


def test_list_names_every_policy_and_preset_with_a_line_each():
    proc = pssim("list")
    assert proc.returncode == 0
    names = {line.split()[0] for line in proc.stdout.splitlines() if line.startswith("  ")}
    expected = set(registered_policies())
    for group in ("network", "intra", "topology", "stragglers", "workload", "profile"):
        expected |= set(preset_names(group))
    assert expected <= names
    described = [line for line in proc.stdout.splitlines() if line.startswith("  ")]
    assert all(len(line.split(None, 1)) == 2 for line in described)  # a description on every line


def test_help_shows_pssims_groups_and_keys_with_their_descriptions():
    proc = pssim("--help")
    assert proc.returncode == 0 and "powered by Hydra" not in proc.stdout
    assert "cluster.workers = 4" in proc.stdout and "Data-parallel workers" in proc.stdout
    assert "policy.credit = None" in proc.stdout and "under +policy=byteps" in proc.stdout
    for group in ("policy", "network", "stragglers"):
        assert f"  {group}" in proc.stdout


def test_the_console_script_is_installed():
    exe = shutil.which("pssim")
    assert exe is not None, "pip install -e . installs the `pssim` command"
    proc = subprocess.run([exe, "list", "policy"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "byteps" in proc.stdout


def test_the_summary_table_has_units_and_the_setup():
    assert seconds(0.000218) == "218 us" and seconds(0.04299) == "42.99 ms" and seconds(1.2) == "1.2 s"
    assert size(1_723_490) == "1.72 MB" and size(17.6e9) == "17.6 GB" and size(512) == "512 B"
    from pssim import simulate
    s = simulate(**{"policy": "byteps", "cluster.workers": 16, "cluster.gpus_per_machine": 8, "profile": "resnet50",
                    "train.steps": 2, "train.numerics": False, "output.progress": False, "output.trace": False}).summary
    table = format_summary(s)
    assert "byteps: 16 workers, 16 GPUs (v100, fp32, 8 per machine)" in table
    assert "PS shard" not in table and s["servers"] is None  # BytePS has summation services, not PS shards
    assert "timing profile resnet50" in table and "samples/s" in table and " GB" in table
