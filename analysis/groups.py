"""Which runs form one line: keys that vary, lines, labels, styles, captions and seed aggregation.

The rule: a line is every run that agrees on every config key that varies across the runs plotted,
except the x axis (or the panel) and the seed. Seeds are averaged into one point with a spread;
nothing else is averaged unless the user asks for it with --hue, and then the caption names what was
folded in. A label names every key that differs, except keys that follow from one already named (a
network preset changes network.name, .bandwidth_gbps and .flow_cap_gbps together: the label says
only the name).
"""

from __future__ import annotations

import difflib
import math
import textwrap
from dataclasses import dataclass, field

import pandas as pd

from analysis.load import SUMMARY_CONFIG

SEED = "seed"
IGNORED = ("output.",)  # where a run was written and how it showed progress: never a setting
# Policies in their usual order; others follow by name.
POLICY_ORDER = ["sync", "async", "ssp", "allreduce", "byteps", "herring"]
# Keys a caption names when they are the same in every run plotted (then those set on the command line).
CAPTION_KEYS = [
    "policy.name", "network.name", "topology.name", "intra.name", "profile.name", "workload.name",
    "cluster.device", "cluster.precision", "cluster.servers", "cluster.gpus_per_machine",
    "cluster.gpus_per_worker", "cluster.cpu_machines", "stragglers.model", "train.steps", "train.samples",
    "train.batch_size", "train.target_loss", "eval.every", "eval.every_samples",
]
SUMMARY_ONLY = "summary.json only"  # the line label of runs without a config.yaml (older runs)
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "h"]
DASHES = ["-", "--", "-.", ":"]


class KeyNotFound(ValueError):
    """A --x/--hue/--where key that names no column; the message suggests the closest ones."""


