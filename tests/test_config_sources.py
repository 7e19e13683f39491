"""One source of configuration: the presets in pssim/conf/ are what both entry points run.

`python -m pssim <overrides>` and `pssim.simulate([<overrides>])` must give the same run for every
preset of every group; keyword forms must mean the same as the list form; a bare name key must not
relabel a preset; the loaded values are the preset files' own; and the layers import only downwards.

The command-line runs are slow to start (torch, Hydra), so every one of them is launched at once, in
parallel, by one module fixture (one multirun per group), and the tests wait for the one they read.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

import pssim
from pssim import ConfigError, simulate, to_config

CONF = Path(pssim.__file__).parent / "conf"
GROUPS = ("network", "intra", "topology", "stragglers", "workload", "profile")
QUIET = ["output.trace=false", "output.progress=false"]
SMALL = ["train.steps=5", "cluster.workers=4", *QUIET]
# Settings under which each group's presets change the run (checked: every preset gives another time).
SETTINGS = {
    "network": [],
    # Herring reduces inside each machine of 2 GPUs over the intra fabric before the NICs carry anything
    # (a PS policy's GPU -> server flows are paced by the slower NIC, so intra would not show).
    "intra": ["+policy=herring", "cluster.gpus_per_machine=2"],
    # 16 NICs in 4 racks of 4; every worker pushes to all 8 servers, so rack uplinks carry 4 NICs' worth.
    "topology": ["cluster.workers=8", "cluster.servers=8", "profile=resnet50"],
    "stragglers": [],
    "workload": [],
    "profile": [],
    "policy": ["cluster.gpus_per_machine=2", "cluster.cpu_machines=1"],
}
CUSTOM_NET = {"network.name": "mynet", "network.transport": "rdma", "network.bandwidth_gbps": 40,
              "network.efficiency": 0.5, "network.latency_us": 7, "network.hop_latency_us": 1,
              "network.flow_cap_gbps": 0, "network.cpu_ns_per_byte": 0}


def preset_files(group: str) -> list[str]:
    """The presets of a group, read off pssim/conf/<group>/*.yaml (not from the library's own listing)."""
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def sweep_args(group: str) -> list[str]:
    names = pssim.registered_policies() if group == "policy" else preset_files(group)
    pick = f"+policy={','.join(names)}" if group == "policy" else f"{group}={','.join(names)}"
    return ["-m", pick, *SMALL, *SETTINGS[group]]


class Cli:
    """A `python -m pssim` run started in the background; `wait()` returns (returncode, stdout, stderr)."""

    def __init__(self, directory: Path, args: list[str], multirun: bool):
        directory.mkdir(parents=True)
        self.dir = directory
        where = f"hydra.sweep.dir={directory / 'runs'}" if multirun else f"hydra.run.dir={directory / 'run'}"
        self._out = open(directory / "stdout", "w")
        self._err = open(directory / "stderr", "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "pssim", *args, where],
                                     stdout=self._out, stderr=self._err, text=True)

    def wait(self) -> tuple[int, str, str]:
        rc = self.proc.wait(timeout=600)
        self._out.close()
        self._err.close()
        return rc, (self.dir / "stdout").read_text(), (self.dir / "stderr").read_text()


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    runs = {group: Cli(root / group, sweep_args(group), multirun=True) for group in ("policy", *GROUPS)}
    runs["experiment"] = Cli(root / "experiment", ["+experiment=osdi14_fig13", *SMALL], multirun=False)
    runs["relabel"] = Cli(root / "relabel", ["network.name=efa_100g", *QUIET], multirun=False)
    runs["custom"] = Cli(root / "custom", [f"{k}={v}" for k, v in CUSTOM_NET.items()] + ["train.steps=5", *QUIET],
                         multirun=False)
    yield runs
    for run in runs.values():  # a test that failed early leaves no process behind
        if run.proc.poll() is None:
            run.proc.kill()
        run.wait()


def same(a, b) -> bool:
    """Equal, with NaN equal to NaN (a summary's means may be NaN)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def assert_same_summary(api: dict, cli: dict, what: str) -> None:
    api = {k: v for k, v in api.items() if k != "wall_s"}
    cli = {k: v for k, v in cli.items() if k != "wall_s"}
    assert api.keys() == cli.keys(), what
    diff = {k: (api[k], cli[k]) for k in api if not same(api[k], cli[k])}
    assert not diff, f"{what}: simulate() vs python -m pssim differ in {diff}"


def as_plain(config) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(config))


# -- A.1: every preset of every group, both entry points ---------------------------------------------
@pytest.mark.parametrize("group", ["policy", *GROUPS])
def test_every_preset_gives_the_same_run_from_the_command_line_and_from_python(cli, group):
    rc, out, err = cli[group].wait()
    assert rc == 0, err
    runs = sorted((cli[group].dir / "runs").glob("*/summary.json"))
    expected = pssim.registered_policies() if group == "policy" else preset_files(group)
    assert len(runs) == len(expected)
    picked, times = [], {}
    for path in runs:
        overrides = yaml.safe_load((path.parent / ".hydra" / "overrides.yaml").read_text())
        key = "+policy" if group == "policy" else group
        (pick,) = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] == key]
        picked.append(pick)
        result = simulate(overrides)
        summary = json.loads(path.read_text())
        part = getattr(result.config, group)
        name_key = "model" if group == "stragglers" else "name"
        own = {} if group == "policy" else yaml.safe_load((CONF / group / f"{pick}.yaml").read_text())
        assert getattr(part, name_key) == own.get(name_key, pick)  # the preset file's own name, if it has one
        if group == "policy":
            assert summary["policy"] == pick
        assert_same_summary(result.summary, summary, f"{overrides}")
        # The CLI's composed config (saved by Hydra before the run) is the one simulate() ran.
        composed = OmegaConf.to_container(OmegaConf.load(path.parent / ".hydra" / "config.yaml"))
        assert composed == as_plain(result.config)
        times[pick] = summary["sim_time_s"]
    assert sorted(picked) == sorted(expected)
    # Each preset really changed the run (none was silently ignored or replaced by the default). ssp is
    # left out: on equal workers over 5 steps its gate never binds, so it may share async's schedule; and
    # parallax: on a model without sparse layers it is Horovod's all-reduce, by design.
    distinct = {k: v for k, v in times.items() if k not in ("ssp", "bounded_delay", "parallax")}
    assert len(set(distinct.values())) == len(distinct), f"{group}: presets with the same simulated time {times}"


