"""HetPipe (Park et al., USENIX ATC'20): pipelined virtual workers and Wave Synchronous Parallel.

A virtual worker (VW) is a data-parallel worker of k = cluster.gpus_per_worker GPUs, possibly of
different types (cluster.gpu_devices), formed by an allocation policy (policy.allocation: np, ed, hd;
pssim/cluster/allocation.py). The model is cut into k consecutive stages balanced by per-layer time on
each stage's GPU type, within each GPU's memory (pssim/cluster/partition.py).

Inside a VW (pipelined model parallelism): Nm = policy.minibatches minibatches are in flight; minibatch
p enters the pipeline once minibatch p - Nm has left it. Each stage's GPU runs the forward (a third of
the stage's time) and backward (two thirds) of one minibatch at a time, backward first when both wait
(as PipeDream's one-forward-one-backward); a minibatch's activations go to the next stage, and their
gradient back, as flows on the intra-node or network links. Local staleness s_local = Nm - 1.

Wave Synchronous Parallel: wave c is minibatches c*Nm .. c*Nm + Nm - 1 (s_local + 1 of them). When a
wave's last minibatch is done, the VW pushes the wave's summed gradient (each stage its own layers'
bytes, from its own GPU) and its clock advances. At a wave's start the VW pulls the global weights,
each stage its own layers, once every shard holds every VW's waves below c - D (D =
policy.max_wave_lag): a VW runs at most D waves ahead of the slowest. Wave 0 starts from the initial
weights.

Numerics (exact, stated): the servers apply wave c once, when every VW's wave-c push has arrived: one
optimizer step (momentum, weight decay) with the mean of the n*Nm minibatch gradients (the gradient
summed, in VW order, as sync sums; policy.gradient_scale=sum applies the sum instead, each minibatch's
update at full learning rate as in the paper). Minibatch p of a VW is computed on

    the global weights it last pulled (shard j at version V_j: every VW's waves below V_j)
    + its VW's local updates -lr * scale * g_q of its own minibatches q <= p - Nm not in them,

the same weights on every stage (a consistent version through the pipeline). scale is each gradient's
weight in the global step (1 / (n Nm) under mean), so a local update is its minibatch's own share of
the global step it will be part of; local updates have no momentum or weight decay. Hence with D = 0,
Nm = 1 and one GPU per VW this is sync (BSP) exactly.

Staleness bound (checked on the steps table by tests/test_hetpipe.py): minibatch p of wave c holds
every update of its own minibatches up to p - Nm, so it misses at most s_local of its own; its pull
holds every VW's waves below c - D, so of any other VW's minibatches numbered below p it misses at most
p - (c - D) Nm <= (D + 1)(s_local + 1) - 1. Rows: one per minibatch (`step` = its number in its VW,
`version` = the oldest shard version of the weights it used, compute from when it enters the pipeline to
when its backward leaves the first stage); a wave's push is on its last minibatch's row; `staleness` =
the global clock when its wave was applied minus `version` (at most D).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import count

import simpy

from pssim.cluster.allocation import ALLOCATIONS, Placement, allocate
from pssim.cluster.compute import step_compute
from pssim.cluster.device import DEVICES
from pssim.cluster.gpu_queue import GpuQueue
from pssim.cluster.layout import Layout
from pssim.cluster.partition import NoFit, balance, stage_bytes
from pssim.cluster.worker import StepRecord
from pssim.comm.gates import MinClock
from pssim.config import ConfigError, PolicyConfig, one_of, require
from pssim.policies.base import Policy, register

BACKWARD, FORWARD = 0, 1  # a GPU's priorities: a waiting backward goes before a waiting forward


@dataclass
class HetPipeConfig(PolicyConfig):
    name: str = "hetpipe"
    # Nm: minibatches in flight in a virtual worker's pipeline; a wave is Nm minibatches (s_local = Nm - 1).
    minibatches: int = 4
    # D: a virtual worker starts wave c once every VW's waves below c - D are applied (0: waves in lockstep).
    max_wave_lag: int = 0
    # Which GPUs form a virtual worker: np (consecutive GPUs: a node per VW), ed (one GPU of each type),
    # hd (two types, fastest with slowest, half a VW each).
    allocation: str = "np"
    # A wave's global step applies the mean of the n x Nm minibatch gradients ("mean") or their sum ("sum").
    gradient_scale: str = "mean"

    def check(self, config) -> None:
        nm, d = self.minibatches, self.max_wave_lag
        require(isinstance(nm, int) and not isinstance(nm, bool) and 1 <= nm <= 1024, "policy.minibatches", nm,
                "must be an integer in [1, 1024]")
        require(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= 1_000_000, "policy.max_wave_lag", d,
                "must be an integer >= 0")
        one_of("policy.allocation", self.allocation, ALLOCATIONS)
        one_of("policy.gradient_scale", self.gradient_scale, ("mean", "sum"))
        require(config.faults.model == "none", "faults", config.faults.model,
                "policy hetpipe models no faults: allowed values are none")


@dataclass
class _Wave:
    """What a VW gathers over one wave: the summed gradient and the wave's rows, each with the versions
    (per shard) of the weights its minibatch used."""

    grad: object = None
    rows: list = field(default_factory=list)


class _VirtualWorker:
    """One VW's state: the global weights it last pulled, its local updates, the minibatches done."""

    def __init__(self, worker, params, shards: int):
        self.worker = worker
        self.held, self.versions = params, [0] * shards  # last pulled global weights, per-shard versions
        self.local: dict[int, object] = {}  # minibatch -> its local update (tensor)
        self.done: dict[int, simpy.Event] = {}  # minibatch -> fires when it leaves the pipeline
        self.waves: dict[int, _Wave] = {}


