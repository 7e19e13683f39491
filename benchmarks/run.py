"""Wall-clock benchmark of the simulator: how fast it runs, and what it costs over plain torch.

What: runs a few named scenarios through ``pssim.simulate`` and prints, per scenario, the best wall
time of N repeats, the SimPy events processed, events per wall second, the global steps reached and
the overhead against a FLOOR. It also times the default command line, ``python -m pssim``, end to end
(interpreter start, imports, Hydra composition, the run and its output files).

Why: the workers compute real torch gradients, so part of every run's wall time is unavoidable. The
floor is that part, written as independent plain torch code (``honest_floor``): ``nn.Linear`` layers
loaded with the run's initial parameters, ``torch.optim.SGD`` with the run's settings, and per global
step the gradients the run folds into it (every worker's batch under BSP, accumulated by
``backward`` and averaged; one batch under ASP/SSP), then one optimizer step. It indexes the same
batches of the same data (the run's own ``Workload``, built outside the timed loop) and does nothing
pssim-specific: no flat parameter vector, no ``Workload.gradient``. The overhead ``wall / floor`` is
then everything the simulator adds (flat-vector gradients, shards, event dispatch, the flow network,
records, tables). For BSP scenarios the floor's final parameters are also compared with the run's
(``floor_diff``: they compute the same gradients, so they agree to float rounding). A timing-only
scenario (``train.numerics=False``) computes no gradients, so its floor is zero and its overhead is
printed as '-': it measures pure simulation speed.

Usage:
    python benchmarks/run.py                      # every scenario, best of 3, plus the CLI line
    python benchmarks/run.py --scenario async16 --repeat 5
    python benchmarks/run.py --json bench.json    # also write the results as JSON
    python benchmarks/run.py --no-cli             # skip the end-to-end CLI timing

The floor runs torch on one intra-op thread, as ``Simulation.run`` does: for these tiny kernels one
thread is the fastest, and with two threads another busy process on a 2-core machine can slow each
kernel tens of times over. Timings on a shared machine are noisy all the same: compare numbers from
one invocation, not across days.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Benchmark the checkout this script lives in, even where an editable install points elsewhere.
sys.path.insert(0, str(ROOT))
import pssim

import simpy
import torch
import torch.nn.functional as F

from pssim.seeding import Streams
from pssim.workload.models import Model
from pssim.workload.workload import Workload

QUIET = {"output.progress": False, "output.trace": False}

# name -> simulate() keywords: a group name picks a preset (policy="ssp"), a dotted key sets a value.
# Each runs in a few seconds here.
SCENARIOS: dict[str, dict] = {
    "default": {},  # 4 workers, 1 server, sync, 200 steps
    "async16": {"cluster.workers": 16, "policy": "async", "train.steps": 400},
    "ssp16_stragglers": {"cluster.workers": 16, "policy": "ssp", "policy.staleness": 3,
                         "stragglers": "exponential", "stragglers.mean_s": 0.001,
                         "train.steps": 400},
    "sync32_timing": {"cluster.workers": 32, "policy": "sync", "train.numerics": False,
                      "train.steps": 200},
    "sync8_servers4": {"cluster.workers": 8, "cluster.servers": 4, "train.steps": 200},
    "sync16": {"cluster.workers": 16, "policy": "sync", "train.steps": 200},  # issue 10's BSP scenario
}

# The 64-GPU comparison of the README: eight 8-GPU machines (plus 4 CPU machines, used by byteps),
# resnet50's timing profile, 25 GbE with TCP. Equivalent to
#   python -m pssim +policy=NAME cluster.workers=64 cluster.gpus_per_machine=8 \
#       cluster.cpu_machines=4 profile=resnet50 network=tcp_25g train.steps=10
for _policy in ("allreduce", "byteps", "herring"):
    SCENARIOS[f"{_policy}64"] = {"policy": _policy, "cluster.workers": 64,
                                 "cluster.gpus_per_machine": 8, "cluster.cpu_machines": 4,
                                 "profile": "resnet50", "network": "tcp_25g", "train.steps": 10}

# Policies that fold every worker's gradient into each global step (the rest fold one per update).
SYNCHRONOUS = {"sync", "allreduce", "byteps", "herring"}


@dataclass
class Row:
    """One scenario's measurements (best of `repeats`)."""

    scenario: str
    wall_s: float  # the whole simulate() call: config, workload setup, the run, the tables
    run_s: float  # the event loop alone (summary["wall_s"], measured inside Simulation.run)
    events: int
    events_per_s: float  # events / wall_s
    global_steps: int
    gradients: int  # gradients the floor computes (0 for a timing-only run)
    floor_s: float
    overhead: float | None  # wall_s / floor_s; None when the floor is zero
    repeats: int
    floor_diff: float | None = None  # BSP: max |floor's final params - the run's|; None otherwise


