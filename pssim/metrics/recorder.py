"""The run's records as they happen: worker steps, evaluations, the CPUs shown in the trace."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Recorder:
    """Flat records appended during the run; tables.py turns them into DataFrames once, at the end.

    `trace_until` is the simulated time the trace stops covering (the first output.trace_steps steps).
    """

    steps: list = field(default_factory=list)  # StepRecord, one per worker step
    evals: list[tuple[int, float, float, float]] = field(default_factory=list)  # (step, time, loss, acc)
    cpus: list = field(default_factory=list)  # every server CPU, a track per core in use in the trace
    trace_until: float = float("inf")
    target: tuple[int, float] | None = None  # (global step, simulated time) train.target_loss was first reached

    def add_cpus(self, cpus) -> None:
        self.cpus += list(cpus)
