"""Scaling benchmark: how the wall time of each policy grows with the number of GPUs.

What: for each policy and cluster size, one timing-only run (``train.numerics=False``: no gradients,
only the simulation) of N global steps of resnet50's timing profile on the two_tier topology with 8
GPUs per machine, in a fresh interpreter each (so one run's caches and garbage never slow the next,
and a run past --timeout can be stopped). The parameter-server policies (sync, async, ssp,
bounded_delay, and HetPipe's) get one server shard per machine (GPUs / 8), BytePS one CPU machine per GPU machine
(``--servers N``: N of them at every size; with GPUs / 8 a step sends GPUs x servers messages, so the
simulated work itself grows as GPUs^2).

Prints, per run, the wall time of the ``pssim.simulate`` call (imports excluded), its CPU time, the
event loop's own time (the summary's ``wall_s``), the SimPy events, the simulated time and the run's
peak resident memory (``peak_mb``: the child process's maximum RSS, imports included); then, per
policy, the growth exponent b of wall ~ a * GPUs^b fitted by least squares on log-log over the sizes
that finished (b = 1: linear in the cluster; b = 2: quadratic).

Why: a 1,000-GPU study must finish in minutes. The growth exponent says which part does not scale;
``--profile`` prints a cProfile of one run to find it. ``--steps-exponent`` checks the other axis: wall
time and peak memory against the number of steps at one cluster size (exponent 1.0 and flat memory:
nothing accumulates per step). ``benchmarks/scale_plot.py`` draws the JSON this writes.

Usage:
    python benchmarks/scale.py                                   # 9 policies x 64, 256, 1024 GPUs, 5 steps
    python benchmarks/scale.py --policy sync allreduce --gpus 64 256 --steps 10
    python benchmarks/scale.py --gpus 4096 --policy allreduce --timeout 900
    python benchmarks/scale.py --json scale.json                 # also write the results as JSON
    python benchmarks/scale.py --steps-exponent 256 5 10 20 40   # one size, several step counts
    python benchmarks/scale.py --policy sync --servers 8         # a fixed number of servers
    python benchmarks/scale.py --profile sync 256 3              # cProfile one run instead

A run that passes --timeout (default 600 s) is shown as '>600' and the policy's larger sizes are
skipped (they would only take longer). Timings on a shared machine are noisy: compare numbers from one
invocation, and prefer cpu_s to wall_s where other processes share the cores.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

POLICIES = ["sync", "async", "ssp", "bounded_delay", "allreduce", "byteps", "herring", "parallax", "hetpipe"]
SERVERS = {"sync", "async", "ssp", "bounded_delay", "hetpipe"}


def overrides(policy: str, gpus: int, steps: int, out_dir: str, servers: int | None = None) -> dict:
    """The simulate() keywords of one run (`servers`: PS shards and BytePS CPU machines, default GPUs / 8)."""
    kw = {"cluster.workers": gpus, "cluster.gpus_per_machine": 8, "profile": "resnet50",
          "topology": "two_tier", "train.steps": steps, "train.numerics": False,
          "output.progress": False, "output.trace": False, "output.dir": out_dir}
    if policy in SERVERS:
        kw["cluster.servers"] = servers or max(1, gpus // 8)
    if policy == "byteps":
        kw["cluster.cpu_machines"] = servers or max(1, gpus // 8)
    return kw


def one(policy: str, gpus: int, steps: int, servers: int | None = None) -> dict:
    """Run one configuration in this process and return its measurements."""
    sys.path.insert(0, str(ROOT))
    from pssim.api import simulate  # imports (torch, pandas, ...) are not timed

    out_dir = f"/tmp/pssim_scale_{os.getpid()}"
    kw = overrides(policy, gpus, steps, out_dir, servers)
    wall, cpu = time.perf_counter(), time.process_time()
    result = simulate(policy=policy, **kw)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    s = result.summary
    return {"policy": policy, "gpus": gpus, "steps": steps,
            "servers": kw.get("cluster.servers", kw.get("cluster.cpu_machines")),
            "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
            "run_s": round(float(s["wall_s"]), 3), "events": int(s["events"]),
            "sim_time_s": float(s["sim_time_s"]),
            "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def run_subprocess(policy: str, gpus: int, steps: int, timeout: float, servers: int | None = None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", policy, str(gpus), str(steps)]
    if servers:
        cmd += ["--servers", str(servers)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"policy": policy, "gpus": gpus, "steps": steps, "timeout_s": timeout}
    if done.returncode != 0:
        return {"policy": policy, "gpus": gpus, "steps": steps, "error": done.stderr.strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def exponent(rows: list[dict], key: str = "wall_s", axis: str = "gpus") -> float | None:
    """Least-squares slope of log(key) against log(axis) over the finished rows (None under 2)."""
    points = [(math.log(r[axis]), math.log(r[key])) for r in rows if key in r and r[key] > 0]
    if len(points) < 2:
        return None
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else None


def table(rows: list[dict], policies: list[str], sizes: list[int]) -> str:
    def cell(r):
        if r is None:
            return "-"
        if "timeout_s" in r:
            return f">{r['timeout_s']:g}"
        if "error" in r:
            return "error"
        return f"{r['wall_s']:.2f}"

    lines = ["| policy | " + " | ".join(f"{g} GPUs" for g in sizes)
             + " | exponent (wall) | exponent (cpu) | peak MB (largest run) |",
             "|---|" + "---:|" * (len(sizes) + 3)]
    for p in policies:
        mine = [r for r in rows if r["policy"] == p]
        by = {r["gpus"]: r for r in mine}
        b, bc = exponent(mine), exponent(mine, "cpu_s")
        done = [r for r in mine if "peak_mb" in r]
        peak = f"{done[-1]['peak_mb']:.0f} ({done[-1]['gpus']})" if done else "-"
        lines.append(f"| {p} | " + " | ".join(cell(by.get(g)) for g in sizes)
                     + f" | {'-' if b is None else f'{b:.2f}'} | {'-' if bc is None else f'{bc:.2f}'} | {peak} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--policy", nargs="+", default=POLICIES, choices=POLICIES)
    ap.add_argument("--gpus", nargs="+", type=int, default=[64, 256, 1024])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per run")
    ap.add_argument("--steps-exponent", nargs="+", type=int, metavar=("GPUS", "STEPS"),
                    help="one cluster size, several step counts: the exponent in steps and peak memory")
    ap.add_argument("--servers", type=int, help="a fixed number of PS shards / BytePS CPU machines "
                    "(default GPUs / 8: then a step's messages grow as GPUs x servers)")
    ap.add_argument("--json", metavar="FILE", help="also write the results here")
    ap.add_argument("--one", nargs=3, metavar=("POLICY", "GPUS", "STEPS"), help=argparse.SUPPRESS)
    ap.add_argument("--profile", nargs=3, metavar=("POLICY", "GPUS", "STEPS"), help="cProfile one run")
    args = ap.parse_args()

    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), int(args.one[2]), args.servers)))
        return
    if args.profile:
        import cProfile
        import pstats
        policy, gpus, steps = args.profile[0], int(args.profile[1]), int(args.profile[2])
        profiler = cProfile.Profile()
        profiler.runcall(one, policy, gpus, steps, args.servers)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
        return

    if args.steps_exponent:
        steps_sweep(args)
        return
    sizes = sorted(args.gpus)
    rows = []
    for policy in args.policy:
        for gpus in sizes:
            row = run_subprocess(policy, gpus, args.steps, args.timeout, args.servers)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
            if "timeout_s" in row:
                break  # larger clusters of this policy would only take longer
    print(f"{args.steps} steps, resnet50, two_tier, 8 GPUs per machine, "
          f"{args.servers or 'GPUs / 8'} servers, timing only; wall seconds of simulate():")
    print(table(rows, args.policy, sizes))
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta(args.steps, args.servers), "runs": rows, "exponents": {
            p: {"wall": exponent([r for r in rows if r["policy"] == p]),
                "cpu": exponent([r for r in rows if r["policy"] == p], "cpu_s")} for p in args.policy}},
            indent=1))


def meta(steps, servers=None) -> dict:
    return {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d"), "steps": steps, "commit": commit(), "servers": servers}


def commit() -> str:
    """The checkout's commit, '+' if it has uncommitted changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, cwd=ROOT)
        return head.stdout.strip() + ("+" if dirty.stdout.strip() else "")
    except OSError:
        return "?"


def steps_sweep(args) -> None:
    """Each policy at one size and several step counts: wall time and peak memory against steps."""
    gpus, counts = args.steps_exponent[0], sorted(args.steps_exponent[1:])
    rows = []
    for policy in args.policy:
        for steps in counts:
            row = run_subprocess(policy, gpus, steps, args.timeout, args.servers)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
            if "timeout_s" in row:
                break
    print(f"{gpus} GPUs, resnet50, two_tier, timing only: wall seconds (peak MB) by steps")
    print("| policy | " + " | ".join(f"{n} steps" for n in counts) + " | exponent in steps (wall) |")
    print("|---|" + "---:|" * (len(counts) + 1))
    for p in args.policy:
        mine = [r for r in rows if r["policy"] == p]
        by = {r["steps"]: r for r in mine}
        cells = [f"{by[n]['wall_s']:.2f} ({by[n]['peak_mb']:.0f})" if n in by and "wall_s" in by[n] else "-"
                 for n in counts]
        b = exponent(mine, axis="steps")
        print(f"| {p} | " + " | ".join(cells) + f" | {'-' if b is None else f'{b:.2f}'} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta(counts, args.servers), "gpus": gpus, "runs": rows}, indent=1))


if __name__ == "__main__":
    main()