# -- measuring ---------------------------------------------------------------------------------------
def best_of(repeats: int, fn):
    """Call fn() `repeats` times; return (shortest wall seconds, that call's return value)."""
    best = None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        elapsed = time.perf_counter() - start
        if best is None or elapsed < best[0]:
            best = (elapsed, value)
    return best


def per_step(cfg) -> int:
    """Gradients folded into one global step: every worker's under BSP, one under ASP/SSP."""
    return cfg.cluster.workers if cfg.policy.name in SYNCHRONOUS else 1


def gradient_count(result) -> int:
    """How many gradients the floor computes: global steps x gradients per step (0 timing-only)."""
    cfg = result.config
    if not cfg.train.numerics:
        return 0
    return result.summary["global_steps"] * per_step(cfg)


def plain_torch_model(model: Model, flat: torch.Tensor) -> list[torch.nn.Linear]:
    """The run's dense layers as nn.Linear modules holding its initial parameters (weight = W.T)."""
    if type(model) is not Model:
        raise ValueError(f"the honest floor knows dense Model layers only, not {type(model).__name__}")
    views = model.views(flat)
    layers = []
    for w, b in zip(views[0::2], views[1::2]):
        layer = torch.nn.Linear(w.shape[0], w.shape[1], dtype=flat.dtype)
        with torch.no_grad():
            layer.weight.copy_(w.t())
            layer.bias.copy_(b)
        layers.append(layer)
    return layers


