"""A data-parallel worker: a device on a host that turns a parameter version into a gradient."""

from __future__ import annotations

import math
from dataclasses import dataclass

from pssim.cluster.device import Device
from pssim.cluster.stragglers import Straggler

NAN = math.nan


@dataclass
class StepRecord:
    """One worker step, filled in as it happens; one row of the steps table."""

    worker: int
    step: int
    version: int
    staleness: int = 0
    compute_start: float = NAN
    compute_end: float = NAN
    comm_start: float = NAN
    push_end: float = NAN
    comm_end: float = NAN
    bytes_sent: int = 0
    bytes_received: int = 0


class Worker:
    """Computes real gradients, taking the simulated time its device (and straggler draw) dictates.

    `current` is the record of the step in progress; the communication primitives add their times
    and bytes to it, and `finish_step` appends it to the run's steps table.
    """

    def __init__(self, sim, index: int, host: str, device: Device, straggler: Straggler):
        self.sim = sim
        self.env = sim.env
        self.index = index
        self.host = host
        self.device = device
        self.straggler = straggler
        self.current: StepRecord | None = None
        self._ideal_s = device.step_time(sim.workload.batch_flops(), sim.config.cluster.precision)

    def begin_step(self, step: int, version: int) -> StepRecord:
        """Open the record of a step whose compute starts now."""
        self.current = StepRecord(self.index, step, version, compute_start=self.env.now)
        return self.current

    def step_duration(self) -> float:
        """This step's compute time: the device's time for the batch, slowed by the straggler draw."""
        return self.straggler(self._ideal_s)

    def gradient(self, params, step: int):
        """The real gradient of batch `step` at exactly `params` (None in timing-only runs)."""
        return None if params is None else self.sim.workload.gradient(params, self.index, step)

    def compute(self, params, step: int, version: int):
        """Spend this step's compute time, then return the gradient of batch `step` at `params`."""
        rec = self.begin_step(step, version)
        yield self.env.timeout(self.step_duration())
        rec.compute_end = self.env.now
        return self.gradient(params, step)

    def finish_step(self, staleness: int = 0) -> None:
        rec = self.current
        rec.staleness = staleness
        rec.comm_end = self.env.now
        if math.isnan(rec.comm_start):
            rec.comm_start = rec.compute_end
        self.sim.steps.append(rec)
