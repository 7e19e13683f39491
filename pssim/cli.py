"""The `pssim` command (also `python -m pssim`): a Hydra app with pssim's own help, listing and key checks.

    pssim [+policy=NAME | policy=NAME] [GROUP=PRESET ...] [KEY=VALUE ...]   one run
    pssim -m KEY=A,B ...                                                   a sweep (Hydra multirun)
    pssim list [GROUP]                                                     what can be chosen
    pssim --help                                                           groups and keys

Before Hydra sees the overrides, `policy=NAME` becomes `+policy=NAME` and every key is checked against
the composed config, so a misspelt key stops with one line naming the closest real key.
"""

from __future__ import annotations

import argparse
import difflib
import inspect
import json
import re
import sys
import warnings
from dataclasses import fields, is_dataclass
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from pssim.api import IgnoredKeyWarning, simulate
from pssim.cluster.device import DEVICES
from pssim.cluster.stragglers import STRAGGLER_MODELS
from pssim.cluster.topologies import TOPOLOGIES
from pssim.config import Config, ConfigError
from pssim.metrics.summary import format_summary
from pssim.policies import POLICIES
from pssim.presets import (CONFIG_DIR, GROUPS, check_overrides, compose, ignored_keys, normalize, preset_names,
                           register_schemas, to_config)
from pssim.workload.profiles import PROFILES

register_schemas()


# Exit status of a single run by how it ended (a sweep always goes on, and reports each run's status).
EXIT = {"completed": 0, "failed": 2, "stalled": 3, "diverged": 4, "interrupted": 130}


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def app(cfg: DictConfig) -> dict | None:
    """One run (or one job of a sweep): simulate, write the run directory, print the summary table.

    A sweep's job that fails (an invalid value) writes a summary.json with status failed and its
    error, and the sweep goes on; a job whose directory already holds a completed run of the same
    config is skipped unless output.force=true."""
    out = Path(HydraConfig.get().runtime.output_dir)
    cfg.output.dir = str(out)
    sweep = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        check_overrides(HydraConfig.get().overrides.task)
        config = to_config(cfg)
        if sweep and not config.output.force and _completed(out, config):
            print(f"pssim: {out} already holds this completed run; skipped (output.force=true reruns it)")
            return json.loads((out / "summary.json").read_text())
        for item in ignored_keys(config):
            print(f"pssim: warning: {item} is ignored by policy {config.policy.name}", file=sys.stderr)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", IgnoredKeyWarning)  # printed above, once
            result = simulate(config)
    except ConfigError as err:
        if not sweep:
            fail(str(err))
        _record_failure(out, str(err))
        print(f"pssim: error: {err} (recorded in {out}; the sweep goes on)", file=sys.stderr)
        return None
    print(format_summary(result.summary))
    print(f"outputs: {out}")
    status = result.summary["status"]
    if not sweep and status != "completed":
        sys.exit(EXIT[status])
    return result.summary


def _completed(out: Path, config) -> bool:
    """Whether `out` holds a completed run of exactly this config."""
    summary, saved = out / "summary.json", out / "config.yaml"
    if not (summary.exists() and saved.exists()):
        return False
    same = saved.read_text() == OmegaConf.to_yaml(OmegaConf.structured(config))
    return same and json.loads(summary.read_text()).get("status") == "completed"


def _record_failure(out: Path, error: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps({"status": "failed", "error": error}, indent=2) + "\n")


class SweepStatus(Callback):
    """At the end of a sweep: one line per run with its status (and its error or headline numbers)."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        root = Path(config.hydra.sweep.dir)
        rows = []
        for path in sorted(root.glob("*/summary.json"), key=lambda p: (len(p.parent.name), p.parent.name)):
            s = json.loads(path.read_text())
            detail = s.get("error") or (f"{s['throughput_samples_per_s']:,.0f} samples/s, final loss "
                                        f"{s['final_loss']:.4f}" if s.get("final_loss") is not None else
                                        f"{(s.get('throughput_samples_per_s') or 0):,.0f} samples/s")
            rows.append((path.parent.name, s.get("status", "?"), detail))
        if not rows:
            return
        width = max(len(r[0]) for r in rows)
        counts = {st: sum(r[1] == st for r in rows) for st in dict.fromkeys(r[1] for r in rows)}
        print(f"\nsweep {root}: " + ", ".join(f"{n} {st}" for st, n in counts.items()))
        for name, status, detail in rows:
            print(f"  {name.ljust(width)}  {status:<11}  {detail}")


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["list"]:
        print(listing(args[1:]))
        return
    if args[:1] == ["validate"]:
        validate(args[1:])
        return
    if "--help" in args or "-h" in args:
        print(help_text())
        return
    args = [normalize(a) for a in args]
    try:
        check_keys(args)
    except ConfigError as err:
        fail(str(err))
    sys.argv = [sys.argv[0], *args]
    app()


def validate(args: list[str]) -> None:
    """`pssim validate [--only TEXT] [--write [PATH]]`: run the published setups of pssim/validation.py and
    print pssim's figure beside each published one (or write the tables into docs/VALIDATION.md)."""
    import pssim.validation as validation

    parser = argparse.ArgumentParser(prog="pssim validate", description=validate.__doc__)
    parser.add_argument("--only", default="", help="rows whose section or figure contains this text")
    parser.add_argument("--write", nargs="?", const="docs/VALIDATION.md", default=None, metavar="PATH",
                        help="write the tables between the markers of PATH (default docs/VALIDATION.md)")
    opts = parser.parse_args(args)
    rows = [r for r in validation.ROWS if opts.only.lower() in f"{r.section} {r.what}".lower()]
    if not rows:
        fail(f"--only {opts.only!r} matches no row; sections: "
             + "; ".join(dict.fromkeys(r.section for r in validation.ROWS)))
    progress = lambda what: print(f"  running: {what}", file=sys.stderr)  # noqa: E731
    if opts.write:
        validation.write(Path(opts.write), rows, progress)
        print(f"wrote {opts.write}")
    else:
        print(validation.tables(rows, progress))


