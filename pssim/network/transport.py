"""Transport profiles: what a message costs beyond its bytes on the wire."""

from __future__ import annotations

from dataclasses import dataclass, replace

GBPS = 1e9 / 8  # bytes per second in one gigabit per second


@dataclass(frozen=True)
class Transport:
    """A transport (TCP, RDMA, ...) on a link class of a given line rate.

    Attributes:
        name: profile name, e.g. ``tcp_10g``.
        kind: ``tcp`` or ``rdma``.
        bandwidth: line rate in bytes/s.
        efficiency: fraction of the line rate a transfer reaches.
        latency_s: per-message software overhead (stack, syscalls, completions).
        hop_latency_s: propagation and switching delay of one link.
        flow_cap: most bytes/s one flow reaches (a single TCP stream rarely fills a fast link); inf: no cap.
        cpu_s_per_byte: CPU time per byte at each end (zero for kernel bypass).
        multipath: spread each message evenly over every equal-cost path (EFA's SRD).
    """

    name: str
    kind: str
    bandwidth: float
    efficiency: float
    latency_s: float
    hop_latency_s: float
    flow_cap: float
    cpu_s_per_byte: float
    multipath: bool = False

    @property
    def capacity(self) -> float:
        """Usable bytes/s of one link direction: line rate times efficiency."""
        return self.bandwidth * self.efficiency

    @classmethod
    def from_config(cls, net) -> "Transport":
        """Build from a NetworkConfig (Gb/s, microseconds, nanoseconds per byte)."""
        return cls(
            name=net.name,
            kind=net.transport,
            bandwidth=net.bandwidth_gbps * GBPS,
            efficiency=net.efficiency,
            latency_s=net.latency_us * 1e-6,
            hop_latency_s=net.hop_latency_us * 1e-6,
            flow_cap=net.flow_cap_gbps * GBPS if net.flow_cap_gbps > 0 else float("inf"),
            cpu_s_per_byte=net.cpu_ns_per_byte * 1e-9,
            multipath=net.multipath,
        )

    def bonded(self, nics: int) -> "Transport":
        """`nics` NICs bonded into one link of nics x the line rate."""
        return self if nics == 1 else replace(self, bandwidth=self.bandwidth * nics)

    def fabric_share(self, machines: int, beta: float) -> "Transport":
        """The share of a shared cloud fabric that one NIC gets while `machines` GPU machines run the job:
        line rate and flow cap divided by 1 + beta (machines - 1) (`network.fabric_share_beta`).

        The physical reading: VMs spread over an oversubscribed fabric shared with other tenants
        (cross-rack uplinks, ECMP collisions of a few elephant flows, the VM's own NIC or vSwitch under
        load), whose per-VM share falls as the job spans more VMs; the job's aggregate rate saturates
        near B / beta. It is fitted (docs/VALIDATION.md, BytePS vs Horovod), not measured. beta = 0 (the
        default) or one machine: this transport itself, unchanged.
        """
        if beta == 0 or machines <= 1:
            return self
        share = 1.0 + beta * (machines - 1)
        return replace(self, bandwidth=self.bandwidth / share, flow_cap=self.flow_cap / share)
