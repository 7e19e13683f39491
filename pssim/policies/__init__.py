"""Synchronization policies, one module each, registered by the name users type (+policy=NAME)."""

from pssim.policies.base import POLICIES, Policy, register, registered
from pssim.policies import asynchronous, ssp, sync  # noqa: F401  (each module registers itself)

__all__ = ["POLICIES", "Policy", "register", "registered"]