def test_an_experiment_gives_the_same_run_from_the_command_line_and_from_python(cli):
    """+experiment=NAME sets keys of several groups (conf/experiment/): both entry points run its config."""
    rc, out, err = cli["experiment"].wait()
    assert rc == 0, err
    run = cli["experiment"].dir / "run"
    result = simulate(experiment="osdi14_fig13", **{"train.steps": 5, "cluster.workers": 4,
                                                     "output.trace": False, "output.progress": False})
    assert result.config.policy.name == "bounded_delay" and result.config.workload.dataset == "sparse_logistic"
    assert OmegaConf.to_container(OmegaConf.load(run / ".hydra" / "config.yaml")) == as_plain(result.config)
    assert_same_summary(result.summary, json.loads((run / "summary.json").read_text()), "experiment")


def test_the_apis_defaults_are_the_command_lines(cli):
    """The network sweep's tcp_10g run is the command line's defaults plus SMALL (cluster.workers=4 is
    the default too): simulate() with no arguments must compose the same config but for those keys."""
    rc, out, err = cli["network"].wait()
    assert rc == 0, err
    (run,) = [p for p in (cli["network"].dir / "runs").iterdir() if "network=tcp_10g" in p.name]
    composed = OmegaConf.to_container(OmegaConf.load(run / ".hydra" / "config.yaml"))
    defaults = as_plain(to_config())  # no arguments at all
    assert defaults["train"]["steps"] == 200 and defaults["output"]["trace"] and defaults["output"]["progress"]
    assert defaults["cluster"]["workers"] == 4 and defaults["network"]["name"] == "tcp_10g"
    defaults["train"]["steps"] = 5
    defaults["output"]["trace"] = defaults["output"]["progress"] = False
    assert composed == defaults
    small = simulate(**{"train.steps": 5, "output.trace": False, "output.progress": False})
    assert_same_summary(small.summary, json.loads((run / "summary.json").read_text()), "defaults")