def is_null(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def norm(value):
    """A hashable, comparable form of a cell: null is None, 4.0 is 4, numpy scalars are Python's."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if is_null(value):
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def fmt(value) -> str:
    """A cell as a person reads it: 4 not 4.0, 0.001 not 0.0010000000000000002, 'true', '-' for null."""
    value = norm(value)
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def display(key: str) -> str:
    """How a key is written in labels and captions: its preset name (network, stragglers) or the key."""
    if key.endswith(".name") and key.count(".") == 1:
        return key[: -len(".name")]
    return {"stragglers.model": "stragglers"}.get(key, key)


def short_name(key: str) -> str:
    """A key as a legend writes it: the preset group (network), else its last part (staleness)."""
    name = display(key)
    return name if name != key else key.rsplit(".", 1)[-1]


def config_keys(runs: pd.DataFrame) -> list[str]:
    """The columns that are config keys: the dotted ones, plus the seed."""
    return [c for c in runs.columns if "." in c or c == SEED]


def resolve_key(runs: pd.DataFrame, name: str) -> str:
    """The column a user's key names: itself, its summary alias (workers -> cluster.workers), a preset
    group (network -> network.name) or the one dotted key ending in it (staleness -> policy.staleness)."""
    columns = list(runs.columns)
    if name in columns and ("." in name or name in (SEED, "gpus")):
        return name
    for candidate in (SUMMARY_CONFIG.get(name), f"{name}.name"):
        if candidate in columns:
            return candidate
    suffix = [c for c in columns if c.endswith("." + name)]
    if len(suffix) == 1:
        return suffix[0]
    if name in columns:
        return name
    if len(suffix) > 1:
        raise KeyNotFound(f"key {name!r} is ambiguous: {', '.join(suffix)}")
    close = difflib.get_close_matches(name, columns, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    raise KeyNotFound(f"no key {name!r} in these runs{hint}")


def _matches(cell, wanted: str) -> bool:
    """Whether a cell equals a value typed on the command line (4 == '4', 0.5 == '.5', null == 'null')."""
    cell = norm(cell)
    if cell is None:
        return wanted.lower() in ("null", "none", "-", "")
    if isinstance(cell, bool):
        return wanted.lower() == str(cell).lower()
    if isinstance(cell, (int, float)):
        try:
            return math.isclose(float(cell), float(wanted), rel_tol=1e-9, abs_tol=0.0)
        except ValueError:
            return False
    return str(cell) == wanted


def where(runs: pd.DataFrame, conditions: list[str]) -> pd.DataFrame:
    """The runs meeting every condition: KEY=VALUE, KEY=V1,V2 (any of them) or KEY!=VALUE."""
    keep = pd.Series(True, index=runs.index)
    for condition in conditions or []:
        negate = "!=" in condition
        name, sep, values = condition.partition("!=" if negate else "=")
        if not sep or not name:
            raise KeyNotFound(f"--where {condition!r}: write KEY=VALUE, KEY=V1,V2 or KEY!=VALUE")
        key = resolve_key(runs, name.strip())
        wanted = [v.strip() for v in values.split(",")]
        hit = runs[key].map(lambda cell: any(_matches(cell, w) for w in wanted))
        keep &= ~hit if negate else hit
    return runs[keep]


def distinct(series: pd.Series) -> list:
    """The distinct values of a column (null counted as one), sorted as numbers before text."""
    return sorted(set(normed(series)), key=sort_key)


def normed(series: pd.Series) -> list:
    """The cells of a column through `norm` (a list: pandas would turn None back into NaN)."""
    return [norm(v) for v in series.tolist()]


def sort_key(value):
    if value is None:
        return (3, "")
    if isinstance(value, str):
        rank = POLICY_ORDER.index(value) if value in POLICY_ORDER else len(POLICY_ORDER)
        return (1, rank, value)
    if isinstance(value, bool):
        return (2, str(value))
    return (0, value)


def varying_keys(runs: pd.DataFrame) -> list[str]:
    """Config keys whose values differ across the runs: not output.*, and not the seed (seeds are
    repeats of one setting, shown as a spread, never as separate lines)."""
    return [k for k in config_keys(runs)
            if k != SEED and not k.startswith(IGNORED) and len(distinct(runs[k])) > 1]


def _priority(key: str, last: tuple) -> tuple:
    """Label with the policy first, then preset names, then other keys in config order."""
    if key in last:
        return (3,)
    if key == "policy.name":
        return (0,)
    if key == "settings":
        return (0.5,)
    if key.endswith(".name") or key == "stragglers.model":
        return (1,)
    return (2,)


def _determines(runs: pd.DataFrame, by: str, key: str) -> bool:
    """Whether `key` has one value for each value of `by` in these runs (null counted as a value)."""
    seen = {}
    for b, k in zip(normed(runs[by]), normed(runs[key])):
        if seen.setdefault(b, k) != k:
            return False
    return True


def label_keys(runs: pd.DataFrame, candidates: list[str], start: list[str] = (), last: tuple = ()) -> list[str]:
    """The candidates, in label priority, less those that follow from one key already kept or drawn.

    A network preset changes network.name, .bandwidth_gbps and .flow_cap_gbps together: only the name
    is kept; policy.staleness is dropped when only ssp has it and with one value, kept when swept.
    Every key left out is a function of a key kept (or of one in `start`, the x axis or the panel), so
    grouping by `start` + the result gives exactly the groups of `start` + all candidates. Keys that
    merely change together (stragglers and servers of two unrelated sweeps) are all kept: the label
    names every difference.
    """
    order = sorted(candidates, key=lambda k: (_priority(k, last), candidates.index(k)))
    chosen = []
    for key in order:
        if not any(_determines(runs, by, key) for by in [*start, *chosen]):
            chosen.append(key)
    return chosen


def _varies_within(runs: pd.DataFrame, by: list[str], key: str) -> bool:
    """Whether `key` takes several values inside one group of `by` (it is averaged there)."""
    if not by:
        return len(distinct(runs[key])) > 1
    groups = {}
    for group, value in zip(zip(*(normed(runs[b]) for b in by)), normed(runs[key])):
        groups.setdefault(group, set()).add(value)
    return any(len(values) > 1 for values in groups.values())


@dataclass
class Lines:
    """The lines of a figure: the keys that define them, their labels in order, and a style each."""

    keys: list[str]                       # config keys whose values tell the lines apart
    aggregated: list[str]                 # varying keys folded into each line (only with --hue)
    labels: list[str] = field(default_factory=list)  # in display order; index = colour and marker
    covaried: list[str] = field(default_factory=list)  # keys that differ only along with a labelled one

    def style(self, label: str) -> dict:
        """Colour, marker and dashes of a line: fixed by its place in `labels`, so every figure drawn
        from the same runs gives a line the same look."""
        i = self.labels.index(label)
        # Later lines are drawn thinner and with smaller markers, so lines that coincide (async and ssp
        # often do when no worker lags) show as nested outlines instead of one hiding the other.
        k = min(i, 4)
        return {"color": f"C{i % 10}", "marker": MARKERS[i % len(MARKERS)],
                "linestyle": DASHES[(i // 10) % len(DASHES)], "linewidth": 2.6 - 0.4 * k,
                "markersize": 8.5 - 1.2 * k}

    @property
    def title(self) -> str:
        """The legend's title: what a line stands for."""
        return ", ".join(short_name(k) for k in self.keys) if self.keys else ""


def _label(values: dict, keys: list[str], full: bool = False) -> str:
    parts = []
    for key in keys:
        value = norm(values[key])
        if value is None and not full:
            continue  # a key this run does not have (policy.staleness of a sync run)
        if key == "policy.name" and not full:
            parts.append(fmt(value))  # the policy alone: sync, ssp
        elif key == "settings":
            if value == SUMMARY_ONLY:
                parts.append(value)
        else:
            # a preset by its group (network=tcp_25g), other keys by their last part (staleness=3)
            short = key if full else short_name(key)
            parts.append(f"{short}={fmt(value)}")
    return ", ".join(parts)


def assign_lines(runs: pd.DataFrame, exclude: list[str] = (), hue: list[str] | None = None,
                 last: tuple = ("cluster.workers",)) -> tuple[pd.DataFrame, Lines]:
    """Give every run a `line` label; `exclude`: keys drawn otherwise (the x axis, the panels).

    Without `hue`, lines are told apart by every varying key (labelled by label_keys).
    With `hue`, by those keys only: the other varying keys are averaged into the lines, and
    Lines.aggregated names them so the caption can say so.
    """
    exclude = [k for k in exclude if k in runs]
    varying = [k for k in varying_keys(runs) if k not in exclude]
    if "config_source" in runs and not hue:
        # Older runs (summary.json only) miss most keys: their lines say so rather than "intra=nvlink"
        # naming the newer ones, and they are never merged with newer runs.
        settings = runs["config_source"].map(lambda src: SUMMARY_ONLY if src == "summary.json" else "config")
        if settings.nunique() > 1:
            runs = runs.assign(settings=settings)
            varying = ["settings", *varying]
    if hue:
        keys = [resolve_key(runs, h) for h in hue]
        aggregated = [k for k in varying if k not in keys and _varies_within(runs, [*exclude, *keys], k)]
    else:
        keys = label_keys(runs, varying, exclude, last)
        aggregated = []
    covaried = [k for k in varying if k not in keys and k not in aggregated and k != "settings"
                and not any(k.startswith(group + ".") for group in _preset_groups(keys))]
    rows = runs[keys].to_dict("records") if keys else [{} for _ in range(len(runs))]
    labels = [_label(r, keys) for r in rows]
    distinct_values = {tuple(norm(r[k]) for k in keys) for r in rows}
    if len(set(labels)) != len(distinct_values):  # nulls made two lines look alike: name every key
        labels = [_label(r, keys, full=True) for r in rows]
    if not keys:
        only = distinct(runs["policy.name"]) if "policy.name" in runs else []
        labels = [fmt(only[0]) if len(only) == 1 else "all runs"] * len(runs)
    runs = runs.assign(line=labels)
    order = sorted(set(labels), key=lambda lab: [sort_key(norm(v)) for v in
                                                  runs.loc[runs["line"] == lab, keys].iloc[0]] if keys else 0)
    return runs, Lines(keys, aggregated, order, covaried)


def _preset_groups(keys: list[str]) -> list[str]:
    """Config groups whose preset a label names (network for network.name): their other keys follow."""
    return [k.rsplit(".", 1)[0] for k in keys if k.endswith(".name") or k == "stragglers.model"]


SPREAD_TEXT = {"minmax": "min-max", "std": "mean ± 1 standard deviation"}
# Values a caption leaves out as unremarkable (they are what nearly every run has).
UNREMARKABLE = {"cluster.cpu_machines": 0, "cluster.gpus_per_worker": 1}


def caption_name(key: str) -> str:
    """A key as a caption writes it: presets by name, cluster.* and train.* without their prefix."""
    name = display(key)
    for prefix in ("cluster.", "train."):
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def caption(runs: pd.DataFrame, lines: Lines, drawn: list[str] = (), spread_how: str | None = "minmax",
            extra: list[str] = (), width: int = 110, marks: str = "error bars", points: str = "Points") -> str:
    """What a figure held fixed, what it averaged and over how many seeds, wrapped to `width`.

    Fixed: CAPTION_KEYS and keys typed on the command line that have one value in every run plotted.
    """
    typed = set()
    if "overrides" in runs:
        for keys in runs["overrides"].dropna():
            typed.update(k for k in str(keys).split(",") if k)
    typed = {resolve_or_none(runs, k) for k in typed} - {None}
    skip = {*lines.keys, *drawn, SEED, "cluster.workers" if "gpus" in drawn else ""}
    policy_keys = [k for k in runs.columns if k.startswith("policy.") and k != "policy.name"]
    candidates = ["gpus", *CAPTION_KEYS, *policy_keys, *sorted(typed - set(CAPTION_KEYS) - set(policy_keys))]
    if "gpus" in runs and "cluster.workers" in runs and normed(runs["gpus"]) == normed(runs["cluster.workers"]):
        skip.add("cluster.workers")  # one GPU per worker: the GPU count says it
    stragglers = distinct(runs["stragglers.model"]) if "stragglers.model" in runs else []
    if stragglers and stragglers != ["none"]:
        candidates += [k for k in runs.columns if k.startswith("stragglers.") and k not in candidates]
    if "cluster.gpus_per_machine" in runs and distinct(runs["cluster.gpus_per_machine"]) == [1]:
        candidates.remove("intra.name")  # one GPU per machine: the intra-node fabric is never used
    for budget, overridden in (("train.samples", "train.steps"), ("eval.every_samples", "eval.every")):
        if budget in runs and runs[budget].notna().all():
            skip.add(overridden)  # a sample budget or cadence replaces the step count
    fixed = []
    for key in candidates:
        if key not in runs or key in skip or key.startswith(IGNORED):
            continue
        values = distinct(runs[key])
        if len(values) == 1 and values[0] is not None and UNREMARKABLE.get(key, object()) != values[0]:
            fixed.append(f"{caption_name(key)}={fmt(values[0])}")
    parts = [f"Fixed: {', '.join(fixed)}." if fixed else ""]
    if lines.aggregated:
        folded = "; ".join(f"{display(k)} in {{{', '.join(fmt(v) for v in distinct(runs[k]) if v is not None)}}}"
                           for k in lines.aggregated)
        parts.append(f"Averaged into each line (--hue {' '.join(display(k) for k in lines.keys)}): {folded}.")
    covaried = [k for k in lines.covaried if k not in drawn and not (k == "cluster.workers" and "gpus" in drawn)]
    if covaried:
        parts.append("Also differing between lines (with the keys labelled): " + "; ".join(
            f"{caption_name(k)} in {{{', '.join(fmt(v) for v in distinct(runs[k]) if v is not None)}}}"
            for k in covaried) + ".")
    parts.append(_policy_settings(runs, lines))
    seeds = distinct(runs[SEED]) if SEED in runs else []
    if spread_how:
        repeats = f"{len(seeds)} seeds ({', '.join(fmt(s) for s in seeds)})" if len(seeds) > 1 else "1 seed"
        what = f"{points}: mean over " + repeats + (" and the averaged settings" if lines.aggregated else "")
        parts.append(what + (f"; {marks}: {SPREAD_TEXT[spread_how]}." if len(seeds) > 1
                             or lines.aggregated else "."))
    parts.extend(extra)
    text = " ".join(p for p in parts if p)
    return "\n".join(textwrap.wrap(text, width))


def _policy_settings(runs: pd.DataFrame, lines: Lines) -> str:
    """The settings of each policy whose lines do not name them: 'Policy settings: ssp: staleness=3'."""
    if "policy.name" not in lines.keys:
        return ""
    keys = [k for k in runs.columns if k.startswith("policy.") and k != "policy.name"
            and k not in lines.keys and k not in lines.aggregated]
    per_policy = []
    for name in distinct(runs["policy.name"]):
        own = runs[[norm(v) == name for v in runs["policy.name"]]]
        items = []
        for key in keys:
            values = [v for v in distinct(own[key]) if v is not None]
            if len(values) == 1:
                items.append(f"{short_name(key)}={fmt(values[0])}")
        if items:
            per_policy.append(f"{fmt(name)}: {', '.join(items)}")
    return f"Policy settings: {'; '.join(per_policy)}." if per_policy else ""


def resolve_or_none(runs: pd.DataFrame, name: str) -> str | None:
    try:
        return resolve_key(runs, name)
    except KeyNotFound:
        return None
