"""Where everyone lives: GPUs inside machines, machines, CPU machines and servers on the network.

A data-parallel worker (a replica) spans k = gpus_per_worker GPUs, one per pipeline stage: worker i's
stages are GPUs i*k .. i*k + k - 1, in stage order (with k = 1, worker i is GPU i). Machines hold
g = gpus_per_machine consecutive GPUs each (machines = GPUs / g), so a replica's stages share a machine
where they fit and otherwise continue on the next one.

With one GPU per machine the GPU is the machine's network endpoint (host `worker<i>`, as in a plain PS
cluster; with k > 1 stage s of worker i is host `worker<i>.stage<s>`). With g > 1 GPUs per machine,
machine j is a node `machine<j>` (its CPU, memory and NIC) and GPU l of it is `machine<j>.gpu<l>`:
- PCIe-only machines (an `intra` preset without `pcie_gbps`): each GPU joins its machine by one PCIe
  link; GPU-to-GPU traffic crosses two of them (through the host), host and NIC traffic one.
- NVLink machines: each GPU joins a switch `machine<j>.nvlink` by its NVLink (an NVSwitch-like fabric:
  every GPU has its full NVLink bandwidth) and its machine by its own PCIe link (`intra.pcie_gbps`).
  GPU-to-GPU traffic crosses two NVLinks; GPU <-> host copies and traffic leaving the machine cross the
  GPU's PCIe link (PCIe links cost 2 in routing, so no GPU-to-GPU route goes through the host).
Either way intra-machine traffic never touches the NIC, and all links follow the same flow model.

An `assignment` (HetPipe's allocation policies, pssim/cluster/allocation.py) replaces the consecutive
rule: worker i's stages are then the GPUs assignment[i], in stage order, wherever they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from pssim.network.topology import Topology
from pssim.network.transport import GBPS, Transport

PCIE_ROUTE_COST = 2.0  # > 1: two GPUs of a machine talk over NVLink (2 hops), never through the host (4)


def pcie_link(intra) -> Transport | None:
    """Each GPU's PCIe link to its host, from an `intra` preset (an IntraConfig); None on PCIe-only
    machines (`pcie_gbps` 0), whose intra links are PCIe already."""
    if not getattr(intra, "pcie_gbps", 0):
        return None
    return Transport(name=f"{intra.name}-pcie", kind="pcie", bandwidth=intra.pcie_gbps * GBPS,
                     efficiency=intra.pcie_efficiency, latency_s=intra.pcie_latency_us * 1e-6, hop_latency_s=0.0,
                     flow_cap=float("inf"), cpu_s_per_byte=0.0)


@dataclass(frozen=True)
class Layout:
    gpus_per_machine: int
    gpus: tuple[str, ...]  # every GPU's node, GPU g at gpus[g] (with one GPU per worker: worker i's node)
    machines: tuple[str, ...]  # GPU machines' network endpoints
    cpu_machines: tuple[str, ...]
    servers: tuple[str, ...]  # dedicated parameter-server hosts (sync, async, ssp)
    gpus_per_worker: int = 1  # GPUs (pipeline stages) of one data-parallel replica
    # Each worker's GPU indices in stage order; None: worker i has GPUs i*k .. i*k + k - 1.
    assignment: tuple[tuple[int, ...], ...] | None = None

    @classmethod
    def build(cls, workers: int, gpus_per_machine: int, cpu_machines: int, servers: int,
              gpus_per_worker: int = 1, assignment=None) -> "Layout":
        k, g = gpus_per_worker, gpus_per_machine
        n = workers * k
        if g == 1:
            if k == 1:
                gpus = tuple(f"worker{i}" for i in range(workers))
            else:
                gpus = tuple(f"worker{i // k}.stage{i % k}" for i in range(n))
            machines = gpus
        else:
            machines = tuple(f"machine{j}" for j in range(n // g))
            gpus = tuple(f"machine{i // g}.gpu{i % g}" for i in range(n))
        if assignment is not None:
            assignment = tuple(tuple(a) for a in assignment)
            if sorted(i for a in assignment for i in a) != list(range(n)) or any(len(a) != k for a in assignment):
                raise ValueError(f"an assignment must give each of {workers} workers {k} distinct GPUs of {n}")
        return cls(g, gpus, machines, tuple(f"cpu{c}" for c in range(cpu_machines)),
                   tuple(f"server{j}" for j in range(servers)), k, assignment)

    @property
    def workers(self) -> int:
        return len(self.gpus) // self.gpus_per_worker

    @property
    def hosts(self) -> tuple[str, ...]:
        """Each worker's host: the node of its first stage (its pushes and pulls leave from there)."""
        if self.assignment is not None:
            return tuple(self.gpus[a[0]] for a in self.assignment)
        return self.gpus[::self.gpus_per_worker]

    def worker_gpus(self, worker: int) -> Sequence[int]:
        """The GPU indices of worker's stages, in stage order."""
        if self.assignment is not None:
            return self.assignment[worker]
        k = self.gpus_per_worker
        return range(worker * k, (worker + 1) * k)

    def stage_hosts(self, worker: int) -> tuple[str, ...]:
        """The nodes of worker's stages, in stage order."""
        return tuple(self.gpus[g] for g in self.worker_gpus(worker))

    @property
    def endpoints(self) -> list[str]:
        """Every node with a NIC, in rack order: GPU machines, CPU machines, servers."""
        return [*self.machines, *self.cpu_machines, *self.servers]

    def machine_of_gpu(self, gpu: int) -> int:
        return gpu // self.gpus_per_machine

    def machine_of(self, worker: int) -> int:
        """The machine of worker's first stage."""
        return self.machine_of_gpu(self.worker_gpus(worker)[0])

    def local_workers(self, machine: int) -> Sequence[int]:
        """The workers whose first stage is on `machine` (with one GPU per worker: its GPUs)."""
        if self.assignment is not None:
            return [w for w in range(self.workers) if self.machine_of(w) == machine]
        g, k = self.gpus_per_machine, self.gpus_per_worker
        return range(-(-machine * g // k), -(-(machine + 1) * g // k))

    def topology(self, topo_cfg, nic: Transport, intra: Transport, pcie: Transport | None = None) -> Topology:
        """The network of NICs (star or racks) plus, with g > 1, each GPU's intra-node links: `intra` to
        its machine (PCIe-only machines, `pcie` None), or `intra` to the machine's NVLink switch and
        `pcie` to its machine (module docstring)."""
        topo = topo_cfg.build(self.endpoints, nic)
        if self.gpus_per_machine > 1:
            for i, gpu in enumerate(self.gpus):
                machine = self.machines[self.machine_of_gpu(i)]
                if pcie is None:
                    topo.add_duplex(gpu, machine, intra)
                else:
                    topo.add_duplex(gpu, f"{machine}.nvlink", intra)
                    topo.add_duplex(gpu, machine, pcie, cost=PCIE_ROUTE_COST)
            topo.hosts += list(self.gpus)
        return topo
