"""Parameter servers for partitioned variables, as TensorFlow runs them (Parallax's sparse path, TF-PS).

A variable is cut into partitions (contiguous row ranges for an embedding table), each on one server
host. In a synchronous step every pusher (a machine after local aggregation, or each GPU) sends each
partition its gradient: the rows it touched in that range for a sparse variable, the whole partition for
a dense one, an empty message if it touched none (TensorFlow's graph sends every partition's tensor,
empty or not). The server adds each push as it lands; once every pusher's push is in, the partition is
updated, and each pusher pulls what its next step reads from it (the rows its next batch looks up, or
the whole dense partition).

    servers = PartitionServers(env, network, hosts, threads, sum_s_per_byte, transport_s_per_byte, message_s)
    yield from servers.exchange(key, server, pusher, push_bytes, pull_bytes, pushers, remote)

CPU per push: message + push_bytes * (sum + transport if remote); per pull: message + pull_bytes *
transport if remote, on the server's threads (first come, first served), as BytePS's summation service
charges them (pssim/comm/summation.py). So one pusher alone with an idle server on an idle network
takes latency + push/B + message + push*(sum + transport) + message + pull*transport + latency + pull/B.
The per-partition message costs are what make many partitions expensive (Parallax's theta2 (P - 1));
spreading the bytes over more servers and threads is what makes them cheap (theta1 / P).
"""

from __future__ import annotations

import simpy

from pssim.comm.cpu import Threads


class PartitionServers:
    """Server hosts holding partitions; `exchange` is one pusher's push then pull of one partition."""

    def __init__(self, env: simpy.Environment, network, hosts: list[str], threads: int, sum_s_per_byte: float,
                 transport_s_per_byte: float, message_s: float, tag: str):
        self.env = env
        self.network = network
        self.hosts = list(hosts)
        self.cpus = {host: Threads(env, host, threads) for host in dict.fromkeys(hosts)}
        self.sum_cpu = sum_s_per_byte
        self.transport_cpu = transport_s_per_byte
        self.message_cpu = message_s
        self.tag = tag
        self._rounds: dict[object, list] = {}  # key -> [pushes summed so far, the event of the update]

    def exchange(self, key, server: str, pusher: str, push_bytes: float, pull_bytes: float, pushers: int,
                 remote: bool):
        """`pusher` sends `push_bytes` of partition `key` to `server`; once all `pushers` pushes of `key`
        are summed (the update), it pulls `pull_bytes` back. `remote`: the pusher is on another machine
        (its bytes cost the server transport CPU). A SimPy generator."""
        cpu = self.cpus[server]
        yield self.network.send(pusher, server, push_bytes, f"{self.tag}-push")
        yield from cpu.work(self.message_cpu + push_bytes * (self.sum_cpu + remote * self.transport_cpu), "sum")
        summed = self._rounds.setdefault(key, [0, self.env.event()])
        summed[0] += 1
        if summed[0] == pushers:
            del self._rounds[key]
            summed[1].succeed()
        yield summed[1]
        yield from cpu.work(self.message_cpu + remote * pull_bytes * self.transport_cpu, "send")
        yield self.network.send(server, pusher, pull_bytes, f"{self.tag}-pull")

    def cpu_threads(self):
        """The servers' CPU threads, for the trace."""
        return list(self.cpus.values())