def fail(message: str) -> None:
    print(f"pssim: error: {message}", file=sys.stderr)
    sys.exit(2)


# -- overrides -----------------------------------------------------------------------------------------
OVERRIDE = re.compile(r"^(?P<prefix>\+\+|\+|~)?(?P<key>[\w.\[\]/@-]+)=(?P<value>.*)$")


def _is_group_pick(key: str) -> bool:
    return key in GROUPS or "/" in key or key.startswith("hydra")


def _first(value: str) -> list[str]:
    """The values of a sweep (`a,b,c`); a function sweep (range(...), glob(...)) is not expanded."""
    return [value] if "(" in value else [v for v in value.split(",") if v] or [value]


def check_keys(args: list[str]) -> None:
    """Every KEY=VALUE names a real key of the config its group choices compose (for at least one
    policy of a policy sweep); otherwise ConfigError naming the closest key."""
    deletions = [a for a in args if a.startswith("~")]
    if deletions:
        raise ConfigError(f"{deletions[0]}: deleting a key is not supported; set it to a value instead")
    overrides = [m for a in args if not a.startswith("-") and (m := OVERRIDE.match(a))]
    picks = {m["key"]: _first(m["value"]) for m in overrides if _is_group_pick(m["key"]) and m["key"] != "hydra"}
    policies = picks.pop("policy", [None])  # None: the default policy, or the one an experiment picks
    base = [f"{g}={v[0]}" for g, v in picks.items() if g in GROUPS]
    known: set[str] = set()
    composed = []
    for policy in policies:
        composed.append(compose([*base, *([f"+policy={policy}"] if policy else [])]))
        known |= flat_keys(composed[-1])
    for m in overrides:
        key = m["key"]
        if _is_group_pick(key):
            continue
        if key in known:
            _check_bool(key, m["value"], composed)
            continue
        close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else ""
        owners = [p for p in POLICIES if key.startswith("policy.") and key.split(".", 1)[1] in
                  {f.name for f in fields(POLICIES[p].Config)}]
        if owners:
            hint = f"; it is a key of policy {', '.join(owners)} (choose it with +policy=NAME)"
        raise ConfigError(f"{key} is not a key of this configuration{hint}")


def _check_bool(key: str, value: str, composed) -> None:
    """A true/false key takes true or false (Hydra would read `network.multipath=2` as true)."""
    is_bool = any(isinstance(OmegaConf.select(c, key, default=None), bool) for c in composed)
    if is_bool and not any(v.lower() in ("true", "false") for v in _first(value)):
        raise ConfigError(f"{key}={value} is invalid: must be true or false")


def flat_keys(cfg) -> set[str]:
    """Every dotted key of a config, nodes and leaves."""
    out: set[str] = set()

    def walk(node, prefix: str) -> None:
        for k in node:
            path = f"{prefix}{k}"
            out.add(path)
            child = node[k] if not OmegaConf.is_missing(node, k) else None
            if isinstance(child, DictConfig):
                walk(child, path + ".")

    walk(cfg, "")
    return out


# -- pssim list ----------------------------------------------------------------------------------------
def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else ""


def _preset_line(group: str, name: str) -> str:
    """The first comment line of a preset's YAML file."""
    for line in (CONFIG_DIR / group / f"{name}.yaml").read_text().splitlines():
        if line.startswith("#") and not line.startswith("# @package"):
            return line.lstrip("# ").strip()
    return ""


