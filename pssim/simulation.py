"""Assembles one run from a Config: clock, network, servers, workers, workload and policy, then runs it."""

from __future__ import annotations

import time

import simpy
import torch
from tqdm import tqdm

from pssim.cluster.device import DEVICES
from pssim.cluster.stragglers import make_stragglers
from pssim.cluster.worker import StepRecord, Worker
from pssim.cluster.layout import Layout
from pssim.comm.ps import ParameterServers, shard_ranges
from pssim.comm.server import Cpu, ServerShard
from pssim.config import Config
from pssim.network.flows import FlowNetwork
from pssim.network.transport import Transport
from pssim.policies import POLICIES
from pssim.seeding import Streams
from pssim.workload.optimizer import SGD
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
    """One run. Build it from a validated Config, call `run()`, then read its records."""

    def __init__(self, config: Config, record_params: bool = False, progress: bool | None = None):
        self.config = config
        c = config
        self.env = CountingEnvironment()
        self.streams = Streams(c.seed)
        torch.manual_seed(self.streams.torch_seed("torch/global"))
        self.workload = Workload(c.workload, c.cluster.workers, c.train.batch_size, self.streams,
                                 profile=c.profile.name)
        self.transport = Transport.from_config(c.network).bonded(c.cluster.nics_per_machine)
        policy_cls = POLICIES[c.policy.name]
        self.layout = Layout.build(c.cluster.workers, c.cluster.gpus_per_machine, c.cluster.cpu_machines,
                                   c.cluster.servers if policy_cls.uses_servers else 0)
        self.topology = self.layout.topology(c.topology, self.transport, Transport.from_config(c.intra))
        self.network = FlowNetwork(self.env, self.topology)

        numerics = c.train.numerics
        self.params = self.workload.init_params() if numerics else None  # the model being trained
        self.initial_params = self.params.clone() if numerics else None
        self.optimizer = SGD(c.train.lr, c.train.momentum, c.train.weight_decay)
        self._momentum = torch.zeros_like(self.params) if numerics else None  # replicated-model policies
        self.cpus: list[Cpu] = []  # every server CPU, for the trace
        self.ps = self._parameter_servers() if policy_cls.uses_servers else None

        devices = list(c.cluster.worker_devices) or [c.cluster.device] * c.cluster.workers
        stragglers = make_stragglers(c.stragglers, c.cluster.workers, self.streams)
        self.workers = [Worker(self, i, host, DEVICES[devices[i]], stragglers[i])
                        for i, host in enumerate(self.layout.gpus)]
        self.policy = policy_cls(self)

        self.steps: list[StepRecord] = []
        self.evals: list[tuple[int, float, float, float]] = []
        self.param_history: list[torch.Tensor] | None = [] if record_params and numerics else None
        self.global_step = 0
        self.trace_until = float("inf")  # simulated time the trace stops covering
        self.network.record = c.output.trace
        self.sim_time = 0.0
        self.wall_s = 0.0
        self._done = self.env.event()
        show = c.output.progress if progress is None else progress
        self._bar = tqdm(total=c.train.steps, unit="step", desc=c.policy.name, delay=2.0,
                         disable=not show, leave=False)

    def run(self) -> "Simulation":
        # The models are small: one intra-op thread is fastest (a second one spins against the
        # simulator for the core) and keeps the numerics independent of the machine's core count.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            start = time.perf_counter()
            self._evaluate()
            if self.param_history is not None:
                self.param_history.append(self.params.clone())
            self.policy.start()
            self.env.run(until=self._done)
            self.sim_time = self.env.now
            if self.evals and self.evals[-1][0] != self.global_step:
                self._evaluate()
            self.wall_s = time.perf_counter() - start
        finally:
            torch.set_num_threads(threads)
            self._bar.close()
        return self

    def _parameter_servers(self) -> ParameterServers:
        """cluster.servers shards on their own hosts, each owning an equal byte range of the model."""
        c = self.config
        shards = []
        ranges = shard_ranges(self.workload.n_params, c.cluster.servers)
        for j, (host, (lo, hi)) in enumerate(zip(self.layout.servers, ranges)):
            shards.append(ServerShard(self.env, j, host, lo, hi, self.workload.wire_bytes(lo, hi),
                                      self.params, self.optimizer))
        self.cpus += [s.cpu for s in shards]
        transport_cpu = self.transport.cpu_s_per_byte
        return ParameterServers(
            self.env, self.network, shards,
            receive_cpu_s_per_byte=transport_cpu + c.cluster.aggregation_ns_per_byte * 1e-9,
            send_cpu_s_per_byte=transport_cpu,
            on_version=lambda: self.progress(min(s.version for s in shards)))

    def apply_update(self, grad: torch.Tensor | None) -> None:
        """One optimizer step on the replicated model (policies whose workers run the optimizer)."""
        if self.params is not None and grad is not None:
            self.optimizer.step(self.params, grad, self._momentum)

    def progress(self, step: int) -> None:
        """The global step reached `step`: evaluate on schedule and stop the clock at train.steps."""
        if step <= self.global_step or self._done.triggered:
            return
        self._bar.update(step - self.global_step)
        self.global_step = step
        if self.network.record and step >= self.config.output.trace_steps > 0:
            self.trace_until = self.env.now  # stop keeping flows: a long run's trace would not fit
            self.network.record = False
        if self.param_history is not None:
            self.param_history.append(self.params.clone())
        if step % self.config.eval.every == 0:
            self._evaluate()
        if step >= self.config.train.steps:
            self._done.succeed()

    def _evaluate(self) -> None:
        if self.params is None:
            return
        loss, accuracy = self.workload.evaluate(self.params)
        self.evals.append((self.global_step, self.env.now, loss, accuracy))
