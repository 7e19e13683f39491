"""Topologies as networkx graphs of full-duplex links; routes are read off the graph.

Every physical link is two directed edges, one per direction, each with its own capacity, so traffic in
one direction never slows the other. The flow model only sees `Link` objects on a route, so a new
topology needs no change to the model.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace
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
        self.routes = lru_cache(maxsize=None)(self._routes)
        self.route = lru_cache(maxsize=None)(self._route)

    @property
    def links(self) -> list[Link]:
        return [data["link"] for _, _, data in self.graph.edges(data=True)]

    def _routes(self, src: str, dst: str) -> tuple[tuple[Link, ...], ...]:
        """Every fewest-hop path from src to dst, in a fixed order (the equal-cost multipath set)."""
        paths = sorted(nx.all_shortest_paths(self.graph, src, dst))
        return tuple(tuple(self.graph.edges[u, v]["link"] for u, v in zip(p, p[1:])) for p in paths)

    def _route(self, src: str, dst: str) -> tuple[Link, ...]:
        """The one path ECMP would pick: a fixed hash of (src, dst) among the equal-cost paths."""
        paths = self.routes(src, dst)
        return paths[zlib.crc32(f"{src}->{dst}".encode()) % len(paths)]

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


def leaf_spine(hosts: list[str], transport: Transport, hosts_per_rack: int, spines: int,
               oversubscription: float) -> Topology:
    """Racks of `hosts_per_rack` hosts under a top-of-rack switch, every ToR joined to every spine.

    Each ToR's uplinks together carry hosts_per_rack x NIC bandwidth / oversubscription, split evenly
    over the spines. spines=1 is a classic two-tier tree with an oversubscribed core; spines>1 with
    oversubscription 1 is a non-blocking leaf-spine (a two-level folded Clos / fat-tree).
    """
    topo = Topology(nx.DiGraph(), hosts)
    racks = [hosts[i:i + hosts_per_rack] for i in range(0, len(hosts), hosts_per_rack)]
    uplink = replace(transport, name=f"{transport.name}-uplink",
                     bandwidth=hosts_per_rack * transport.bandwidth / (spines * oversubscription))
    for r, rack in enumerate(racks):
        for host in rack:
            topo.add_duplex(host, f"tor{r}", transport)
        if len(racks) > 1:
            for s in range(spines):
                topo.add_duplex(f"tor{r}", f"spine{s}", uplink)
    return topo
