"""Faults (the `faults` config group): worker crashes, server crashes (bounded_delay only) and link
failures or degradation, at given simulated times (`scheduled`) or drawn from a failure rate (`mtbf`),
and the injector that makes them happen.

The injector only uses the failure hooks: `Policy.crash_worker` / `restart_worker` (built on
`Policy.interrupt`), `FlowNetwork.fail_link` / `set_link_capacity` / `restore_link`. Each policy recovers
as its system does (docs/MODELS.md, "Faults"): async/ssp lose the crashed worker's in-flight gradient and
restart it with a fresh pull; BSP goes on without it when it has backup workers; the lockstep policies
(allreduce, byteps, herring) abandon the step and restart it after the member's restart. Messages of the
parameter-server policies that a link failure ends are sent again once a route exists. A server crash
(for good) hands the server's key ranges to the next live server on bounded_delay's
consistent-hash ring, which resumes from its replicated copy (pssim/policies/bounded_delay.py,
`Replication`); pushes and pulls the crashed server had not completed are sent again to the new owner.

Every fault is one row of the faults table (`FaultRecord`); a run that can no longer progress ends
`stalled` with a `diagnosis()`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import simpy

from pssim.config import ConfigError, FaultsConfig, require
from pssim.network.errors import NetworkError, NoRoute
from pssim.registry import Registry

FAULT_MODELS: Registry[type[FaultsConfig]] = Registry("faults.model")
KINDS = ("worker_crash", "server_crash", "link_down", "link_degrade")
# Policies that hand a crashed server's key ranges to a replica (OSDI'14's replicated ranges).
SERVER_CRASH = ("bounded_delay",)
# Policies whose recovery from a worker crash, or from a link failure (byteps, herring: a step abandoned
# midway would leave partial sums on their summation services), is not modelled; link_degrade is.
NO_WORKER_CRASH: tuple[str, ...] = ()
NO_LINK_FAULTS = ("byteps", "herring")
# Class decorator: make a fault model available as `faults=<model>` (its schema: the class).
fault_model = FAULT_MODELS.by("model")


@dataclass
class FaultEvent:
    """One scheduled fault."""

    # Simulated time of the fault.
    at_s: float = 0.0
    # worker_crash, server_crash, link_down or link_degrade.
    kind: str = "worker_crash"
    # A worker index ("0") for worker_crash; a server index ("0", host server0) for server_crash; a link
    # "a-b" by host names for the link kinds.
    target: str = "0"
    # Restart (worker) or restore (link) after this long; null: never (a server_crash is always for good).
    for_s: float | None = None
    # link_degrade: the link's capacity drops to this fraction of nominal, in (0, 1).
    fraction: float | None = None


@fault_model
@dataclass
class NoFaults(FaultsConfig):
    model: str = "none"


@fault_model
@dataclass
class ScheduledFaults(FaultsConfig):
    """Faults at given simulated times."""

    model: str = "scheduled"
    events: list[FaultEvent] = field(default_factory=list)

    def check(self, config) -> None:
        crashed = set()
        for i, e in enumerate(self.events):
            key = f"faults.events[{i}]"
            require(e.kind in KINDS, f"{key}.kind", e.kind, "allowed values are " + ", ".join(KINDS))
            require(math.isfinite(e.at_s) and 0 <= e.at_s <= 1e9, f"{key}.at_s", e.at_s, "must be in [0, 1e9] s")
            require(e.for_s is None or (math.isfinite(e.for_s) and 0 <= e.for_s <= 1e9), f"{key}.for_s", e.for_s,
                    "must be in [0, 1e9] s, or null (permanent)")
            if e.kind == "worker_crash":
                ok = str(e.target).isdigit() and int(e.target) < config.cluster.workers
                require(ok, f"{key}.target", e.target,
                        f"must be a worker index in [0, {config.cluster.workers}) for a worker_crash")
                require(config.policy.name not in NO_WORKER_CRASH, f"{key}.kind", e.kind,
                        f"worker crashes are not modelled under policy {config.policy.name} yet")
            elif e.kind == "server_crash":
                require(config.policy.name in SERVER_CRASH, f"{key}.kind", e.kind,
                        f"server crashes are modelled only under +policy=bounded_delay, not {config.policy.name}")
                ok = str(e.target).isdigit() and int(e.target) < config.cluster.servers
                require(ok, f"{key}.target", e.target,
                        f"must be a server index in [0, {config.cluster.servers}) for a server_crash")
                require(e.for_s is None, f"{key}.for_s", e.for_s, "must be null: a crashed server does not come back")
                crashed.add(int(e.target))
                require(len(crashed) < config.cluster.servers, f"{key}.target", e.target,
                        "would crash every server: at least one must stay up to take the key ranges")
            else:
                require(str(e.target).count("-") == 1 and all(str(e.target).split("-")), f"{key}.target", e.target,
                        "must be a link 'a-b' between two host names for a link fault")
                require(e.kind == "link_degrade" or config.policy.name not in NO_LINK_FAULTS, f"{key}.kind", e.kind,
                        f"link failures are not modelled under policy {config.policy.name} (link_degrade is; "
                        "allreduce and the parameter-server policies recover from link_down)")
            if e.kind == "link_degrade":
                require(e.fraction is not None and 0 < e.fraction < 1, f"{key}.fraction", e.fraction,
                        "must be in (0, 1) for a link_degrade")
            else:
                require(e.fraction is None, f"{key}.fraction", e.fraction, f"is only for link_degrade, not {e.kind}")


@fault_model
@dataclass
class MtbfFaults(FaultsConfig):
    """Faults drawn from failure rates: each class's faults arrive as a Poisson process with mean time
    between failures mtbf_s (for the whole class, not per component), each hitting a component of the
    class drawn uniformly; a draw that hits a component already down is skipped. Worker and link faults
    are repaired after repair_s; a server crash is for good, and a draw that would crash the last live
    server is skipped. Draws come from the named streams faults/worker, faults/link and faults/server."""

    model: str = "mtbf"
    # Mean time between worker crashes (cluster-wide); null: no worker crashes.
    worker_mtbf_s: float | None = 1.0
    worker_repair_s: float = 0.1
    # Mean time between link failures (over every host-switch and switch-switch link); null: none.
    link_mtbf_s: float | None = None
    link_repair_s: float = 0.1
    # Mean time between server crashes (bounded_delay only; for good, never the last live server); null: none.
    server_mtbf_s: float | None = None

    def check(self, config) -> None:
        mtbf = self.server_mtbf_s
        require(mtbf is None or (math.isfinite(mtbf) and 1e-9 <= mtbf <= 1e9), "faults.server_mtbf_s", mtbf,
                "must be in [1e-9, 1e9] s, or null (no server crashes)")
        if mtbf is not None:
            require(config.policy.name in SERVER_CRASH, "faults.server_mtbf_s", mtbf,
                    f"server crashes are modelled only under +policy=bounded_delay, not {config.policy.name}")
        for cls in ("worker", "link"):
            mtbf, repair = getattr(self, f"{cls}_mtbf_s"), getattr(self, f"{cls}_repair_s")
            require(mtbf is None or (math.isfinite(mtbf) and 1e-9 <= mtbf <= 1e9), f"faults.{cls}_mtbf_s", mtbf,
                    "must be in [1e-9, 1e9] s, or null (no faults of this class)")
            require(math.isfinite(repair) and 0 <= repair <= 1e9, f"faults.{cls}_repair_s", repair,
                    "must be in [0, 1e9] s")
        if self.link_mtbf_s is not None:
            require(config.policy.name not in NO_LINK_FAULTS, "faults.link_mtbf_s", self.link_mtbf_s,
                    f"link faults are not modelled under policy {config.policy.name}")
        if self.worker_mtbf_s is not None:
            require(config.policy.name not in NO_WORKER_CRASH, "faults.worker_mtbf_s", self.worker_mtbf_s,
                    f"worker crashes are not modelled under policy {config.policy.name} yet")


@dataclass
class FaultRecord:
    """One row of the faults table (docs/OUTPUTS.md)."""

    time_s: float
    component: str  # "worker 3" or "link a-b"
    kind: str
    recovered_at_s: float = math.nan  # NaN: not recovered by the end of the run
    updates_lost: int = 0
    bytes_resent: float = 0.0
    time_lost_s: float = 0.0


class RetryingNetwork:
    """The parameter servers' view of the network once links can fail: a message that a link failure ends
    (LinkDown) is sent again at once (the network routes around the dead link when it can); when no route
    exists (NoRoute) it waits until a link comes back and tries again. Bytes sent again and time spent
    waiting are charged to the link fault that caused them."""

    def __init__(self, injector: "FaultInjector", network):
        self._injector = injector
        self._network = network

    def __getattr__(self, name):
        return getattr(self._network, name)

    def send(self, src: str, dst: str, nbytes: float, tag: str = "", messages: int = 1) -> simpy.Event:
        return self._network.env.process(self._send(src, dst, nbytes, tag, messages))

    def _send(self, src, dst, nbytes, tag, messages):
        inj = self._injector
        while True:
            try:
                yield self._network.send(src, dst, nbytes, tag, messages)
                return
            except NetworkError as err:
                fault = inj.link_fault_for(err)
                if fault is not None:
                    fault.bytes_resent += nbytes
                if isinstance(err, NoRoute):
                    start = inj.env.now
                    inj.waiting[(src, dst)] = inj.waiting.get((src, dst), 0) + 1
                    yield inj.link_restored()
                    inj.waiting[(src, dst)] -= 1
                    if fault is not None:
                        fault.time_lost_s += inj.env.now - start


class FaultInjector:
    """Schedules a run's faults and keeps their records. Build it after the policy, then `start()`."""

    def __init__(self, sim):
        self.sim = sim
        self.ctx = ctx = sim.ctx
        self.env = ctx.env
        self.cfg = ctx.config.faults
        self.policy = sim.policy
        self.network = ctx.network
        self.records: list[FaultRecord] = []
        self.down_workers: dict[int, FaultRecord] = {}
        self.down_servers: set[int] = set()
        self.down_links: dict[str, FaultRecord] = {}  # "a-b" (as configured) -> its record
        self.waiting: dict[tuple[str, str], int] = {}  # messages waiting for a route, by (src, dst)
        self._restored = self.env.event()
        self.policy.recovery = self
        if self._has_link_faults():
            if ctx.servers is not None:
                ctx.servers.network = RetryingNetwork(self, self.network)
            self._defuse_failed_flows()

    # -- configuration ----------------------------------------------------------------------------
    def _has_link_faults(self) -> bool:
        if self.cfg.model == "scheduled":
            return any(e.kind.startswith("link_") for e in self.cfg.events)
        return self.cfg.model == "mtbf" and self.cfg.link_mtbf_s is not None

    def _physical_links(self) -> list[tuple[str, str]]:
        seen, out = set(), []
        for link in self.network.topology.links:
            pair = tuple(sorted((link.src, link.dst)))
            if pair not in seen:
                seen.add(pair)
                out.append((link.src, link.dst))
        return out

    def check_targets(self) -> None:
        """Links named in scheduled events must exist (known only once the topology is built)."""
        if self.cfg.model != "scheduled":
            return
        for i, e in enumerate(self.cfg.events):
            if not e.kind.startswith("link_"):
                continue
            a, b = str(e.target).split("-")
            try:
                self.network.topology.link(a, b)
            except KeyError:
                pairs = ", ".join(f"{x}-{y}" for x, y in self._physical_links()[:12])
                raise ConfigError(f"faults.events[{i}].target={e.target!r} is invalid: no link joins {a} and {b} "
                                  f"in this topology (links: {pairs}, ...)") from None

    # -- running ----------------------------------------------------------------------------------
    def start(self) -> None:
        if self.cfg.model == "scheduled":
            for e in sorted(self.cfg.events, key=lambda e: e.at_s):
                self.env.process(self._scheduled(e))
        elif self.cfg.model == "mtbf":
            streams = self.sim.streams
            if self.cfg.worker_mtbf_s is not None:
                self.env.process(self._poisson(streams.generator("faults/worker"), self.cfg.worker_mtbf_s,
                                               "worker_crash", [str(i) for i in range(self.policy.n)],
                                               self.cfg.worker_repair_s))
            if self.cfg.link_mtbf_s is not None:
                self.env.process(self._poisson(streams.generator("faults/link"), self.cfg.link_mtbf_s, "link_down",
                                               [f"{a}-{b}" for a, b in self._physical_links()],
                                               self.cfg.link_repair_s))
            if self.cfg.server_mtbf_s is not None:
                self.env.process(self._poisson(streams.generator("faults/server"), self.cfg.server_mtbf_s,
                                               "server_crash", [str(i) for i in range(self.ctx.config.cluster.servers)],
                                               None))

    def _scheduled(self, e: FaultEvent):
        yield self.env.timeout(e.at_s)
        self.inject(e.kind, str(e.target), e.for_s, e.fraction)

    def _poisson(self, rng, mtbf: float, kind: str, targets: list[str], repair: float | None):
        while True:
            yield self.env.timeout(float(rng.exponential(mtbf)))
            self.inject(kind, targets[int(rng.integers(len(targets)))], repair, None)

    def inject(self, kind: str, target: str, for_s: float | None, fraction: float | None) -> None:
        if self.ctx.progress.done.triggered:
            return
        if kind == "worker_crash":
            i = int(target)
            if i in self.down_workers:
                return  # already down: the fault has nothing to break
            rec = FaultRecord(self.env.now, f"worker {i}", kind)
            self.records.append(rec)
            self.down_workers[i] = rec
            self.policy.crash_worker(i, rec)
            if for_s is not None:
                self.env.process(self._later(for_s, lambda: self._restart(i)))
        elif kind == "server_crash":
            i = int(target)
            if i in self.down_servers or len(self.down_servers) + 1 >= self.ctx.config.cluster.servers:
                return  # already down, or the last live server (it must stay up to take the key ranges)
            rec = FaultRecord(self.env.now, f"server {i}", kind)
            self.records.append(rec)
            self.down_servers.add(i)
            self.policy.crash_server(i, rec)
            rec.recovered_at_s = self.env.now  # its ranges are handed to the next live server at once
        else:
            if target in self.down_links:
                return
            a, b = target.split("-")
            rec = FaultRecord(self.env.now, f"link {target}", kind)
            self.records.append(rec)
            self.down_links[target] = rec
            if kind == "link_down":
                self.network.fail_link(a, b)
            else:
                nominal = self.network.topology.link(a, b).nominal_capacity
                self.network.set_link_capacity(a, b, nominal * fraction)
            if for_s is not None:
                self.env.process(self._later(for_s, lambda: self._restore(target)))

    def _later(self, delay: float, action):
        yield self.env.timeout(delay)
        if not self.ctx.progress.done.triggered:
            action()

    def _restart(self, i: int) -> None:
        rec = self.down_workers.pop(i)
        rec.recovered_at_s = self.env.now
        self.policy.restart_worker(i)

    def _restore(self, target: str) -> None:
        rec = self.down_links.pop(target)
        rec.recovered_at_s = self.env.now
        a, b = target.split("-")
        self.network.restore_link(a, b)
        restored, self._restored = self._restored, self.env.event()
        restored.succeed()

    def link_restored(self) -> simpy.Event:
        """An event that fires when the next link comes back (never, if none is down with a restore)."""
        return self._restored

    def link_fault_for(self, err: Exception) -> FaultRecord | None:
        """The link fault a network error is due to: the down link it names, else the latest one down."""
        link = getattr(err, "link", None)
        if link is not None:
            a, _, b = link.partition("->")
            for key in (f"{a}-{b}", f"{b}-{a}"):
                if key in self.down_links:
                    return self.down_links[key]
        return list(self.down_links.values())[-1] if self.down_links else None

    def _defuse_failed_flows(self) -> None:
        """A flow a link failure ends fails its event; whoever waits on it still gets the error, but a
        failed flow nobody waits on any more (its step was abandoned) must not stop the run."""
        network, fail = self.network, self.network._fail

        def fail_defused(flow, error):
            fail(flow, error)
            flow.done.defused = True

        network._fail = fail_defused

    # -- results ----------------------------------------------------------------------------------
    def finish(self, end: float) -> None:
        """At the end of the run: time lost by faults never recovered counts up to the end."""
        for rec in self.records:
            if rec.kind == "worker_crash" and not getattr(self.policy, "lockstep", False):
                until = rec.recovered_at_s if not math.isnan(rec.recovered_at_s) else end
                rec.time_lost_s = until - rec.time_s
        lost = getattr(self.policy, "updates_lost_by", {})
        for rec in self.records:
            rec.updates_lost = lost.get(id(rec), 0)
        self.ctx.recorder.faults = self.records

    def diagnosis(self) -> str | None:
        """Why a stalled run could not go on: what is down for good and what the others wait for."""
        parts = []
        for i, rec in sorted(self.down_workers.items()):
            parts.append(f"worker {i} crashed at t={rec.time_s:.6g} s and never restarts")
        for target, rec in self.down_links.items():
            parts.append(f"link {target} went down at t={rec.time_s:.6g} s and is never restored")
        for (src, dst), k in sorted(self.waiting.items()):
            if k > 0:
                parts.append(f"{k} message(s) from {src} to {dst} wait for a route")
        waiting = self.policy.waiting_for()
        if waiting:
            parts.append(waiting)
        return "; ".join(parts) or None
