"""Topologies as networkx graphs of full-duplex links; routes are read off the graph.

Every physical link is two directed edges, one per direction, each with its own capacity, so traffic in
one direction never slows the other. The flow model only sees `Link` objects on a route, so a new
topology needs no change to the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import networkx as nx

from pssim.network.transport import Transport


@dataclass(frozen=True, eq=False)
class Link:
    """One direction of a physical link (compared and hashed by identity: the topology owns each one)."""

    src: str
    dst: str
    transport: Transport

    @property
    def name(self) -> str:
        return f"{self.src}->{self.dst}"

    @property
    def capacity(self) -> float:
        return self.transport.capacity


class Topology:
    """A directed graph of hosts and switches whose edges carry `Link` objects."""

    def __init__(self, graph: nx.DiGraph, hosts: list[str]):
        self.graph = graph
        self.hosts = list(hosts)
        self.route = lru_cache(maxsize=None)(self._route)

    @property
    def links(self) -> list[Link]:
        return [data["link"] for _, _, data in self.graph.edges(data=True)]

    def _route(self, src: str, dst: str) -> tuple[Link, ...]:
        """The links from src to dst on a fewest-hop path (deterministic among equals)."""
        path = nx.shortest_path(self.graph, src, dst)
        return tuple(self.graph.edges[u, v]["link"] for u, v in zip(path, path[1:]))

    def add_duplex(self, a: str, b: str, transport: Transport) -> None:
        """Join a and b by a full-duplex link: one independent directed link each way."""
        self.graph.add_edge(a, b, link=Link(a, b, transport))
        self.graph.add_edge(b, a, link=Link(b, a, transport))


def star(hosts: list[str], transport: Transport, switch: str = "switch") -> Topology:
    """Every host joined to one switch by its own NIC link (a non-blocking switch)."""
    topo = Topology(nx.DiGraph(), hosts)
    for host in hosts:
        topo.add_duplex(host, switch, transport)
    return topo