# -- A.2: keyword forms agree with the list form -----------------------------------------------------
def test_keyword_forms_agree_with_the_list_form():
    keywords = simulate(policy="byteps", network="tcp_25g", stragglers="exponential", profile="resnet50",
                        **{"cluster.workers": 8, "cluster.gpus_per_machine": 2, "cluster.cpu_machines": 2,
                           "policy.credit": 2, "stragglers.mean_s": 5e-4, "train.steps": 3,
                           "output.trace": False, "output.progress": False})
    listed = simulate(["+policy=byteps", "network=tcp_25g", "stragglers=exponential", "profile=resnet50",
                       "cluster.workers=8", "cluster.gpus_per_machine=2", "cluster.cpu_machines=2",
                       "policy.credit=2", "stragglers.mean_s=5e-4", "train.steps=3", *QUIET])
    mixed = simulate(["+policy=byteps", "cluster.workers=8"], network="tcp_25g", stragglers="exponential",
                     profile="resnet50", **{"cluster.gpus_per_machine": 2, "cluster.cpu_machines": 2,
                                            "policy.credit": 2, "stragglers.mean_s": 5e-4, "train.steps": 3,
                                            "output.trace": False, "output.progress": False})
    assert as_plain(keywords.config) == as_plain(listed.config) == as_plain(mixed.config)
    c = keywords.config
    assert (c.policy.name, c.policy.credit, c.network.name, c.network.flow_cap_gbps, c.profile.name,
            c.stragglers.model, c.stragglers.mean_s) == ("byteps", 2, "tcp_25g", 20, "resnet50", "exponential", 5e-4)
    assert_same_summary(keywords.summary, listed.summary, "keywords vs list")
    assert_same_summary(mixed.summary, listed.summary, "list + keywords vs list")


# -- A.3: a bare name key is refused; a custom name with its own values is allowed -------------------
@pytest.mark.parametrize("key,value", [("network.name", "efa_100g"), ("intra.name", "pcie4"),
                                       ("stragglers.model", "exponential"), ("policy.name", "async"),
                                       ("profile.name", "resnet50"), ("workload.name", "softmax"),
                                       ("topology.name", "leaf_spine")])
def test_a_bare_name_key_that_would_relabel_a_preset_is_an_error(key, value):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        simulate(**{key: value})
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        to_config([f"{key}={value}"])


def test_a_bare_name_key_on_the_command_line_exits_2_with_one_line(cli):
    rc, out, err = cli["relabel"].wait()
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pssim: error: ") and "network.name" in lines[0], err
    assert not (cli["relabel"].dir / "run" / "summary.json").exists()


def test_a_custom_network_name_with_explicit_values_is_allowed(cli):
    custom = simulate(**CUSTOM_NET, **{"train.steps": 5, "output.trace": False, "output.progress": False})
    assert custom.config.network.name == "mynet" and custom.summary["network"] == "mynet"
    # The name is only a label: the same values under the default preset give the same run.
    values = {k: v for k, v in CUSTOM_NET.items() if k != "network.name"}
    relabelled = simulate(**values, **{"train.steps": 5, "output.trace": False, "output.progress": False})
    assert relabelled.summary["network"] == "tcp_10g"
    assert_same_summary({**custom.summary, "network": None}, {**relabelled.summary, "network": None}, "label")
    # Its values were used: every NIC link's line rate is 40 Gb/s = 5e9 bytes/s.
    assert (custom.links["bandwidth_Bps"] == 40e9 / 8).all()
    rc, out, err = cli["custom"].wait()
    assert rc == 0, err
    assert_same_summary(custom.summary, json.loads((cli["custom"].dir / "run" / "summary.json").read_text()),
                        "custom network")


