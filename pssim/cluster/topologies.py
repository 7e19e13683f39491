"""Topology schemas: each topology's keys, their checks, and how it wires the machines' NICs.

Presets of the `topology` group (pssim/conf/topology/) give the values; `build` turns a list of
endpoints (every node with a NIC) into a network Topology.
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING

from pssim.config import TopologyConfig, finite, require
from pssim.network.topology import Topology, leaf_spine, star
from pssim.network.transport import Transport
from pssim.registry import Registry

TOPOLOGIES: Registry[type[TopologyConfig]] = Registry("topology.name")
# Class decorator: make a topology schema available as `topology=<its name>`.
topology = TOPOLOGIES.by("name")


@topology
@dataclass
class Star(TopologyConfig):
    """Every NIC on one non-blocking switch."""

    name: str = "star"

    def build(self, endpoints: list[str], nic: Transport) -> Topology:
        return star(endpoints, nic)


@dataclass
class Racks(TopologyConfig):
    """Racks of hosts_per_rack machines under a top-of-rack switch, every ToR joined to every spine;
    the uplinks of a rack carry its NICs' bandwidth / oversubscription."""

    hosts_per_rack: int = MISSING
    spines: int = MISSING
    # Rack downlink bandwidth over uplink bandwidth (1: non-blocking).
    oversubscription: float = MISSING

    def check(self, config) -> None:
        require(self.hosts_per_rack >= 1, "topology.hosts_per_rack", self.hosts_per_rack, "must be >= 1")
        require(self.spines >= 1, "topology.spines", self.spines, "must be >= 1")
        finite("topology.oversubscription", self.oversubscription, at_most=1e6)
        require(self.oversubscription >= 1, "topology.oversubscription", self.oversubscription,
                "must be >= 1 (1: non-blocking)")

    def build(self, endpoints: list[str], nic: Transport) -> Topology:
        return leaf_spine(endpoints, nic, self.hosts_per_rack, self.spines, self.oversubscription)


@topology
@dataclass
class TwoTier(Racks):
    """A classic two-tier tree: racks under one core switch, oversubscribed uplinks."""

    name: str = "two_tier"


@topology
@dataclass
class LeafSpine(Racks):
    """Leaf-spine (a two-level folded Clos): ECMP over the spines, non-blocking by default."""

    name: str = "leaf_spine"
