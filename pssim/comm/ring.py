"""A consistent-hash ring of server hosts with virtual nodes (OSDI'14, section 4.3 "Replication").

Positions are `zlib.crc32` of a name, as an unsigned 32-bit integer: host h's virtual node v sits at
crc32(f"{h}#{v}"), key range j at crc32(f"range{j}"). Walking clockwise from a position means visiting
the virtual nodes in increasing (position, host, v) order from the first one at or after it, wrapping
round past 2**32 - 1. A range's `chain` is the distinct hosts met on that walk, in order: its primary is
the first (the server that owns it), its replicas the next `k`. When hosts are removed from the ring
(crashed) the chain of the live ones is the same walk with the removed hosts skipped, so a crashed
primary's range goes to the next live host clockwise: its first replica.
"""

from __future__ import annotations

import bisect
import zlib


def position(name: str) -> int:
    """Where `name` sits on the ring: crc32 of its UTF-8 bytes, in [0, 2**32)."""
    return zlib.crc32(name.encode()) & 0xFFFFFFFF


def range_name(j: int) -> str:
    return f"range{j}"


class Ring:
    """The ring of `hosts`, each with `virtual_nodes` positions."""

    def __init__(self, hosts: list[str] | tuple[str, ...], virtual_nodes: int):
        if virtual_nodes < 1:
            raise ValueError("virtual_nodes must be >= 1")
        self.hosts = list(hosts)
        self.nodes = sorted((position(f"{h}#{v}"), h, v) for h in self.hosts for v in range(virtual_nodes))
        self._positions = [p for p, _, _ in self.nodes]

    def chain(self, name: str) -> list[str]:
        """Every host, in the order met walking clockwise from `name`'s position (first: its primary)."""
        start = bisect.bisect_left(self._positions, position(name))
        order: list[str] = []
        for i in range(len(self.nodes)):
            host = self.nodes[(start + i) % len(self.nodes)][1]
            if host not in order:
                order.append(host)
        return order

    def owners(self, name: str, replicas: int, down: set[str] | frozenset = frozenset()) -> list[str]:
        """The live primary of `name` and its `replicas` live successors (fewer if too few are up)."""
        return [h for h in self.chain(name) if h not in down][:replicas + 1]
