"""The policy interface and registry.

A policy says who talks to whom and when: it is the worker's loop, written with the primitives
`worker.compute`, `servers.push`, `servers.pull` and `servers.apply`, plus the server's rule for an
arriving gradient. It never touches the network's internals. Each policy owns its config schema
(`Config`, a PolicyConfig subclass with its knobs and their checks) and keeps its process handles.
"""

from __future__ import annotations

from pssim.config import PolicyConfig
from pssim.registry import Registry

POLICIES: Registry[type["Policy"]] = Registry("policy.name")


def register(name: str):
    """Class decorator: make a policy available as `+policy=<name>` (its schema: the class's `Config`)."""

    def wrap(cls: type[Policy]) -> type[Policy]:
        cls.name = name
        POLICIES[name] = cls
        return cls

    return wrap


def registered() -> list[str]:
    return sorted(POLICIES)


def mean_gradient(grads: list):
    """The mean of the workers' gradients, summed in worker order (so every policy gets the same bits);
    None in timing-only runs."""
    if grads[0] is None:
        return None
    return sum(grads[1:], grads[0].clone()) / len(grads)


class Policy:
    """Base class: holds the run's handles and starts one process per worker."""

    name = ""
    Config: type[PolicyConfig] = PolicyConfig
    # Gradients folded into one global model update (a BSP step folds all n; an ASP step one).
    gradients_per_update = 1
    # Whether the run builds cluster.servers parameter-server shards on hosts of their own.
    uses_servers = True

    def __init__(self, ctx):
        self.ctx = ctx
        self.env = ctx.env
        self.servers = ctx.servers
        self.cfg = ctx.config.policy
        self.workers = ctx.workers
        self.n = len(ctx.workers)
        self.processes: list = []  # the SimPy processes this policy started, to interrupt or inspect

    def start(self) -> None:
        self.processes = [self.env.process(self.worker(w)) for w in self.workers]

    def worker(self, w):
        """The worker's loop, a SimPy generator that runs until the simulation stops."""
        raise NotImplementedError
