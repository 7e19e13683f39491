"""Cluster: devices (how fast a step computes) and stragglers (how much slower a step may be)."""

from pssim.cluster.device import DEVICES, Device
from pssim.cluster.stragglers import STRAGGLER_MODELS, Straggler, make_stragglers

__all__ = ["DEVICES", "Device", "STRAGGLER_MODELS", "Straggler", "make_stragglers"]
