"""Topologies as networkx graphs of full-duplex links; routes are read off the graph.

Every physical link is two directed edges, one per direction, each with its own capacity, so traffic in
one direction never slows the other. The flow model only sees `Link` objects on a route, so a new
topology needs no change to the model.

A link's capacity starts at its transport's nominal rate and may change while the simulation runs (a
degraded or failed link); capacity zero means the link is down. Routes are least-cost paths over the
links that are up (a link costs 1 unless added with another cost, so routes are fewest-hop paths unless
a topology says otherwise: a GPU's PCIe link to its host costs more than its NVLink, so GPU-to-GPU
traffic takes NVLink while host traffic takes PCIe), and the cached routes are dropped whenever a link
goes down or comes back up.

Routes at scale. A networkx search per (source, destination) pair costs Theta(nodes) each, so Theta(n^3)
for the n^2 pairs of a parameter-server job at thousands of GPUs. The graphs built here are trees of small
blocks: a host's NIC link, a rack's ToR-spine mesh, a machine's GPUs with its NVLink switch and host. So
while every link is up (and links come in pairs of one integer cost), routes are read off the graph's
block-cut tree (`Blocks`): every path between two nodes passes through the cut vertices on the tree path
between their blocks and stays inside each block between two of them, so the least-cost paths are the
products of each block's least-cost paths between its entry and exit (searched once per block and pair,
in the block alone). That is exactly networkx's set of all shortest paths; both are sorted the same way,
so the routes, and ECMP's choice among them, are identical. Other graphs (a down link, a one-way or
fractional cost) take networkx's search as before.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field, replace
from functools import lru_cache
from itertools import product

import networkx as nx

from pssim.network.errors import NoRoute
from pssim.network.transport import Transport


def check_capacity(bytes_per_s: float) -> float:
    """`bytes_per_s` as a float, if it is a usable link capacity: finite and not negative (0: down)."""
    if not 0.0 <= bytes_per_s < math.inf:
        raise ValueError(f"a link capacity must be finite and >= 0 bytes/s, not {bytes_per_s!r}")
    return float(bytes_per_s)


@dataclass(eq=False)
class Link:
    """One direction of a physical link (compared and hashed by identity: the topology owns each one).

    `capacity` is the link's current usable bytes/s, initially its transport's nominal
    bandwidth x efficiency. It is read-only here: change it with `FlowNetwork.set_capacity` (which also
    moves the flows and reroutes) or, with no network carrying traffic, `Topology.set_capacity`.
    """

    src: str
    dst: str
    transport: Transport
    _capacity: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._capacity = self.transport.capacity

    @property
    def name(self) -> str:
        return f"{self.src}->{self.dst}"

    @property
    def capacity(self) -> float:
        """Usable bytes/s now (0 while the link is down)."""
        return self._capacity

    @property
    def nominal_capacity(self) -> float:
        """Usable bytes/s of a healthy link: the transport's line rate times efficiency."""
        return self.transport.capacity

    @property
    def up(self) -> bool:
        """Whether the link carries traffic (and routes may cross it): capacity above zero."""
        return self._capacity > 0


