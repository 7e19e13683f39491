"""A summation service: a CPU-only server that adds the machines' pushes of a key as they land and
returns the sum to every machine (BytePS's summation service, Herring's servers)."""

from __future__ import annotations

from pssim.comm.server import Cpu


class SummationService:
    """Sums, never optimizes. Adding a push costs `sum_s_per_byte` of CPU, plus `transport_s_per_byte`
    when it came over the network; returning the sum to another machine costs `transport_s_per_byte`."""

    def __init__(self, env, network, host: str, cores: int, sum_s_per_byte: float, transport_s_per_byte: float,
                 tag: str):
        self.env = env
        self.network = network
        self.host = host
        self.cpu = Cpu(env, host, cores)
        self.sum_cpu = sum_s_per_byte
        self.transport_cpu = transport_s_per_byte
        self.tag = tag
        self._arrived: dict[object, int] = {}

    def add(self, key, src: str, nbytes: float, machines: list[str], delivered: list):
        """A process: add `src`'s push of `key`; once every machine's is in, send the sum to each
        machine d, and fire delivered[d] when it lands there."""
        remote = src != self.host
        yield from self.cpu.work(nbytes * (self.sum_cpu + remote * self.transport_cpu), "sum")
        self._arrived[key] = self._arrived.get(key, 0) + 1
        if self._arrived[key] == len(machines):
            del self._arrived[key]
            for host, event in zip(machines, delivered):
                self.env.process(self._return(host, nbytes, event))

    def _return(self, host: str, nbytes: float, event):
        if host != self.host:
            yield from self.cpu.work(nbytes * self.transport_cpu, "send")
        self.network.send(self.host, host, nbytes, f"{self.tag}-pull").callbacks.append(lambda _e: event.succeed())
