"""Assembles one run from a Config: clock, network, servers, workers, workload and policy, then runs it."""

from __future__ import annotations

import gc
import math
import sys
import time
from contextlib import contextmanager

import simpy
import torch
from tqdm import tqdm

from pssim.cluster.device import DEVICES
from pssim.cluster.layout import Layout, pcie_link
from pssim.cluster.stragglers import make_stragglers
from pssim.cluster.worker import Worker
from pssim.comm.ps import ParameterServers, shard_keys, shard_ranges
from pssim.comm.server import ServerShard
from pssim.config import Config, require
from pssim.context import Cluster, Progress, RunContext
from pssim.faults import FaultInjector
from pssim.metrics.recorder import Recorder
from pssim.metrics.summary import seconds
from pssim.network.flows import FlowNetwork
from pssim.network.transport import Transport
from pssim.policies import POLICIES
from pssim.seeding import Streams
from pssim.workload.optimizer import make_optimizer
from pssim.workload.state import ModelState
from pssim.workload.workload import Workload


class CountingEnvironment(simpy.Environment):
    """A SimPy environment that counts the events it processes (reported as `events`)."""

    def __init__(self):
        super().__init__()
        self.events = 0

    def step(self) -> None:
        self.events += 1
        super().step()


class Simulation:
    """One run. Build it from a validated Config, call `run()`, then read `ctx` and its records."""

    def __init__(self, config: Config, record_params: bool = False, progress: bool | None = None):
        self.config = c = config
        env = CountingEnvironment()
        self.streams = Streams(c.seed)
        workload = Workload(c.workload, c.cluster.workers, c.train.batch_size, self.streams,
                            profile=c.profile.name, numerics=c.train.numerics)
        policy_cls = POLICIES[c.policy.name]
        k, layers = c.cluster.gpus_per_worker, len(workload.profile.layers)
        require(k <= layers, "cluster.gpus_per_worker", k,
                f"must be <= the timing profile's {layers} layers (each stage holds at least one)")
        gpu_devices = self.gpu_devices(c)
        # Which GPUs form each worker, and its stages' layers (None: consecutive GPUs, stages by MACs).
        placement = policy_cls.placement(c, workload.profile, gpu_devices)
        layout = Layout.build(c.cluster.workers, c.cluster.gpus_per_machine, c.cluster.cpu_machines,
                              c.cluster.servers if policy_cls.uses_servers else 0, gpus_per_worker=k,
                              assignment=placement.gpus if placement is not None else None)
        # network.fabric_share_beta: a shared cloud fabric's per-VM share falls with the job's GPU machines
        # (Transport.fabric_share; 0: this NIC, unchanged). Every NIC of the run gets it, server machines' too.
        nic = Transport.from_config(c.network).bonded(c.cluster.nics_per_machine)
        nic = nic.fabric_share(len(layout.machines), c.network.fabric_share_beta)
        cluster = Cluster(layout, nic, Transport.from_config(c.intra))
        self.topology = layout.topology(c.topology, cluster.nic, cluster.intra, pcie_link(c.intra))
        network = FlowNetwork(env, self.topology)
        network.record = c.output.trace

        model = None
        if c.train.numerics:
            model = ModelState(workload.init_params(), make_optimizer(c.train), warmup_steps=c.train.warmup_steps)
        self.ctx = ctx = RunContext(env, c, network, cluster, workload, model,
                                    initial_params=model.snapshot() if model is not None else None,
                                    recorder=Recorder(), progress=Progress(env, c.train.steps))
        if policy_cls.uses_servers:
            ctx.servers = self._parameter_servers()

        stragglers = make_stragglers(c.stragglers, c.cluster.workers, self.streams)
        for i in range(c.cluster.workers):
            devices = [DEVICES[gpu_devices[g]] for g in layout.worker_gpus(i)]
            cluster.workers.append(Worker(ctx, i, layout.stage_hosts(i), devices[0], stragglers[i], devices=devices,
                                          layers=placement.layers[i] if placement is not None else None))
        self.policy = policy_cls(ctx)
        # A global step folds gradients_per_update batches (BSP: n, ASP: 1): the budget in samples.
        self.samples_per_step = self.policy.gradients_per_update * c.train.batch_size
        if c.train.samples is not None:
            ctx.progress.steps = math.ceil(c.train.samples / self.samples_per_step)

        # Faults (faults=none: no injector, nothing changes).
        self.faults: FaultInjector | None = None
        if c.faults.model != "none":
            self.faults = FaultInjector(self)
            self.faults.check_targets()
        self.diagnosis: str | None = None

        self.param_history: list[torch.Tensor] | None = [] if record_params and model is not None else None
        self.sim_time = 0.0
        self.wall_s = 0.0
        # How the run ended: completed (train.steps reached), stalled (nothing left to happen before
        # train.steps), diverged (parameters or loss not finite; `diverged_at` is the global step) or
        # interrupted (Ctrl-C).
        self.status = "completed"
        self.diverged_at: int | None = None
        show = c.output.progress if progress is None else progress
        self._bar = tqdm(total=ctx.progress.steps, unit="step", desc=c.policy.name, delay=2.0,
                         disable=not show, leave=False)
        ctx.progress.listeners += [self._on_step]
        if show:
            ctx.progress.listeners += [self._warn_if_heavy]
        self._wall_start = time.perf_counter()
        self._warned = set()

    @staticmethod
    def gpu_devices(c: Config) -> list[str]:
        """Each GPU's device name: cluster.gpu_devices, else each worker's (cluster.worker_devices, else
        cluster.device) for all of its GPUs."""
        if c.cluster.gpu_devices:
            return list(c.cluster.gpu_devices)
        per_worker = list(c.cluster.worker_devices) or [c.cluster.device] * c.cluster.workers
        return [d for d in per_worker for _ in range(c.cluster.gpus_per_worker)]

    @property
    def env(self):
        return self.ctx.env

    @property
    def network(self):
        return self.ctx.network

    @property
    def params(self):
        return self.ctx.model.params if self.ctx.model is not None else None

    def run(self) -> "Simulation":
        # The models are small: one intra-op thread is fastest (a second one spins against the
        # simulator for the core) and keeps the numerics independent of the machine's core count.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.random.fork_rng(devices=[]):  # leave the caller's global torch RNG as it was
                torch.manual_seed(self.streams.torch_seed("torch/global"))
                self._run()
        finally:
            torch.set_num_threads(threads)
            self._bar.close()
        return self

    def _run(self) -> None:
        start = self._wall_start = time.perf_counter()
        ctx = self.ctx
        self._evaluate()
        if self.param_history is not None:
            self.param_history.append(self.params.clone())
        self.policy.start()
        if self.faults is not None:
            self.faults.start()
        self._record_cpus()
        self._run_clock()
        self.sim_time = ctx.env.now
        if self.faults is not None:
            self.faults.finish(self.sim_time)
            if self.stalled:
                self.diagnosis = self.faults.diagnosis()
        elif self.stalled:
            self.diagnosis = self.policy.waiting_for() or None
        for w in ctx.workers:
            w.flush()
        evals = ctx.recorder.evals
        if evals and evals[-1][0] != ctx.progress.global_step:
            self._evaluate()
        self.wall_s = time.perf_counter() - start

    @property
    def stalled(self) -> bool:
        return self.status == "stalled"

    def _run_clock(self) -> None:
        """Run until train.steps, or until nothing is left to happen (`stalled`: e.g. a barrier waiting
        for a worker that was interrupted), which ends the run where it stands instead of raising;
        Ctrl-C ends it too (`interrupted`), with the records so far kept."""
        env, done = self.ctx.env, self.ctx.progress.done
        try:
            with _quiet_gc():
                env.run(until=done)
        except KeyboardInterrupt:
            self.status = "interrupted"
        except RuntimeError:
            if done.triggered or env.peek() != float("inf"):
                raise
            self.status = "stalled"

    def _record_cpus(self) -> None:
        """Server CPUs log their busy spans only for the trace: with the trace off they log none, and
        they stop with the network once the trace window has passed, so memory stays flat in steps."""
        ctx = self.ctx
        recording = [cpu for cpu in ctx.recorder.cpus if cpu.record]

        def follow_network(old: int = 0, step: int = 0) -> None:
            if recording and not ctx.network.record:
                for cpu in recording:
                    cpu.record = False
                recording.clear()

        follow_network()
        ctx.progress.listeners.append(follow_network)

    def _parameter_servers(self) -> ParameterServers:
        """cluster.servers shards on their own hosts, each owning an equal byte range of the model; its
        keys are the pieces of the profile's layers in that range (`shard_keys`)."""
        c, ctx = self.config, self.ctx
        shards = []
        ranges = shard_ranges(ctx.workload.n_params, c.cluster.servers)
        keys = shard_keys(ctx.workload.profile, ranges, ctx.workload.n_params)
        for j, (host, (lo, hi)) in enumerate(zip(ctx.cluster.layout.servers, ranges)):
            state = ctx.model.slice(lo, hi) if ctx.model is not None else None
            shards.append(ServerShard(ctx.env, j, host, lo, hi, ctx.workload.wire_bytes(lo, hi), state))
        ctx.recorder.add_cpus(s.cpu for s in shards)
        transport_cpu = ctx.cluster.nic.cpu_s_per_byte
        return ParameterServers(
            ctx.env, ctx.network, shards,
            receive_cpu_s_per_byte=transport_cpu + c.cluster.aggregation_ns_per_byte * 1e-9,
            send_cpu_s_per_byte=transport_cpu,
            on_version=lambda: ctx.progress.advance(min(s.version for s in shards)),
            keys={s.index: keys[s.index] for s in shards})

    def _on_step(self, old: int, step: int) -> None:
        """After every global step: progress bar, trace window, parameter history, evaluation."""
        ctx = self.ctx
        self._bar.update(step - old)
        if ctx.network.record and step >= self.config.output.trace_steps > 0:
            ctx.recorder.trace_until = ctx.env.now  # stop keeping flows: a long run's trace would not fit
            ctx.network.record = False
        if self.param_history is not None:
            self.param_history.append(self.params.clone())
        if self.params is not None and not torch.isfinite(self.params).all():
            self._diverged(step)
            return
        due = self._eval_due(old, step)
        if due or self._watching_target():
            self._evaluate(record=due)

    def _diverged(self, step: int) -> None:
        """The parameters (or the held-out loss) stopped being finite at `step`: the run ends there."""
        if self.diverged_at is None:
            self.status, self.diverged_at = "diverged", step
            self.ctx.progress.stop()

    def _warn_if_heavy(self, old: int, step: int) -> None:
        """Early in a run shown to a user, warn once if it will take long or write a large trace
        (the wall clock is read for this message only, never for simulated time)."""
        elapsed, total = time.perf_counter() - self._wall_start, self.ctx.progress.steps
        if "long" not in self._warned and (elapsed >= 1.0 or step >= 0.05 * total):
            self._warned.add("long")
            projected = elapsed / step * total
            if projected > 60:
                self._bar.write(f"pssim: this run will take about {projected / 60:.0f} min of wall time "
                                f"({total:,} steps at {seconds(elapsed / step)} each); fewer train.steps, or "
                                "train.numerics=false, make it shorter", file=sys.stderr)
        window = self.config.output.trace_steps or total
        if "trace" not in self._warned and self.ctx.network.record and step >= 1:
            self._warned.add("trace")
            records = sum(len(f.links) for f in self.ctx.network.completed) + len(self.ctx.recorder.steps) + sum(
                len(cpu.busy) for cpu in self.ctx.recorder.cpus) + len(self.ctx.network.rate_log)
            megabytes = records * 160 / step * min(window, total) / 1e6  # ~160 bytes per trace event
            if megabytes > 50:
                self._bar.write(f"pssim: trace.json will be about {megabytes:,.0f} MB ({min(window, total)} steps "
                                "traced); output.trace_steps=2 or output.trace=false make it smaller", file=sys.stderr)

    def _eval_due(self, old: int, step: int) -> bool:
        """An evaluation is due every eval.every global steps, or every eval.every_samples samples."""
        every_samples = self.config.eval.every_samples
        if every_samples is None:
            return step // self.config.eval.every > old // self.config.eval.every
        return step * self.samples_per_step // every_samples > old * self.samples_per_step // every_samples

    def _watching_target(self) -> bool:
        """Until train.target_loss is reached, the held-out loss is checked after every global step, so
        time_to_target_s is the exact simulated time of the step that crossed it (not the next scheduled
        evaluation's); that step gets a row in the evals table."""
        return self.config.train.target_loss is not None and self.ctx.recorder.target is None

    def _evaluate(self, record: bool = True) -> None:
        """Evaluate the held-out set now; keep the row if `record` or if it first reached the target."""
        if self.ctx.model is None:
            return
        loss, accuracy = self.ctx.workload.evaluate(self.params)
        recorder, step, now = self.ctx.recorder, self.ctx.progress.global_step, self.ctx.env.now
        if not math.isfinite(loss):
            self._diverged(step)
            return
        target = self.config.train.target_loss
        crossed = target is not None and recorder.target is None and loss <= target
        if crossed:
            recorder.target = (step, now)
        if (record or crossed) and (not recorder.evals or recorder.evals[-1][0] != step):
            recorder.evals.append((step, now, loss, accuracy))


GC_GEN0_THRESHOLD = 50_000  # allocations between young collections during the event loop (Python's default: 700)


@contextmanager
def _quiet_gc():
    """While the event loop runs: everything built before it (topology, routes, model, data) is moved
    out of the collector's sight (`gc.freeze`), and young collections run every 50,000 allocations
    instead of 700. A run allocates millions of short-lived events and flows that reference counting
    frees; the cyclic collector found nothing in them but cost up to half the run at 2,048 GPUs.
    Both are restored afterwards (garbage is still collected: the thresholds are only higher)."""
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()
