"""Assembles one run from a Config: clock, network, servers, workers, workload and policy, then runs it."""

from __future__ import annotations

import time

import simpy
import torch
from tqdm import tqdm

from pssim.cluster.device import DEVICES
from pssim.cluster.layout import Layout
from pssim.cluster.stragglers import make_stragglers
from pssim.cluster.worker import Worker
from pssim.comm.ps import ParameterServers, shard_keys, shard_ranges
from pssim.comm.server import ServerShard
from pssim.config import Config, require
from pssim.context import Cluster, Progress, RunContext
from pssim.metrics.recorder import Recorder
from pssim.network.flows import FlowNetwork
from pssim.network.transport import Transport
from pssim.policies import POLICIES
from pssim.seeding import Streams
from pssim.workload.optimizer import SGD
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
        layout = Layout.build(c.cluster.workers, c.cluster.gpus_per_machine, c.cluster.cpu_machines,
                              c.cluster.servers if policy_cls.uses_servers else 0, gpus_per_worker=k)
        cluster = Cluster(layout, Transport.from_config(c.network).bonded(c.cluster.nics_per_machine),
                          Transport.from_config(c.intra))
        self.topology = layout.topology(c.topology, cluster.nic, cluster.intra)
        network = FlowNetwork(env, self.topology)
        network.record = c.output.trace

        model = None
        if c.train.numerics:
            model = ModelState(workload.init_params(), SGD(c.train.lr, c.train.momentum, c.train.weight_decay))
        self.ctx = ctx = RunContext(env, c, network, cluster, workload, model,
                                    initial_params=model.snapshot() if model is not None else None,
                                    recorder=Recorder(), progress=Progress(env, c.train.steps))
        if policy_cls.uses_servers:
            ctx.servers = self._parameter_servers()

        devices = list(c.cluster.worker_devices) or [c.cluster.device] * c.cluster.workers
        stragglers = make_stragglers(c.stragglers, c.cluster.workers, self.streams)
        cluster.workers += [Worker(ctx, i, layout.stage_hosts(i), DEVICES[devices[i]], stragglers[i])
                            for i in range(c.cluster.workers)]
        self.policy = policy_cls(ctx)

        self.param_history: list[torch.Tensor] | None = [] if record_params and model is not None else None
        self.sim_time = 0.0
        self.wall_s = 0.0
        self.stalled = False  # the clock ran out of events before train.steps
        show = c.output.progress if progress is None else progress
        self._bar = tqdm(total=c.train.steps, unit="step", desc=c.policy.name, delay=2.0,
                         disable=not show, leave=False)
        ctx.progress.listeners += [self._on_step]

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
        start = time.perf_counter()
        ctx = self.ctx
        self._evaluate()
        if self.param_history is not None:
            self.param_history.append(self.params.clone())
        self.policy.start()
        self._run_clock()
        self.sim_time = ctx.env.now
        for w in ctx.workers:
            w.flush()
        evals = ctx.recorder.evals
        if evals and evals[-1][0] != ctx.progress.global_step:
            self._evaluate()
        self.wall_s = time.perf_counter() - start

    def _run_clock(self) -> None:
        """Run until train.steps, or until nothing is left to happen (`stalled`: e.g. a barrier waiting
        for a worker that was interrupted), which ends the run where it stands instead of raising."""
        env, done = self.ctx.env, self.ctx.progress.done
        try:
            env.run(until=done)
        except RuntimeError:
            if done.triggered or env.peek() != float("inf"):
                raise
            self.stalled = True

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
        if step % self.config.eval.every == 0:
            self._evaluate()

    def _evaluate(self) -> None:
        if self.ctx.model is None:
            return
        loss, accuracy = self.ctx.workload.evaluate(self.params)
        self.ctx.recorder.evals.append((self.ctx.progress.global_step, self.ctx.env.now, loss, accuracy))
