"""Cluster: devices (how fast a step computes), stragglers (how much slower a step may be), the layout
(GPUs, machines, servers) and workers (replicas of one or more pipeline stages)."""

from pssim.cluster.device import DEVICES, Device
from pssim.cluster.layout import Layout
from pssim.cluster.stragglers import STRAGGLER_MODELS, Straggler, make_stragglers
from pssim.cluster.worker import Stage, Worker

__all__ = ["DEVICES", "Device", "Layout", "STRAGGLER_MODELS", "Stage", "Straggler", "Worker", "make_stragglers"]
