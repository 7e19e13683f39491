"""Where everyone lives: GPUs inside machines, machines, CPU machines and servers on the network.

Worker i is GPU i. With one GPU per machine the GPU is the machine's network endpoint (host
`worker<i>`, as in a plain PS cluster). With g > 1 GPUs per machine, machine j is a node `machine<j>`
(its CPU and NIC) and GPU i is `machine<j>.gpu<l>`, joined to its machine by an intra-node link (NVLink or
PCIe) of the same flow model: traffic between two GPUs of a machine crosses two intra-node links and
never the NIC; traffic leaving the machine crosses one intra-node link and then the NIC.
"""

from __future__ import annotations

from dataclasses import dataclass

from pssim.network.topology import Topology
from pssim.network.transport import Transport


@dataclass(frozen=True)
class Layout:
    gpus_per_machine: int
    gpus: tuple[str, ...]  # worker i's node
    machines: tuple[str, ...]  # GPU machines' network endpoints
    cpu_machines: tuple[str, ...]
    servers: tuple[str, ...]  # dedicated parameter-server hosts (sync, async, ssp)

    @classmethod
    def build(cls, workers: int, gpus_per_machine: int, cpu_machines: int, servers: int) -> "Layout":
        if gpus_per_machine == 1:
            gpus = machines = tuple(f"worker{i}" for i in range(workers))
        else:
            machines = tuple(f"machine{j}" for j in range(workers // gpus_per_machine))
            gpus = tuple(f"machine{i // gpus_per_machine}.gpu{i % gpus_per_machine}" for i in range(workers))
        return cls(gpus_per_machine, gpus, machines, tuple(f"cpu{k}" for k in range(cpu_machines)),
                   tuple(f"server{j}" for j in range(servers)))

    @property
    def endpoints(self) -> list[str]:
        """Every node with a NIC, in rack order: GPU machines, CPU machines, servers."""
        return [*self.machines, *self.cpu_machines, *self.servers]

    def machine_of(self, worker: int) -> int:
        return worker // self.gpus_per_machine

    def local_workers(self, machine: int) -> range:
        g = self.gpus_per_machine
        return range(machine * g, (machine + 1) * g)

    def topology(self, topo_cfg, nic: Transport, intra: Transport) -> Topology:
        """The network of NICs (star or racks) plus, with g > 1, each GPU's intra-node link."""
        topo = topo_cfg.build(self.endpoints, nic)
        if self.gpus_per_machine > 1:
            for i, gpu in enumerate(self.gpus):
                topo.add_duplex(gpu, self.machines[self.machine_of(i)], intra)
            topo.hosts += list(self.gpus)
        return topo
