"""A data-parallel worker: a replica on one or more GPUs (its pipeline stages) that turns a parameter
version into a gradient."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from pssim.cluster.compute import StepCompute, step_compute
from pssim.cluster.device import Device
from pssim.cluster.stragglers import Straggler

NAN = math.nan


@dataclass
class StepRecord:
    """One worker step, filled in as it happens; one row of the steps table (docs/OUTPUTS.md)."""

    worker: int
    step: int
    version: int
    # Updates the servers had applied since `version` when they applied this gradient.
    staleness: int = 0
    # Clocks this worker was ahead of the slowest worker when the step began (SSP bounds it by s).
    clock_lead: int = 0
    compute_start: float = NAN
    compute_end: float = NAN
    comm_start: float = NAN
    push_end: float = NAN
    comm_end: float = NAN  # NaN: the run stopped while this step was still communicating
    bytes_sent: int = 0
    bytes_received: int = 0


@dataclass(frozen=True)
class Stage:
    """One pipeline stage of a worker: a GPU (its node and device) running a range of profile layers.

    `compute_s` is its ideal share of a step: the device's fixed overhead plus its layers' times for
    the whole batch under `cluster.compute` (pssim/cluster/compute.py; `ideal`: the stage's training
    FLOPs, 6 per forward MAC, at the device's flat effective rate); forward takes a third of it and
    backward two thirds, as `Profile.backward_ready` assumes. `activation_bytes` is what it sends the
    next stage per step: the batch's output activations of its last layer.
    """

    index: int
    host: str
    device: Device
    layers: range  # profile layer indices
    compute_s: float
    activation_bytes: float


class Worker:
    """Computes real gradients, taking the simulated time its device(s) (and straggler draw) dictate.

    A worker is one data-parallel replica: `stages`, one per GPU (cluster.gpus_per_worker of them), each
    with its node, device and consecutive profile layers (`Profile.stages`, or the `layers` given).
    Every stage uses the worker's device unless `devices` gives one per stage (a virtual worker of
    heterogeneous GPUs). `host` is the first stage's node: the worker's pushes and pulls leave from there.
    It keeps its data shard (`shard`), its local parameters and their version as last pulled or
    computed on (`params`, `version`), an optimizer-state slot (`optimizer_state`, None under today's
    policies: the servers own the optimizer) and its clock (`clock`: steps it has finished).

    `current` is the record of the step in progress; the communication primitives add their times
    and bytes to it, and `finish_step` appends it to the run's steps table. `delivered` counts the
    servers that have received the current step's gradient: a step whose gradient reached the
    servers has a row even if the run stops before its communication ends.
    """

    def __init__(self, ctx, index: int, hosts: str | Sequence[str], device: Device, straggler: Straggler,
                 devices: Sequence[Device] | None = None, layers: Sequence[range] | None = None):
        """`hosts`: the nodes of the worker's stages in order (one node: a one-GPU worker); `devices` and
        `layers` (optional): each stage's GPU type and profile layers (default: `device` for every stage,
        layers cut by `Profile.stages`)."""
        hosts = (hosts,) if isinstance(hosts, str) else tuple(hosts)
        self.env = ctx.env
        self.network = ctx.network
        self.workload = ctx.workload
        self.recorder = ctx.recorder
        self.index = index
        self.host = hosts[0]
        self.device = device
        self.straggler = straggler
        self.current: StepRecord | None = None
        self.delivered = 0
        self.params = ctx.initial_params
        self.version = 0
        self.optimizer_state = None
        self.clock = 0
        cl = ctx.config.cluster
        profile, batch = ctx.workload.profile, ctx.workload.batch_size
        # Per-layer times of this worker's batch on its device (measured, model or ideal).
        def timing(d: Device) -> StepCompute:
            return step_compute(d, profile, cl.precision, batch, cl.compute, ctx.config.profile.name, cl.samples_per_s)

        self.timing: StepCompute = timing(device)
        devices = tuple(devices) if devices is not None else (device,) * len(hosts)
        layers = tuple(layers) if layers is not None else profile.stages(len(hosts))
        self.stages: tuple[Stage, ...] = tuple(
            Stage(s, host, d, ls, timing(d).stage_s(ls), batch * profile.layers[ls[-1]].activation_bytes)
            for s, (host, d, ls) in enumerate(zip(hosts, devices, layers)))
        self._ideal_s = math.fsum(st.compute_s for st in self.stages)

    @property
    def shard(self):
        """The training-set rows this worker reads (None in timing-only runs)."""
        shards = self.workload.shards
        return shards[self.index] if shards else None

    def begin_step(self, step: int, version: int, clock_lead: int = 0) -> StepRecord:
        """Open the record of a step whose compute starts now."""
        self.current = StepRecord(self.index, step, version, clock_lead=clock_lead, compute_start=self.env.now)
        self.delivered = 0
        return self.current

    def step_duration(self) -> float:
        """This step's compute time: the device's time for the batch, slowed by the straggler draw.

        The ideal time is the sum of the stages' times (one stage: the whole step; activation transfers
        not included); the draw is taken on it, once per step, as for one GPU.
        """
        return self.straggler(self._ideal_s)

    def gradient(self, params, step: int):
        """The real gradient of batch `step` at exactly `params` (None in timing-only runs)."""
        return None if params is None else self.workload.gradient(params, self.index, step)

    def compute(self, params, step: int, version: int, clock_lead: int = 0):
        """Spend this step's compute time, then return the gradient of batch `step` at `params`.

        One stage: one timeout of `step_duration()`. Several: forward through the stages, then backward
        in reverse. Stage s computes forward for a third of its time and backward for two thirds, each
        scaled by the step's straggler factor (the draw over the ideal time: a straggling replica is
        uniformly slow on every stage); between stages s and s+1 the batch's activations of stage s's
        last layer travel forward as a flow on the network, and the same bytes of their gradient travel
        back during backward. The gradient itself (the math) does not depend on the stages.
        """
        rec = self.begin_step(step, version, clock_lead)
        self.params, self.version = params, version
        if len(self.stages) == 1:
            yield self.env.timeout(self.step_duration())
        else:
            yield from self._pipeline(self.step_duration() / self._ideal_s)
        rec.compute_end = self.env.now
        return self.gradient(params, step)

    def _pipeline(self, factor: float):
        """Forward then backward through the stages, activations and their gradients as flows."""
        stages, send = self.stages, self.network.send
        for st, nxt in zip(stages, stages[1:] + (None,)):
            yield self.env.timeout(st.compute_s * factor / 3)
            if nxt is not None:
                yield send(st.host, nxt.host, st.activation_bytes, f"act w{self.index}.s{st.index}")
        for st, prev in zip(reversed(stages), (*reversed(stages[:-1]), None)):
            yield self.env.timeout(st.compute_s * factor * 2 / 3)
            if prev is not None:
                yield send(st.host, prev.host, prev.activation_bytes, f"act-grad w{self.index}.s{st.index}")

    def finish_step(self) -> None:
        """Close the current step: its communication ended now."""
        rec = self.current
        rec.comm_end = self.env.now
        if math.isnan(rec.comm_start):
            rec.comm_start = rec.compute_end
        self.recorder.steps.append(rec)
        self.current = None
        self.clock += 1

    def flush(self) -> None:
        """At the end of the run: keep the unfinished step if its gradient reached any server."""
        if self.current is not None and self.delivered > 0:
            self.recorder.steps.append(self.current)
            self.current = None
