"""GPU <-> host copies: each GPU of a machine copies its slice of a tensor over its own PCIe link.

After a local reduce-scatter each of the machine's g GPUs holds 1/g of the reduced tensor; BytePS's
COPYD2H loop and Herring copy those slices into host memory (where the CPU servers and the NIC read
them), and the reverse brings a summed tensor back before the local all-gather. The g copies run side
by side, each over its GPU's PCIe link (`intra.pcie_gbps`; on PCIe-only machines the intra links are
PCIe), never over NVLink. So copying S bytes to the host takes

    alpha_pcie + (S / g) / pcie_rate

on an idle machine (alpha_pcie = `intra.pcie_latency_us`; pcie_rate = pcie_gbps x pcie_efficiency).
A machine whose one GPU is its network endpoint (one GPU per machine) has nothing to copy.
"""

from __future__ import annotations


def copy_to_host(env, network, gpus: list[str], host: str, nbytes: float, tag: str = "to-host"):
    """Each GPU copies its 1/g slice of `nbytes` into host memory; done when all slices are there."""
    if len(gpus) == 1 and gpus[0] == host:
        return
    g = len(gpus)
    yield env.all_of([network.send(gpu, host, nbytes / g, tag) for gpu in gpus])


def copy_from_host(env, network, gpus: list[str], host: str, nbytes: float, tag: str = "from-host"):
    """Each GPU copies its 1/g slice of `nbytes` from host memory; done when every GPU has its slice."""
    if len(gpus) == 1 and gpus[0] == host:
        return
    g = len(gpus)
    yield env.all_of([network.send(host, gpu, nbytes / g, tag) for gpu in gpus])
