"""Chrome trace event format (opens in Perfetto or chrome://tracing): a track per worker, server, link."""

from __future__ import annotations

import math

US = 1e6  # trace timestamps are microseconds


def _span(pid: int, tid: int, name: str, start: float, end: float, **args) -> dict:
    return {"ph": "X", "pid": pid, "tid": tid, "name": name, "ts": start * US,
            "dur": max(0.0, end - start) * US, "args": args}


def _names(pid: int, process: str, threads: list[str]) -> list[dict]:
    out = [{"ph": "M", "pid": pid, "tid": 0, "name": "process_name", "args": {"name": process}}]
    out += [{"ph": "M", "pid": pid, "tid": i, "name": "thread_name", "args": {"name": t}}
            for i, t in enumerate(threads)]
    return out


def chrome_trace(ctx) -> dict:
    """Workers show compute / push / pull-and-wait; servers their CPU work; links every flow they carried.

    Only what starts before `recorder.trace_until` (the first output.trace_steps steps) is included."""
    until = ctx.recorder.trace_until
    events = _names(1, "workers", [w.host for w in ctx.workers])
    for r in (r for r in ctx.recorder.steps if r.compute_start <= until):
        events.append(_span(1, r.worker, "compute", r.compute_start, r.compute_end, step=r.step, version=r.version))
        if math.isnan(r.comm_end):  # the run stopped while this step was communicating
            continue
        if not math.isnan(r.push_end):
            events.append(_span(1, r.worker, "push", r.comm_start, r.push_end, bytes=r.bytes_sent))
            events.append(_span(1, r.worker, "pull", r.push_end, r.comm_end, bytes=r.bytes_received))
        else:
            events.append(_span(1, r.worker, "communicate", r.comm_start, r.comm_end))

    cpus = ctx.recorder.cpus
    events += _names(2, "servers", [cpu.host for cpu in cpus])
    for i, cpu in enumerate(cpus):
        events += [_span(2, i, what, a, b) for a, b, what in cpu.busy if until >= b > a]

    links = ctx.network.topology.links
    index = {link: i for i, link in enumerate(links)}
    events += _names(3, "links", [link.name for link in links])
    for f in (f for f in ctx.network.completed if f.start <= until):
        for link in f.links:
            events.append(_span(3, index[link], f.tag, f.start, f.end, bytes=f.size))
    return {"traceEvents": events, "displayTimeUnit": "ms"}
