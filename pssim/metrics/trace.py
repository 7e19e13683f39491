"""Chrome trace event format (opens in Perfetto or chrome://tracing), laid out so spans on a track nest.

Perfetto draws the "X" spans of one thread (track) as a stack: two spans on a track must be disjoint or
one inside the other, or it hides or mis-draws them. Concurrent activities therefore get tracks of their
own, lanes, assigned by greedy interval partitioning (`_partition`): spans in order of start, each on
the lowest-numbered lane whose last span has ended by its start. So the spans of a lane never overlap at
all, and an activity uses as many lanes as it had spans in progress at one instant (the fewest
possible). Tracks that would be empty are not written.

    pid 1 "workers"  "<host> compute"      each step's compute (one lane: a worker's steps never overlap)
                     "<host> comm <k>"     push and pull (PS policies) or communicate (allreduce, byteps,
                                           herring, which overlap compute), on lanes of their own
    pid 2 "servers"  "<host> core <k>"     the CPU's busy spans; at most as many lanes as it has cores
    pid 3 "links"    "<link> flow <k>"     every message that crossed the link, concurrent ones on
                                           separate lanes (a failed one named "<tag> failed")
    pid 4 "faults"   "<component> fault <k>" each fault of that worker or link, from the fault to its
                                           recovery (or the end of the run); overlapping ones on lanes
                     counter "<link>"      series "utilisation": the link's allocated rate / capacity

Utilisation is exact: while it records, the network logs every change of a link's total allocated rate
(`FlowNetwork.rate_log`), and the counter steps at each change. Links that never carried a flow in the
trace window have no counter.

Times are whole nanoseconds, written as microseconds (the format's unit) such that a reader truncating
ts x 1000 to an integer, as Perfetto does, gets them back exactly; the lanes are laid out on those
integers, so adjacent spans stay adjacent instead of overlapping by a rounding. Thread ids are unique
across processes (Perfetto keys threads by tid alone) and ascend in display order.
"""

from __future__ import annotations

import gc
import heapq
import itertools
import math
from collections import defaultdict

WORKERS, SERVERS, LINKS, FAULTS = 1, 2, 3, 4  # pids
_FIRST_TID = 10  # lane thread ids start above the pids, which readers take as each process's main thread


def _ns(seconds: float) -> int:
    return round(seconds * 1e9)


def _us(ns: int) -> float:
    """`ns` in microseconds: the float nearest ns / 1000 from which int(us * 1000) gives ns back."""
    us = ns / 1000
    while int(us * 1000) < ns:  # at most once: ns / 1000 rounded down past an integer
        us = math.nextafter(us, math.inf)
    return us


def _partition(spans: list[tuple[int, int]]) -> list[int]:
    """Greedy interval partitioning of (start, end) spans: in order of start, each goes to the lowest-
    numbered lane whose last span ended at or before its start. Returns each span's lane (0-based).

    A lane's spans never overlap; the lanes used equal the most spans in progress at one instant
    (half-open: a span ending as another starts does not count with it), the fewest possible (a span of
    zero length inside a longer one takes a lane of its own)."""
    lanes = [0] * len(spans)
    busy: list[tuple[int, int]] = []  # (end, lane) of the lanes in use
    free: list[int] = []  # lanes whose last span has ended
    opened = 0
    for i in sorted(range(len(spans)), key=spans.__getitem__):
        start, end = spans[i]
        while busy and busy[0][0] <= start:
            heapq.heappush(free, heapq.heappop(busy)[1])
        if free:
            lane = heapq.heappop(free)
        else:
            lane, opened = opened, opened + 1
        lanes[i] = lane
        heapq.heappush(busy, (end, lane))
    return lanes


class _Trace:
    """Collects metadata, spans and counters; hands out thread ids in display order."""

    def __init__(self):
        self.metadata: list[dict] = []
        self.events: list[dict] = []
        self._tids = itertools.count(_FIRST_TID)

    def process(self, pid: int, name: str) -> None:
        self.metadata += [
            {"ph": "M", "pid": pid, "tid": pid, "name": "process_name", "args": {"name": name}},
            {"ph": "M", "pid": pid, "tid": pid, "name": "process_sort_index", "args": {"sort_index": pid}}]

    def lanes(self, pid: int, label: str, spans: list[tuple[int, int, str, dict]], numbered: bool = True) -> None:
        """Lay (start_ns, end_ns, name, args) spans on lanes "<label> <k>" (k from 1); an unnumbered label
        names its only lane "<label>" (should it need several, they are numbered after all)."""
        if not spans:
            return
        lane = _partition([(s[0], s[1]) for s in spans])
        count = max(lane) + 1
        tids = []
        for k in range(count):
            tid = next(self._tids)
            name = label if count == 1 and not numbered else f"{label} {k + 1}"
            self.metadata += [
                {"ph": "M", "pid": pid, "tid": tid, "name": "thread_name", "args": {"name": name}},
                {"ph": "M", "pid": pid, "tid": tid, "name": "thread_sort_index", "args": {"sort_index": tid}}]
            tids.append(tid)
        for k, (start, end, name, args) in sorted(zip(lane, spans), key=lambda ks: (ks[0], ks[1][0], ks[1][1])):
            self.events.append({"ph": "X", "pid": pid, "tid": tids[k], "name": name, "ts": _us(start),
                                "dur": _us(end - start), "args": args})

    def counter(self, pid: int, name: str, series: str, samples: list[tuple[int, float]]) -> None:
        """A counter track from (ns, value) samples in time order: the last value of an instant wins, and
        a value equal to the one before it is dropped."""
        kept: list[tuple[int, float]] = []
        for ns, value in samples:
            if kept and kept[-1][0] == ns:
                kept.pop()
            if not kept or kept[-1][1] != value:
                kept.append((ns, value))
        self.events += [{"ph": "C", "pid": pid, "name": name, "ts": _us(ns), "args": {series: value}}
                        for ns, value in kept]


