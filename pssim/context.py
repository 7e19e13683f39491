"""The narrow, typed handles a run gives its workers and policies, instead of the whole Simulation.

A policy sees the clock (`env`), the network, the cluster (layout, workers, transports), the model's
state, the parameter servers (if the policy uses them), the recorder and the run's progress; nothing
else. Simulation builds one RunContext and hands it down.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import simpy

if TYPE_CHECKING:  # for annotations only: the context sits above these layers
    import torch

    from pssim.cluster.layout import Layout
    from pssim.cluster.worker import Worker
    from pssim.comm.ps import ParameterServers
    from pssim.config import Config
    from pssim.metrics.recorder import Recorder
    from pssim.network.flows import FlowNetwork
    from pssim.network.transport import Transport
    from pssim.workload.state import ModelState
    from pssim.workload.workload import Workload


class Progress:
    """The run's global step. `advance(step)` tells every listener (evaluation, trace window, progress
    bar, parameter history) and fires `done` once the step reaches `steps`."""

    def __init__(self, env: simpy.Environment, steps: int):
        self.env = env
        self.steps = steps
        self.global_step = 0
        self.done = env.event()
        self.listeners: list[Callable[[int, int], None]] = []  # f(old step, new step)

    def advance(self, step: int) -> None:
        """The global step reached `step` (ignored unless it moved forward, or after the end)."""
        if step <= self.global_step or self.done.triggered:
            return
        old, self.global_step = self.global_step, step
        for listener in self.listeners:
            listener(old, step)
        if step >= self.steps:
            self.stop()

    def stop(self) -> None:
        """End the run now (train.steps reached, or a listener found it cannot go on)."""
        if not self.done.triggered:
            self.done.succeed()


@dataclass
class Cluster:
    """Where everyone lives and what joins them: the layout, the workers and the two transports."""

    layout: "Layout"
    nic: "Transport"
    intra: "Transport"
    workers: list["Worker"] = field(default_factory=list)


@dataclass
class RunContext:
    env: simpy.Environment
    config: "Config"
    network: "FlowNetwork"
    cluster: "Cluster"
    workload: "Workload"
    model: "ModelState | None"  # the one owner of the trained parameters and their optimizer state
    initial_params: "torch.Tensor | None"  # a copy of the parameters before training (None: timing only)
    recorder: "Recorder"
    progress: Progress
    servers: "ParameterServers | None" = None

    @property
    def workers(self) -> list["Worker"]:
        return self.cluster.workers