class Topology:
    """A directed graph of hosts and switches whose edges carry `Link` objects."""

    def __init__(self, graph: nx.DiGraph, hosts: list[str]):
        self.graph = graph
        self.hosts = list(hosts)
        self.down_links: set[Link] = set()  # links whose capacity is zero (read-only: see set_capacity)
        self._weight: str | None = None  # "cost" once a link costs other than 1 (else fewest hops, by BFS)
        self.routes = lru_cache(maxsize=None)(self._routes)
        self.route = lru_cache(maxsize=None)(self._route)
        self._blocks: Blocks | None | bool = None  # the block-cut tree (False: this graph has none usable)

    @property
    def links(self) -> list[Link]:
        return [data["link"] for _, _, data in self.graph.edges(data=True)]

    def link(self, src: str, dst: str) -> Link:
        """The directed link from node src to its neighbour dst."""
        return self.graph.edges[src, dst]["link"]

    def set_capacity(self, link: Link, bytes_per_s: float) -> bool:
        """Set a link's current capacity (0: down); True when the link went down or came back up.

        Only then do routes change, so only then are the cached routes dropped. This moves no flows:
        while a `FlowNetwork` carries traffic on this topology, use its `set_capacity` instead.
        """
        capacity = check_capacity(bytes_per_s)
        was_up = link.up
        link._capacity = capacity
        if link.up == was_up:
            return False
        if link.up:
            self.down_links.discard(link)
        else:
            self.down_links.add(link)
        self.routes.cache_clear()
        self.route.cache_clear()
        return True

    def _routes(self, src: str, dst: str) -> tuple[tuple[Link, ...], ...]:
        """Every least-cost path of up links from src to dst, in a fixed order (the equal-cost
        multipath set). Raises `NoRoute` when every path crosses a down link."""
        if not self.down_links:
            if self._blocks is None:
                self._blocks = Blocks.of(self.graph) or False
            if self._blocks:
                return self._blocks.routes(src, dst)
        graph = self._up_graph()
        try:
            paths = sorted(nx.all_shortest_paths(graph, src, dst, weight=self._weight))
        except nx.NetworkXNoPath:
            raise NoRoute(src, dst) from None
        return tuple(tuple(graph.edges[u, v]["link"] for u, v in zip(p, p[1:])) for p in paths)

    def _up_graph(self) -> nx.DiGraph:
        """The graph without its down links (the graph itself while every link is up)."""
        if not self.down_links:
            return self.graph
        edges = self.graph.edges
        return nx.subgraph_view(self.graph, filter_edge=lambda u, v: edges[u, v]["link"].up)

    def _route(self, src: str, dst: str) -> tuple[Link, ...]:
        """The one path ECMP would pick: a fixed hash of (src, dst) among the equal-cost paths of up
        links. As in ECMP, losing a path rehashes: a route may move even if it avoided the down link."""
        paths = self.routes(src, dst)
        return paths[zlib.crc32(f"{src}->{dst}".encode()) % len(paths)]

    def add_duplex(self, a: str, b: str, transport: Transport, cost: float = 1.0) -> None:
        """Join a and b by a full-duplex link: one independent directed link each way. `cost` is what
        crossing it adds to a route's length (routes take the least-cost paths)."""
        if cost != 1.0:
            self._weight = "cost"
        self.graph.add_edge(a, b, link=Link(a, b, transport), cost=cost)
        self.graph.add_edge(b, a, link=Link(b, a, transport), cost=cost)
        self._blocks = None  # the graph changed: its routes too
        self.routes.cache_clear()
        self.route.cache_clear()


