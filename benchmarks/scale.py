"""Scaling benchmark: how the wall time of each policy grows with the number of GPUs.

What: for each policy and cluster size, one timing-only run (``train.numerics=False``: no gradients,
only the simulation) of N global steps of resnet50's timing profile on the two_tier topology with 8
GPUs per machine, in a fresh interpreter each (so one run's caches and garbage never slow the next,
and a run past --timeout can be stopped). The parameter-server policies (sync, async, ssp,
bounded_delay) get one server shard per machine (GPUs / 8), BytePS one CPU machine per GPU machine.
Prints, per run, the wall time of the ``pssim.simulate`` call (imports excluded), its CPU time, the
event loop's own time (the summary's ``wall_s``), the SimPy events and the simulated time; then, per
policy, the growth exponent b of wall ~ a * GPUs^b fitted by least squares on log-log over the sizes
that finished (b = 1: linear in the cluster; b = 2: quadratic).

Why: a 1,000-GPU study must finish in minutes. The growth exponent says which part does not scale;
``--profile`` prints a cProfile of one run to find it.

Usage:
    python benchmarks/scale.py                                   # 7 policies x 64, 256, 1024 GPUs, 5 steps
    python benchmarks/scale.py --policy sync allreduce --gpus 64 256 --steps 10
    python benchmarks/scale.py --gpus 4096 --policy allreduce --timeout 900
    python benchmarks/scale.py --json scale.json                 # also write the results as JSON
    python benchmarks/scale.py --profile sync 256 3              # cProfile one run instead

A run that passes --timeout (default 600 s) is shown as '>600' and the policy's larger sizes are
skipped (they would only take longer). Timings on a shared machine are noisy: compare numbers from one
invocation, and prefer cpu_s to wall_s where other processes share the cores.

--route-cache runs with a stand-in for a change that topology.py does not have yet: routes from one
source computed by one Dijkstra (networkx's predecessors, cached per source) instead of one per
(source, destination) pair. The routes are the same (networkx builds all_shortest_paths from exactly
these predecessors), so the results are too; only the time differs. It shows what the flow network
costs once route computation no longer dominates.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

POLICIES = ["sync", "async", "ssp", "bounded_delay", "allreduce", "byteps", "herring"]
SERVERS = {"sync", "async", "ssp", "bounded_delay"}


def overrides(policy: str, gpus: int, steps: int, out_dir: str) -> dict:
    """The simulate() keywords of one run."""
    kw = {"cluster.workers": gpus, "cluster.gpus_per_machine": 8, "profile": "resnet50",
          "topology": "two_tier", "train.steps": steps, "train.numerics": False,
          "output.progress": False, "output.trace": False, "output.dir": out_dir}
    if policy in SERVERS:
        kw["cluster.servers"] = max(1, gpus // 8)
    if policy == "byteps":
        kw["cluster.cpu_machines"] = max(1, gpus // 8)
    return kw


def cache_routes_per_source() -> None:
    """Stand-in for per-source route caching in topology.py (see the module docstring)."""
    import networkx as nx
    from networkx.algorithms.shortest_paths.generic import _build_paths_from_predecessors

    from pssim.network.errors import NoRoute
    from pssim.network.topology import Topology

    def _routes(self, src, dst):
        graph = self._up_graph()
        cache = self.__dict__.setdefault("_bench_pred", {})
        key = (src, frozenset(self.down_links))
        pred = cache.get(key)
        if pred is None:
            if self._weight is None:
                pred = nx.predecessor(graph, src)
            else:
                pred, _ = nx.dijkstra_predecessor_and_distance(graph, src, weight=self._weight)
            cache[key] = pred
        if dst not in pred:
            raise NoRoute(src, dst)
        paths = sorted(_build_paths_from_predecessors({src}, dst, pred))
        return tuple(tuple(graph.edges[u, v]["link"] for u, v in zip(p, p[1:])) for p in paths)

    Topology._routes = _routes


def one(policy: str, gpus: int, steps: int, route_cache: bool) -> dict:
    """Run one configuration in this process and return its measurements."""
    sys.path.insert(0, str(ROOT))
    from pssim.api import simulate  # imports (torch, pandas, ...) are not timed

    if route_cache:
        cache_routes_per_source()
    out_dir = f"/tmp/pssim_scale_{os.getpid()}"
    kw = overrides(policy, gpus, steps, out_dir)
    wall, cpu = time.perf_counter(), time.process_time()
    result = simulate(policy=policy, **kw)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    s = result.summary
    return {"policy": policy, "gpus": gpus, "steps": steps, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
            "run_s": round(float(s["wall_s"]), 3), "events": int(s["events"]),
            "sim_time_s": float(s["sim_time_s"]), "route_cache": route_cache}


def run_subprocess(policy: str, gpus: int, steps: int, route_cache: bool, timeout: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", policy, str(gpus), str(steps)]
    if route_cache:
        cmd.append("--route-cache")
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"policy": policy, "gpus": gpus, "steps": steps, "timeout_s": timeout}
    if done.returncode != 0:
        return {"policy": policy, "gpus": gpus, "steps": steps, "error": done.stderr.strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def exponent(rows: list[dict], key: str = "wall_s") -> float | None:
    """Least-squares slope of log(key) against log(GPUs) over the finished rows (None under 2)."""
    points = [(math.log(r["gpus"]), math.log(r[key])) for r in rows if key in r and r[key] > 0]
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

    lines = ["| policy | " + " | ".join(f"{g} GPUs" for g in sizes) + " | exponent (wall) | exponent (cpu) |",
             "|---|" + "---:|" * (len(sizes) + 2)]
    for p in policies:
        mine = [r for r in rows if r["policy"] == p]
        by = {r["gpus"]: r for r in mine}
        b, bc = exponent(mine), exponent(mine, "cpu_s")
        lines.append(f"| {p} | " + " | ".join(cell(by.get(g)) for g in sizes)
                     + f" | {'-' if b is None else f'{b:.2f}'} | {'-' if bc is None else f'{bc:.2f}'} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--policy", nargs="+", default=POLICIES, choices=POLICIES)
    ap.add_argument("--gpus", nargs="+", type=int, default=[64, 256, 1024])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per run")
    ap.add_argument("--route-cache", action="store_true", help="per-source routes (see the docstring)")
    ap.add_argument("--json", metavar="FILE", help="also write the results here")
    ap.add_argument("--one", nargs=3, metavar=("POLICY", "GPUS", "STEPS"), help=argparse.SUPPRESS)
    ap.add_argument("--profile", nargs=3, metavar=("POLICY", "GPUS", "STEPS"), help="cProfile one run")
    args = ap.parse_args()

    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), int(args.one[2]), args.route_cache)))
        return
    if args.profile:
        import cProfile
        import pstats
        policy, gpus, steps = args.profile[0], int(args.profile[1]), int(args.profile[2])
        profiler = cProfile.Profile()
        profiler.runcall(one, policy, gpus, steps, args.route_cache)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
        return

    sizes = sorted(args.gpus)
    rows = []
    for policy in args.policy:
        for gpus in sizes:
            row = run_subprocess(policy, gpus, args.steps, args.route_cache, args.timeout)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
            if "timeout_s" in row:
                break  # larger clusters of this policy would only take longer
    print(f"{args.steps} steps, resnet50, two_tier, 8 GPUs per machine, timing only"
          + (", per-source route cache" if args.route_cache else "") + "; wall seconds of simulate():")
    print(table(rows, args.policy, sizes))
    if args.json:
        meta = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
                "date": time.strftime("%Y-%m-%d"), "steps": args.steps, "route_cache": args.route_cache}
        Path(args.json).write_text(json.dumps({"meta": meta, "runs": rows, "exponents": {
            p: {"wall": exponent([r for r in rows if r["policy"] == p]),
                "cpu": exponent([r for r in rows if r["policy"] == p], "cpu_s")} for p in args.policy}},
            indent=1))


if __name__ == "__main__":
    main()
