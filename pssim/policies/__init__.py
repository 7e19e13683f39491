"""Synchronization policies, one module each, registered by the name users type (+policy=NAME)."""

from pssim.policies.base import POLICIES, Policy, register, registered
from pssim.policies import allreduce, asynchronous, bounded_delay, byteps, herring, hetpipe, parallax, ssp, sync  # noqa: F401  (each registers)

__all__ = ["POLICIES", "Policy", "register", "registered"]