class Blocks:
    """A graph's block-cut tree, to read least-cost routes off it (module docstring).

    Blocks are the biconnected components of the graph (as undirected); a cut vertex belongs to
    several. The tree's nodes are ("B", block index) and ("C", cut vertex), rooted per connected
    component; a node that is not a cut vertex lives in its one block's tree node.
    """

    def __init__(self, graph: nx.DiGraph, blocks: list[set], weight: str | None):
        self.graph, self.blocks, self.weight = graph, blocks, weight
        self.links = {(u, v): d["link"] for u, v, d in graph.edges(data=True)}
        members: dict = {}
        for i, block in enumerate(blocks):
            for v in block:
                members.setdefault(v, []).append(i)
        self.home = {v: ("C", v) if len(bs) > 1 else ("B", bs[0]) for v, bs in members.items()}
        self.parent: dict = {}
        self.depth: dict = {}
        self.root: dict = {}
        for start in range(len(blocks)):  # one BFS per connected component, from its first block
            if ("B", start) not in self.depth:
                self._root_at(("B", start), members)
        self._segments: dict = {}  # (block, entry, exit) -> that block's least-cost paths
        self._crossings: dict = {}  # (tree node, tree node) -> the blocks between them (`_crossing`)

    @classmethod
    def of(cls, graph: nx.DiGraph) -> Blocks | None:
        """The structure of a graph whose every link has a reverse of the same positive integer cost
        (so sums of costs are exact and paths are the same both ways); None for any other graph."""
        weighted = False
        for u, v, cost in graph.edges(data="cost", default=1.0):
            back = graph.get_edge_data(v, u)
            if back is None or back.get("cost", 1.0) != cost or not (cost > 0 and float(cost).is_integer()):
                return None
            weighted |= cost != 1.0
        undirected = nx.Graph(graph.edges())
        return cls(graph, [set(b) for b in nx.biconnected_components(undirected)], "cost" if weighted else None)

    def _root_at(self, root, members) -> None:
        """Breadth-first over the tree from `root`: parent, depth and component root of each node."""
        self.parent[root], self.depth[root], self.root[root] = None, 0, root
        frontier = [root]
        while frontier:
            nxt = []
            for node in frontier:
                if node[0] == "B":
                    near = [("C", v) for v in self.blocks[node[1]] if len(members[v]) > 1]
                else:
                    near = [("B", b) for b in members[node[1]]]
                for other in near:
                    if other not in self.depth:
                        self.parent[other], self.depth[other], self.root[other] = node, self.depth[node] + 1, root
                        nxt.append(other)
            frontier = nxt

    def _tree_path(self, a, b) -> list:
        """The tree nodes from a to b (both included)."""
        up, down = [a], [b]
        while a != b:
            if self.depth[a] >= self.depth[b]:
                a = self.parent[a]
                up.append(a)
            else:
                b = self.parent[b]
                down.append(b)
        return up + down[-2::-1]

    def _segment(self, block: int, a, b) -> list[tuple[tuple, tuple[Link, ...]]]:
        """The least-cost paths from a to b inside one block, as (nodes, links), sorted by nodes
        (searched once per triple)."""
        key = (block, a, b)
        paths = self._segments.get(key)
        if paths is None:
            inside = self.graph.subgraph(self.blocks[block])
            nodes = sorted(map(tuple, nx.all_shortest_paths(inside, a, b, weight=self.weight)))
            paths = self._segments[key] = [(p, tuple(self.links[u, v] for u, v in zip(p, p[1:]))) for p in nodes]
        return paths

    def _crossing(self, a, b) -> list[tuple[int, object]]:
        """The blocks a route from tree node a to tree node b crosses, each with the cut vertex it
        leaves by (None for the last: the destination), read once per pair of tree nodes."""
        crossing = self._crossings.get((a, b))
        if crossing is None:
            path = self._tree_path(a, b)
            crossing = self._crossings[a, b] = [(node[1], path[i + 1][1] if i + 1 < len(path) else None)
                                                for i, node in enumerate(path) if node[0] == "B"]
        return crossing

    def routes(self, src: str, dst: str) -> tuple[tuple[Link, ...], ...]:
        """Every least-cost path from src to dst as links, in networkx's order (sorted node paths)."""
        if src not in self.graph:
            raise nx.NodeNotFound(f"Source {src} is not in G")  # as networkx's search
        a, b = self.home.get(src), self.home.get(dst)
        if a is None or b is None or self.root[a] != self.root[b]:
            raise NoRoute(src, dst)
        segments, entry = [], src
        for block, exit_ in self._crossing(a, b):
            exit_ = dst if exit_ is None else exit_
            segments.append(self._segment(block, entry, exit_))
            entry = exit_
        if all(len(paths) == 1 for paths in segments):  # one path (no ECMP choice): no product, no sort
            return (sum((paths[0][1] for paths in segments), ()),)
        joined = [(sum((p[0][1:] for p in part[1:]), part[0][0]), sum((p[1] for p in part), ()))
                  for part in product(*segments)]
        return tuple(links for _, links in sorted(joined, key=lambda path: path[0]))


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