# -- A.4: the loaded preset's values are the preset file's -------------------------------------------
def test_the_loaded_network_preset_is_the_yaml_file():
    result = simulate(network="tcp_25g", **{"train.steps": 2, "train.numerics": False, "output.trace": False,
                                            "output.progress": False})
    raw = yaml.safe_load((CONF / "network" / "tcp_25g.yaml").read_text())
    loaded = asdict(result.config.network)
    assert set(raw) <= set(loaded)
    for key, value in raw.items():
        assert loaded[key] == value, key
    assert loaded["multipath"] is False  # not in the file: the schema's default
    # And the run used them: a NIC link's line rate is the file's bandwidth.
    assert (result.links[result.links["src"] == "worker0"]["bandwidth_Bps"] == raw["bandwidth_gbps"] * 1e9 / 8).all()


@pytest.mark.parametrize("group", GROUPS)
def test_every_preset_loads_exactly_its_files_values(group):
    assert pssim.preset_names(group) == preset_files(group)
    for name in preset_files(group):
        raw = OmegaConf.to_container(OmegaConf.load(CONF / group / f"{name}.yaml"))
        raw.pop("defaults", None)
        loaded = asdict(getattr(to_config(**{group: name}), group))
        for key, value in raw.items():
            assert loaded[key] == value, f"{group}={name}: {key}"


# -- A.6: import layering, checked on what a fresh interpreter really loads --------------------------
FIRST_IMPORTS = ["pssim.config", "pssim.network", "pssim.workload", "pssim.cluster", "pssim.policies.asynchronous",
                 "pssim.simulation", "pssim.presets"]
REPORT = ("import importlib, json, sys; importlib.import_module({!r}); "
          "print(json.dumps(sorted(k for k in sys.modules if k == 'pssim' or k.startswith('pssim.'))"
          " + (['hydra'] if 'hydra' in sys.modules else [])))")


@pytest.fixture(scope="module")
def first_imports() -> dict[str, list[str]]:
    """For each module: what `import <module>` as the first statement of a fresh interpreter loads
    (every pssim module, and 'hydra' if Hydra came in). The interpreters run side by side."""
    procs = {m: subprocess.Popen([sys.executable, "-c", REPORT.format(m)], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for m in FIRST_IMPORTS}
    out = {}
    for module, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"import {module} in a fresh process failed:\n{stderr}"
        out[module] = json.loads(stdout.strip().splitlines()[-1])
    return out


def test_the_async_policy_module_imports_first_in_a_fresh_process(first_imports):
    loaded = first_imports["pssim.policies.asynchronous"]
    assert {"pssim.policies.asynchronous", "pssim.policies.ssp", "pssim.policies.base"} <= set(loaded)
    assert not {"pssim.presets", "pssim.api", "pssim.simulation", "hydra"} & set(loaded)


def test_importing_pssim_config_loads_no_other_pssim_module(first_imports):
    assert first_imports["pssim.config"] == ["pssim", "pssim.config"]


@pytest.mark.parametrize("package", ["pssim.network", "pssim.workload", "pssim.cluster"])
def test_lower_packages_import_without_policies_presets_api_or_hydra(first_imports, package):
    above = [m for m in first_imports[package]
             if m == "hydra" or m.startswith(("pssim.policies", "pssim.presets", "pssim.api", "pssim.simulation",
                                               "pssim.testing", "pssim.__main__"))]
    assert not above, f"{package} pulls in {above}"
    if package == "pssim.network":  # the bottom of the simulation: nothing of the layers above it
        assert all(m in ("pssim", "pssim.network") or m.startswith("pssim.network.") for m in first_imports[package])


def test_hydra_comes_in_with_the_presets_only(first_imports):
    """The simulation itself (every layer up to pssim.simulation) runs without Hydra; composing does not."""
    assert not {"hydra", "pssim.presets", "pssim.api"} & set(first_imports["pssim.simulation"])
    assert "hydra" in first_imports["pssim.presets"] and "pssim.api" not in first_imports["pssim.presets"]
