"""A data-parallel worker: a device on a host that turns a parameter version into a gradient."""

from __future__ import annotations

import math
from dataclasses import dataclass

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


class Worker:
    """Computes real gradients, taking the simulated time its device (and straggler draw) dictates.

    `current` is the record of the step in progress; the communication primitives add their times
    and bytes to it, and `finish_step` appends it to the run's steps table. `delivered` counts the
    servers that have received the current step's gradient: a step whose gradient reached the
    servers has a row even if the run stops before its communication ends.
    """

    def __init__(self, ctx, index: int, host: str, device: Device, straggler: Straggler):
        self.env = ctx.env
        self.workload = ctx.workload
        self.recorder = ctx.recorder
        self.index = index
        self.host = host
        self.device = device
        self.straggler = straggler
        self.current: StepRecord | None = None
        self.delivered = 0
        self._ideal_s = device.step_time(ctx.workload.batch_flops(), ctx.config.cluster.precision)

    def begin_step(self, step: int, version: int, clock_lead: int = 0) -> StepRecord:
        """Open the record of a step whose compute starts now."""
        self.current = StepRecord(self.index, step, version, clock_lead=clock_lead, compute_start=self.env.now)
        self.delivered = 0
        return self.current

    def step_duration(self) -> float:
        """This step's compute time: the device's time for the batch, slowed by the straggler draw."""
        return self.straggler(self._ideal_s)

    def gradient(self, params, step: int):
        """The real gradient of batch `step` at exactly `params` (None in timing-only runs)."""
        return None if params is None else self.workload.gradient(params, self.index, step)

    def compute(self, params, step: int, version: int, clock_lead: int = 0):
        """Spend this step's compute time, then return the gradient of batch `step` at `params`."""
        rec = self.begin_step(step, version, clock_lead)
        yield self.env.timeout(self.step_duration())
        rec.compute_end = self.env.now
        return self.gradient(params, step)

    def finish_step(self) -> None:
        """Close the current step: its communication ended now."""
        rec = self.current
        rec.comm_end = self.env.now
        if math.isnan(rec.comm_start):
            rec.comm_start = rec.compute_end
        self.recorder.steps.append(rec)
        self.current = None

    def flush(self) -> None:
        """At the end of the run: keep the unfinished step if its gradient reached any server."""
        if self.current is not None and self.delivered > 0:
            self.recorder.steps.append(self.current)
            self.current = None