def _finite(*times: float) -> bool:
    return all(math.isfinite(t) for t in times)


def chrome_trace(ctx) -> dict:
    """Workers' compute and communication, servers' CPU cores, links' flows and utilisation (layout in
    the module docstring). Only what the trace window covers (up to `recorder.trace_until`, the first
    output.trace_steps global steps) is included: steps that began in it, CPU work and flows that ended
    in it, utilisation changes in it."""
    trace = _Trace()
    until = ctx.recorder.trace_until
    collecting = gc.isenabled()
    gc.disable()  # hundreds of thousands of small dicts, no cycles: the collector would only rescan them
    try:
        _workers(trace, ctx, until)
        _servers(trace, ctx, until)
        _links(trace, ctx.network, until)
        _faults(trace, ctx, until)
    finally:
        if collecting:
            gc.enable()
    used = {e["pid"] for e in trace.events}  # a process with no track would show as an empty group
    return {"traceEvents": [m for m in trace.metadata if m["pid"] in used] + trace.events, "displayTimeUnit": "ms"}


def _workers(trace: _Trace, ctx, until: float) -> None:
    """Per worker: its compute track, then its communication lanes."""
    trace.process(WORKERS, "workers")
    compute, comm = defaultdict(list), defaultdict(list)
    for r in (r for r in ctx.recorder.steps if r.compute_start <= until):
        if _finite(r.compute_start, r.compute_end):
            compute[r.worker].append((_ns(r.compute_start), _ns(r.compute_end), "compute",
                                      {"step": r.step, "version": r.version}))
        if _finite(r.comm_start, r.push_end):  # PS policies: push, then pull (and any barrier or gate)
            comm[r.worker].append((_ns(r.comm_start), _ns(r.push_end), "push",
                                   {"step": r.step, "bytes": r.bytes_sent}))
            if _finite(r.comm_end):
                comm[r.worker].append((_ns(r.push_end), _ns(r.comm_end), "pull",
                                       {"step": r.step, "bytes": r.bytes_received}))
        elif _finite(r.comm_start, r.comm_end):  # the replicated policies' collective communication
            comm[r.worker].append((_ns(r.comm_start), _ns(r.comm_end), "communicate",
                                   {"step": r.step, "bytes_sent": r.bytes_sent, "bytes_received": r.bytes_received}))
    for w in ctx.workers:
        trace.lanes(WORKERS, f"{w.host} compute", compute[w.index], numbered=False)
        trace.lanes(WORKERS, f"{w.host} comm", comm[w.index])


def _servers(trace: _Trace, ctx, until: float) -> None:
    """Per server CPU (PS shard or summation service): a lane per core its work kept busy at once."""
    trace.process(SERVERS, "servers")
    for cpu in ctx.recorder.cpus:
        busy = [(_ns(a), _ns(b), what, {}) for a, b, what in cpu.busy if until >= b > a]
        trace.lanes(SERVERS, f"{cpu.host} core", busy)


def _faults(trace: _Trace, ctx, until: float) -> None:
    """Per faulty component (a worker, a link): its faults from when they hit to their recovery (the end
    of the run if never), on lanes so they nest. Only faults that hit within the trace window."""
    records = getattr(ctx.recorder, "faults", [])
    if not records:
        return
    trace.process(FAULTS, "faults")
    spans = defaultdict(list)
    for r in records:
        if r.time_s > until:
            continue
        end = r.recovered_at_s if math.isfinite(r.recovered_at_s) else ctx.env.now
        spans[r.component].append((_ns(r.time_s), _ns(max(end, r.time_s)), r.kind,
                                   {"updates_lost": r.updates_lost, "bytes_resent": r.bytes_resent,
                                    "time_lost_s": r.time_lost_s}))
    for component, items in spans.items():
        trace.lanes(FAULTS, f"{component} fault", items)


def _links(trace: _Trace, network, until: float) -> None:
    """Per link, in the topology's order: its flows on lanes; then a utilisation counter per link that
    carried a flow in the window (its allocated rate over its capacity then, to 6 decimals; 0 while down)."""
    trace.process(LINKS, "links")
    flows = defaultdict(list)
    for f in network.completed:
        if f.start <= until:
            for link in f.links:
                flows[link].append((_ns(f.start), _ns(f.end), f.tag, {"bytes": f.size, "src": f.src, "dst": f.dst}))
    for f in network.failed:  # cut short by a link going down: drawn until then
        if f.end <= until:
            for link in f.links:
                flows[link].append((_ns(f.start), _ns(f.end), f"{f.tag} failed",
                                    {"bytes": f.size, "src": f.src, "dst": f.dst, "error": str(f.error)}))
    for link in network.topology.links:
        trace.lanes(LINKS, f"{link.name} flow", flows.get(link, []))

    utilisation = defaultdict(list)
    for t, name, rate, capacity in network.rate_log:
        if t <= until:
            utilisation[name].append((_ns(t), round(rate / capacity, 6) if capacity > 0 else 0.0))
    for link in network.topology.links:
        samples = utilisation.get(link.name)
        if samples and any(u > 0 for _, u in samples):
            trace.counter(LINKS, link.name, "utilisation", [(0, 0.0), *samples])