@register("hetpipe")
class HetPipe(Policy):
    """Virtual workers of k pipelined GPUs under Wave Synchronous Parallel (module docstring)."""

    Config = HetPipeConfig

    # -- before the run: virtual workers and their stages -------------------------------------------
    @classmethod
    def placement(cls, config, profile, gpu_devices: list[str]) -> Placement:
        """The allocation policy's VWs, each cut into stages balanced by time within memory."""
        cl, pc = config.cluster, config.policy
        k = cl.gpus_per_worker
        try:
            gpus = allocate(pc.allocation, gpu_devices, k, lambda d: DEVICES[d].peak_fp32)
        except ValueError as err:
            raise ConfigError(f"policy.allocation={pc.allocation!r} is invalid: {err}") from None
        names = Layout.build(cl.workers, cl.gpus_per_machine, 0, 0, k).gpus
        memory = stage_bytes([layer.params for layer in profile.layers],
                             [config.train.batch_size * layer.activation_bytes for layer in profile.layers],
                             pc.minibatches)
        cuts: dict[tuple[str, ...], tuple[range, ...]] = {}
        layers = []
        for vw in gpus:
            types = tuple(gpu_devices[g] for g in vw)
            if types not in cuts:
                devices = [DEVICES[t] for t in types]
                timing = [step_compute(d, profile, cl.precision, config.train.batch_size, cl.compute,
                                       config.profile.name, cl.samples_per_s) for d in devices]
                try:
                    cuts[types] = balance([t.layer_s for t in timing], [t.overhead_s for t in timing], memory,
                                          [d.memory_gb * 1e9 for d in devices])
                except NoFit as err:
                    gpu = vw[err.stage]
                    raise ConfigError(
                        f"policy.minibatches={pc.minibatches} is invalid: no cut of profile {profile.name} into "
                        f"{k} stages fits GPU memory: {names[gpu]} ({gpu_devices[gpu]}, "
                        f"{DEVICES[gpu_devices[gpu]].memory_gb:g} GB), stage {err.stage} of worker "
                        f"{gpus.index(vw)}, would need at least {err.need / 1e9:.3g} GB (weights, gradient and "
                        f"momentum, activations of {pc.minibatches} minibatches); fewer minibatches in flight, "
                        "a smaller train.batch_size or more cluster.gpus_per_worker") from None
            layers.append(cuts[types])
        return Placement(gpus, tuple(layers))

    @classmethod
    def steps_in_flight(cls, config) -> int:
        """Nm minibatches compute at once, and a wave's push ends before wave c + D + 1 starts."""
        return (config.policy.max_wave_lag + 1) * config.policy.minibatches

    # -- the run ---------------------------------------------------------------------------------
    def __init__(self, ctx):
        super().__init__(ctx)
        self.nm = self.cfg.minibatches  # Nm = s_local + 1 = minibatches per wave
        self.lag = self.cfg.max_wave_lag  # D
        self.gradients_per_update = self.n * self.nm
        mean = self.cfg.gradient_scale == "mean"
        self.scale = 1.0 / (self.n * self.nm) if mean else 1.0  # one minibatch gradient's weight in a step
        self.divisor = self.n * self.nm if mean else 1  # a wave's step: the sum of its gradients over this
        self.lr = ctx.config.train.lr
        self.clocks = MinClock(self.env, self.n)  # waves each VW has pushed
        self.gpus: dict[str, GpuQueue] = {}
        for w in self.workers:
            for st in w.stages:
                self.gpus.setdefault(st.host, GpuQueue(self.env))
        shards = self.servers.shards
        # stage_bytes[i][s][j]: bytes of shard j's keys in the layers of VW i's stage s (push and pull).
        self.stage_bytes = [[[self._bytes(j, st.layers) for j in range(len(shards))] for st in w.stages]
                            for w in self.workers]
        self._received: dict[tuple[int, int], list] = {}  # (shard, wave) -> per VW (grad slice, rows)
        self._arrived: dict[tuple[int, int], int] = {}  # (shard, wave) -> how many VWs have pushed it
        self.vws = [_VirtualWorker(w, ctx.initial_params, len(shards)) for w in self.workers]

    def _bytes(self, j: int, layers: range) -> float:
        """Bytes of shard j in `layers` (a shard without keys is one block, on the first stage)."""
        keys = self.servers.keys.get(j)
        if not keys:
            return self.servers.shards[j].nbytes if layers.start == 0 else 0.0
        return math.fsum(key.nbytes for key in keys if key.layer in layers)

    def worker(self, w):
        """The VW's feeder: minibatch p enters once p - Nm has left; a wave begins with the pull."""
        vw = self.vws[w.index]
        for p in count():
            wave, slot = divmod(p, self.nm)
            if p >= self.nm:
                yield vw.done.pop(p - self.nm)
            received = 0.0
            if slot == 0 and wave > 0:
                received = yield from self.pull(vw, max(0, wave - self.lag))
            params, version = self.weights(vw, p)
            rec = StepRecord(w.index, p, version, clock_lead=self.clocks.lead(w.index), compute_start=self.env.now,
                             bytes_received=received)
            done = vw.done[p] = self.env.event()
            vw.waves.setdefault(wave, _Wave()).rows.append((rec, list(vw.versions)))
            self.env.process(self.minibatch(vw, p, params, rec, done))

    def weights(self, vw: _VirtualWorker, p: int):
        """Minibatch p's weights: the pulled global weights plus the VW's own local updates of minibatches
        q <= p - Nm that the pull does not hold (shard j holds the waves below its version)."""
        if vw.held is None:
            return None, min(vw.versions)
        mine = [q for q in sorted(vw.local) if q <= p - self.nm]
        shards = self.servers.shards
        params = vw.held
        for j, shard in enumerate(shards):
            for q in mine:
                if q // self.nm >= vw.versions[j]:
                    if params is vw.held:
                        params = vw.held.clone()
                    params[shard.lo:shard.hi] += vw.local[q][shard.lo:shard.hi]
        return params, min(vw.versions)

    def minibatch(self, vw: _VirtualWorker, p: int, params, rec: StepRecord, done: simpy.Event):
        """Forward through the stages, backward in reverse, then the local update and (wave's end) the push."""
        w, send, env = vw.worker, self.ctx.network.send, self.env
        stages = w.stages
        ideal = math.fsum(st.compute_s for st in stages)
        factor = w.straggler(ideal) / ideal  # one straggler draw per minibatch, on every stage
        for s, st in enumerate(stages):
            yield self.gpus[st.host].run(FORWARD, st.compute_s * factor / 3)
            if s + 1 < len(stages):
                yield send(st.host, stages[s + 1].host, st.activation_bytes, f"act w{w.index}.s{s}")
        for s in reversed(range(len(stages))):
            st = stages[s]
            yield self.gpus[st.host].run(BACKWARD, st.compute_s * factor * 2 / 3)
            if s > 0:
                yield send(st.host, stages[s - 1].host, stages[s - 1].activation_bytes, f"act-grad w{w.index}.s{s}")
        rec.compute_end = rec.comm_start = env.now
        grad = w.gradient(params, p)
        wave = vw.waves[p // self.nm]
        if grad is not None:
            vw.local[p] = grad * (-self.lr * self.scale)
            wave.grad = grad.clone() if wave.grad is None else wave.grad.add_(grad)
        self.ctx.recorder.steps.append(rec)
        done.succeed()
        if p % self.nm == self.nm - 1:
            env.process(self.push(vw, p // self.nm, rec))
        else:
            rec.comm_end = env.now
        vw.worker.clock = p + 1

    # -- Wave Synchronous Parallel against the sharded servers ----------------------------------------
    def push(self, vw: _VirtualWorker, c: int, rec: StepRecord):
        """Wave c's summed gradient to every shard, each stage sending its layers' bytes from its GPU."""
        w = vw.worker
        wave = vw.waves.pop(c)
        procs = [self.env.process(self._push_shard(vw, c, j, wave, rec)) for j in range(len(self.servers.shards))]
        yield self.env.all_of(procs)
        rec.push_end = rec.comm_end = self.env.now
        self.clocks.tick(w.index, to=c + 1)

    def _push_shard(self, vw, c: int, j: int, wave: _Wave, rec: StepRecord):
        shard, w = self.servers.shards[j], vw.worker
        pieces = [(st.host, self.stage_bytes[w.index][s][j]) for s, st in enumerate(w.stages)]
        pieces = [(host, b) for host, b in pieces if b > 0]

        def piece(host, nbytes):
            yield self.servers.network.send(host, shard.host, nbytes, f"push w{w.index}")
            yield from shard.cpu.work(nbytes * self.servers.receive_cpu, f"recv w{w.index}")
            rec.bytes_sent += nbytes

        yield self.env.all_of([self.env.process(piece(h, b)) for h, b in pieces])
        grad = None if wave.grad is None else wave.grad[shard.lo:shard.hi]
        received = self._received.setdefault((j, c), [None] * self.n)
        received[w.index] = (grad, wave.rows)
        self._arrived[j, c] = self._arrived.get((j, c), 0) + 1
        self._apply_ready(j)

    def _apply_ready(self, j: int) -> None:
        """Shard j applies its waves in order, each once every VW's push of it has arrived."""
        shard = self.servers.shards[j]
        while True:
            c = shard.version
            if self._arrived.get((j, c), 0) < self.n:
                return
            received = self._received.pop((j, c))
            del self._arrived[j, c]
            for _, rows in received:
                for rec, versions in rows:
                    rec.staleness = max(rec.staleness, c - versions[j])
            grads = [g for g, _ in received]  # summed in VW order, as sync's mean_gradient sums
            step = None if grads[0] is None else sum(grads[1:], grads[0].clone()) / self.divisor
            self.servers.apply(shard, step)

    def pull(self, vw: _VirtualWorker, min_version: int):
        """The global weights once every shard holds the waves below min_version; each stage gets its
        layers' bytes. Returns the bytes received."""
        procs = [self.env.process(self._pull_shard(vw, j, min_version)) for j in range(len(self.servers.shards))]
        results = yield self.env.all_of(procs)
        parts = [results[p] for p in procs]
        vw.versions = [v for _, v, _ in parts]
        if parts[0][0] is not None:
            vw.held = self.ctx.initial_params.new_empty(self.ctx.initial_params.shape)
            for (snapshot, _, _), shard in zip(parts, self.servers.shards):
                vw.held[shard.lo:shard.hi] = snapshot
        floor = min(vw.versions)  # local updates of waves every shard now holds are no longer needed
        for q in [q for q in vw.local if q // self.nm < floor]:
            del vw.local[q]
        return math.fsum(b for _, _, b in parts)

    def _pull_shard(self, vw, j: int, min_version: int):
        shard, w = self.servers.shards[j], vw.worker
        yield self.servers.network.send(w.host, shard.host, 0, f"pull-req w{w.index}")
        yield shard.reached(min_version)
        yield from shard.cpu.work(shard.nbytes * self.servers.send_cpu, f"send w{w.index}")
        snapshot, version = shard.snapshot(), shard.version
        pieces = [(st.host, self.stage_bytes[w.index][s][j]) for s, st in enumerate(w.stages)]
        yield self.env.all_of([self.servers.network.send(shard.host, host, b, f"pull w{w.index}")
                               for host, b in pieces if b > 0])
        return snapshot, version, math.fsum(b for _, b in pieces)

    def waiting_for(self) -> str:
        """A stalled run's diagnosis: the waves each shard still waits for, and from which VWs."""
        waits = []
        for (j, c), received in sorted(self._received.items()):
            missing = ", ".join(str(i) for i, r in enumerate(received) if r is None)
            waits.append(f"server shard {j} waits for wave {c} from virtual worker(s) {missing}")
        return "; ".join(waits)