def listing(groups: list[str]) -> str:
    """One line per choice: policies, the presets of every group, devices, profiles."""
    sections = {
        "policy": [(n, _first_line(sys.modules[POLICIES[n].__module__].__doc__)) for n in sorted(POLICIES)],
        **{g: [(n, _preset_line(g, n)) for n in preset_names(g)] for g in GROUPS if g != "policy"},
        "devices (cluster.device)": [(d.name, f"{d.peak_fp32 / 1e12:g} TFLOP/s fp32, "
                                              + (f"{d.peak_tf32 / 1e12:g} tf32, " if d.peak_tf32 else "")
                                              + (f"{d.peak_fp16 / 1e12:g} fp16 tensor" if d.tensor_cores
                                                 else "no tensor cores")
                                              + (f"; {d.memory_gb:g} GB" if d.memory_gb else "")
                                              + f", {d.memory_bandwidth / 1e9:g} GB/s")
                                     for d in DEVICES.values()],
    }
    wanted = groups or list(sections)
    unknown = [g for g in wanted if g not in sections and not any(s.startswith(g) for s in sections)]
    if unknown:
        fail(f"pssim list {unknown[0]}: allowed values are " + ", ".join(s.split()[0] for s in sections))
    lines = []
    for title, rows in sections.items():
        if not any(title.startswith(g) for g in wanted):
            continue
        width = max(len(n) for n, _ in rows)
        lines += [f"{title}:", *[f"  {n.ljust(width)}  {text}" for n, text in rows], ""]
    return "\n".join(lines).rstrip()


# -- pssim --help --------------------------------------------------------------------------------------
def field_docs(cls) -> dict[str, str]:
    """The comment lines above each field of a dataclass, or its class docstring's first line."""
    docs, pending = {}, []
    for klass in reversed(cls.__mro__):
        if not is_dataclass(klass):
            continue
        try:
            source = inspect.getsource(klass).splitlines()
        except (OSError, TypeError):
            continue
        for line in source[1:]:
            stripped = line.strip()
            if stripped.startswith("#"):
                pending.append(stripped.lstrip("# "))
            elif m := re.match(r"^\s+(\w+):", line):
                if pending:
                    docs[m.group(1)] = " ".join(pending)
                pending = []
            else:
                pending = []
    return docs


def _keys(prefix: str, schema) -> list[tuple[str, str, str]]:
    """(key, default, description) of a dataclass schema's own leaf fields."""
    docs = field_docs(schema)
    rows = []
    defaults = OmegaConf.structured(schema)
    for f in fields(schema):
        if is_dataclass(f.type) or f.name in ("name", "model"):
            continue
        value = "???" if OmegaConf.is_missing(defaults, f.name) else OmegaConf.to_container(defaults)[f.name]
        rows.append((f"{prefix}.{f.name}", "per preset" if value == "???" else repr(value), docs.get(f.name, "")))
    return rows


def help_text() -> str:
    from pssim.config import ClusterConfig, EvalConfig, NetworkConfig, OutputConfig, TrainConfig, WorkloadConfig

    groups = [f"  {g:<11} {', '.join(POLICIES if g == 'policy' else preset_names(g))}" for g in GROUPS]
    core = [("seed", "0", "root of every random stream"),
            *_keys("cluster", ClusterConfig), *_keys("train", TrainConfig), *_keys("eval", EvalConfig),
            *_keys("workload", WorkloadConfig), *_keys("network", NetworkConfig), *_keys("output", OutputConfig)]
    parts = [*[("policy", POLICIES[n].Config, f"under +policy={n}") for n in sorted(POLICIES)],
             *[("stragglers", s, f"under stragglers={n}") for n, s in STRAGGLER_MODELS.items()],
             *[("topology", t, f"under topology={n}") for n, t in TOPOLOGIES.items()]]
    own = [(k, d, f"{text} ({where})".strip()) for group, schema, where in parts for k, d, text in _keys(group, schema)]
    width = max(len(k) + len(d) for k, d, _ in [*core, *own]) + 3

    def row(key, default, text):
        return f"  {(key + ' = ' + default).ljust(width)}  {text}"

    return "\n".join([
        __doc__.split("\n\n")[0].strip().replace("(also `python -m pssim`)", "(or python -m pssim)"),
        "", *[line for line in __doc__.split("\n\n")[1].splitlines()], "",
        "Groups (GROUP=PRESET; `pssim list` describes each):", *groups, "",
        "Keys (KEY=VALUE, default):", *[row(*r) for r in core], "",
        "Keys of one policy, straggler model or topology:", *[row(*r) for r in own], "",
        "Profiles: " + ", ".join(PROFILES) + ".  Hydra's own options: pssim --hydra-help.",
        "Outputs: runs/<date>/<time>_<overrides>/ (docs/OUTPUTS.md).",
    ])


if __name__ == "__main__":
    main()
