"""The policy interface and registry.

A policy says who talks to whom and when: it is the worker's loop, written with the primitives
`worker.compute`, `ps.push`, `ps.pull` and `ps.apply`, plus the server's rule for an arriving
gradient. It never touches the network's internals.
"""

from __future__ import annotations

POLICIES: dict[str, type["Policy"]] = {}


def register(name: str):
    """Class decorator: make a policy available as `+policy=<name>`."""

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
    # Gradients folded into one global model update (a BSP step folds all n; an ASP step one).
    gradients_per_update = 1
    # Whether the run builds cluster.servers parameter-server shards on hosts of their own.
    uses_servers = True

    def __init__(self, sim):
        self.sim = sim
        self.env = sim.env
        self.ps = sim.ps
        self.cfg = sim.config.policy
        self.n = len(sim.workers)

    def start(self) -> None:
        for w in self.sim.workers:
            self.env.process(self.worker(w))

    def worker(self, w):
        """The worker's loop, a SimPy generator that runs until the simulation stops."""
        raise NotImplementedError