def honest_floor(overrides: dict, result) -> tuple[float, float | None]:
    """(seconds, floor_diff) of independent plain torch code computing the run's gradients.

    Per global step: zero the grads; for each gradient the run folds into the step (BSP: worker w's
    batch of that step, for every w; ASP/SSP: one batch, workers taking turns) forward through
    nn.Linear/ReLU, cross-entropy, backward (accumulating); average over the batches; one
    torch.optim.SGD step. Only the loop is timed, on one torch thread as `Simulation.run` uses.
    floor_diff (BSP only): max |final params - the run's final params|.
    """
    cfg = result.config
    steps = result.summary["global_steps"]
    if not cfg.train.numerics or steps == 0:
        return 0.0, None
    n, k = cfg.cluster.workers, per_step(cfg)
    wl = Workload(cfg.workload, n, cfg.train.batch_size, Streams(cfg.seed))
    layers = plain_torch_model(wl.model, wl.init_params())
    params = [p for layer in layers for p in layer.parameters()]
    opt = torch.optim.SGD(params, lr=cfg.train.lr, momentum=cfg.train.momentum,
                          weight_decay=cfg.train.weight_decay)
    x_all, y_all = wl.data.x_train, wl.data.y_train
    if k > 1:  # BSP: every worker's batch of the step
        batches = [[torch.as_tensor(wl.batch_indices(w, s)) for w in range(n)] for s in range(steps)]
    else:  # ASP/SSP: worker s % n's (s // n)-th batch
        batches = [[torch.as_tensor(wl.batch_indices(s % n, s // n))] for s in range(steps)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as Simulation.run does
    try:
        start = time.perf_counter()
        for step_batches in batches:
            opt.zero_grad()
            for idx in step_batches:
                h = x_all[idx]
                for i, layer in enumerate(layers):
                    h = layer(h)
                    if i < len(layers) - 1:
                        h = F.relu(h)
                F.cross_entropy(h, y_all[idx]).backward()
            if k > 1:
                for p in params:
                    p.grad.div_(k)
            opt.step()
        seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    diff = None
    if k > 1 and result.params is not None:
        flat = torch.cat([t.detach().reshape(-1) for layer in layers for t in (layer.weight.t(), layer.bias)])
        diff = float((flat - result.params).abs().max())
    return seconds, diff


def run_scenario(name: str, repeats: int) -> Row:
    overrides = {**SCENARIOS[name], **QUIET}
    wall, result = best_of(repeats, lambda: pssim.simulate(**overrides))
    gradients = gradient_count(result)
    floors = [honest_floor(overrides, result) for _ in range(repeats)]
    floor, floor_diff = min(f for f, _ in floors), floors[0][1]
    events = result.summary["events"]
    return Row(
        scenario=name,
        wall_s=wall,
        run_s=result.summary["wall_s"],
        events=events,
        events_per_s=events / wall,
        global_steps=result.summary["global_steps"],
        gradients=gradients,
        floor_s=floor,
        overhead=wall / floor if floor > 0 else None,
        repeats=repeats,
        floor_diff=floor_diff,
    )


def time_cli(repeats: int) -> float:
    """Best wall seconds of the default `python -m pssim`, a fresh interpreter each time.

    The run directory goes to a temporary folder (not runs/), removed afterwards.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))

    def once() -> None:
        with tempfile.TemporaryDirectory(prefix="pssim-bench-") as tmp:
            cmd = [sys.executable, "-m", "pssim", f"hydra.run.dir={tmp}/run"]
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr}")

    wall, _ = best_of(repeats, once)
    return wall


# -- reporting ---------------------------------------------------------------------------------------
COLUMNS = [  # (header, Row field, format)
    ("scenario", "scenario", "{}"),
    ("wall_s", "wall_s", "{:.3f}"),
    ("run_s", "run_s", "{:.3f}"),
    ("events", "events", "{:,}"),
    ("events/s", "events_per_s", "{:,.0f}"),
    ("global_steps", "global_steps", "{}"),
    ("gradients", "gradients", "{}"),
    ("floor_s", "floor_s", "{:.3f}"),
    ("overhead", "overhead", "{:.2f}x"),
    ("floor_diff", "floor_diff", "{:.1e}"),
]


def format_table(rows: list[Row]) -> str:
    """A plain-text table, one line per scenario."""
    cells = [[h for h, _, _ in COLUMNS]]
    for row in rows:
        values = [getattr(row, field) for _, field, _ in COLUMNS]
        cells.append(["-" if v is None else fmt.format(v) for v, (_, _, fmt) in zip(values, COLUMNS)])
    widths = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS))]
    lines = []
    for r in cells:  # the scenario name left-aligned, numbers right-aligned
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths))))
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def machine() -> dict:
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "simpy": simpy.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads_default": torch.get_num_threads(),
        "platform": platform.platform(),
    }


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS), metavar="NAME",
                        help=f"run only this scenario (repeatable); one of: {', '.join(SCENARIOS)}")
    parser.add_argument("--repeat", type=int, default=3, help="repeats per scenario; the best counts (3)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results here as JSON")
    parser.add_argument("--no-cli", action="store_true", help="skip timing `python -m pssim`")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    names = args.scenario or list(SCENARIOS)
    info = machine()
    print(f"pssim benchmark: best of {args.repeat}; python {info['python']}, torch {info['torch']}, "
          f"simpy {info['simpy']}, {info['cpu_count']} CPUs")
    rows = []
    for name in names:
        rows.append(run_scenario(name, args.repeat))
        print(f"  done {name}", file=sys.stderr, flush=True)
    print(format_table(rows))

    cli_s = None
    if not args.no_cli:
        cli_s = time_cli(args.repeat)
        print(f"\nCLI end to end (`python -m pssim`, defaults, best of {args.repeat}): {cli_s:.3f} s")

    if args.json:
        payload = {"machine": info, "scenarios": [asdict(r) for r in rows],
                   "cli_default_wall_s": cli_s, "overrides": {n: SCENARIOS[n] for n in names}}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
