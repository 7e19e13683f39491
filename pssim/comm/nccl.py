"""NCCL's all-reduce as it runs: rings and trees over channels, several sockets per TCP connection, and
NCCL's own cost model choosing between Ring and Tree.

What NCCL does (read in NVIDIA/nccl, src/graph/{search,connect,trees,tuning}.cc and
src/transport/net_socket.cc):
- Channels. A collective is split evenly over channels; each channel is a ring (and a tree) of its own
  with its own connection to each peer. The topology search finds rings through each machine's NIC and
  connect.cc then doubles them ("nChannels * 2"): one NIC per machine gives 2 channels. A channel's ring
  visits a machine's GPUs one after another and crosses its NIC once each way, so a flat ring over n
  GPUs moves 2(n-1)/n S through each NIC in all (its channels together), not per GPU. Different channels
  enter and leave a machine through different GPUs (the search spreads them over GPUs and NICs): here
  channel k's ring visits each machine's GPUs rotated by k.
- Sockets. Over TCP a connection is NCCL_SOCKET_NTHREADS x NCCL_NSOCKS_PERTHREAD sockets, its bytes
  spread evenly over them: by default one socket (the main thread's), 2 x 8 = 16 when it detects an AWS
  NIC and 4 x 1 on GCP. So a ring hop between machines is channels x sockets TCP streams, each capped by
  the transport's single-stream rate (`flow_cap_gbps`); inside a machine a hop is one flow per channel.
- Tree (trees.cc). A double binary tree over machines (ncclGetDtree: the second tree mirrors the first
  for an even number of machines and shifts it by one for an odd number, so a machine interior in one is
  a leaf in the other), a chain through the GPUs inside each machine; channel k uses tree k mod 2 (here
  the chains of different channels start at different GPUs, and run the other way in tree 1). Reduce up and broadcast down are pipelined, so every edge
  carries its channel's share up and down at once.
- Choice (tuning.cc). For each algorithm, time = latency + bytes / algorithm bandwidth; the smallest
  wins. Ring: algorithm bandwidth = bus bandwidth x n / (2(n-1)). Tree: 0.92 x bus bandwidth / 2; with
  two machines the search lets the tree's intra speed reach twice its inter speed ("increase bwIntra for
  trees (2 nodes)"), since each NIC then carries half what a ring sends; with more it does not. NCCL
  sees the topology's speeds, not TCP's per-stream limit, so here the bus bandwidth is what the ring
  reaches on the links' nominal capacities (its most loaded link). NCCL's latencies are its tables of
  constants; pssim's tuner uses the latencies its simulation pays (below).

The model. A collective first pays `launch_s` (kernel launch and setup: nccl-tests' floor beyond the
hops). Then its bytes move as flows, all started together since NCCL's chunk pipeline keeps every hop
busy at once; each flow pays its route's latency before its first byte. It ends when the last flow has
landed plus the rest of its pipeline fill: the latency of the longest chain of dependent steps (a ring
all-reduce: 2(n-1) consecutive hops; reduce-scatter and all-gather n-1; a tree: up its deepest path and
back down), a step between machines over TCP costing `socket_step_s` more (NCCL's socket transport: the
proxy thread hands each chunk to socket helper threads and polls for its completion; over RDMA and EFA
the transport's own per-message latency is the step's cost). On an idle network a ring all-reduce of S bytes over n GPUs thus takes

    launch + fill + 2(n-1)/n * S / (the ring's bottleneck rate),

the bottleneck being e.g. min(NIC, channels x streams x flow cap) between machines on TCP.

NVLS (NVLink SHARP, src/device/all_reduce.h, runRing... runNvls; tuning.cc). On one machine whose GPUs
meet in an NVSwitch and whose architecture has an NVLS efficiency (Hopper: 0.85, `Device.nvls_efficiency`),
NCCL can let the switch reduce: each GPU's reduce-scatter loads its chunk's sum from the multicast address
(the switch reads that chunk of every GPU and returns the sum: M out of each GPU in all, M/n in), and its
all-gather stores the chunk to the multicast address (the switch writes it to every GPU: M/n out, M in).
The two are pipelined, so every GPU's NVLink carries M (n+1)/n each way at once, which pssim sends as one
flow up to the switch and one down per GPU, each capped at the efficiency times the GPU's NVLink rate.
Its latency is tuning.cc's NVLS hardware latency (25 us, hwLatencies[NVLINK][NVLS][SIMPLE]), paid once.
So on an idle machine an NVLS all-reduce of S takes launch + 25 us + (n+1)/n S / (efficiency x NVLink),
a bus bandwidth of 2(n-1)/(n+1) x efficiency x NVLink. The tuner weighs it with ring and tree. Across
machines NCCL needs CollNet (SHARP) for NVLS, or runs NVLSTree; neither is modelled.

Left out: the LL and LL128 protocols (Simple only; NCCL 2.3's fixed LL rule, which doubles the bytes of
small all-reduces, on request: NcclSettings.ll_bytes_per_rank), NVLSTree, CollNet and PAT, NVLS for
reduce-scatter and all-gather, the tuner's per-size tree correction and ring plateau factors, and NCCL's
own latency tables (but NVLS's).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import accumulate

ALGORITHMS = ("auto", "ring", "tree", "nvls")
TREE_EFFICIENCY = 0.92  # tuning.cc: a Tree all-reduce reaches .92 of the bus bandwidth, then / 2
NVLS_LATENCY_S = 25e-6  # tuning.cc: hwLatencies[NVLINK][NVLS][SIMPLE], an NVLS all-reduce's whole latency


@dataclass(frozen=True)
class NcclSettings:
    """What a job sets (NCCL_ALGO, NCCL_MIN/MAX_NCHANNELS, the socket counts) and the fitted costs."""

    algorithm: str = "auto"  # auto (NCCL's tuner), ring, tree
    channels: int = 2
    sockets: int = 1  # per connection, between machines over TCP
    launch_s: float = 0.0
    socket_step_s: float = 0.0
    # NCCL 2.3's fixed LL rule (src/include/common_coll.h, ncclGetCollResource): an all-reduce of at most
    # n x ll_bytes_per_rank bytes runs the LL protocol, whose 16-byte lines carry 8 bytes of data and 8 of
    # flags, so every hop moves twice the bytes (transport.cu: "nbytes = llMode ? nbytes * 2"). 0: Simple
    # only (pssim's default). 2.3.7 on Volta over several machines: 256 threads x 128 B = 32768.
    ll_bytes_per_rank: float = 0.0
    # NCCL's NVLS efficiency of the GPUs' architecture (Device.nvls_efficiency; 0: no NVLS).
    nvls_efficiency: float = 0.0


@dataclass(frozen=True)
class Hop:
    """One GPU sending to another: what a message costs and what NCCL's topology sees."""

    src: str
    dst: str
    latency: float  # the route's per-message latency: a flow pays it before its first byte
    step: float  # one pipeline step across it: the latency, plus socket_step_s between machines over TCP
    streams: int  # flows per channel: the sockets of a TCP connection between machines, else 1


def btree(nranks: int, rank: int) -> tuple[int, list[int]]:
    """NCCL's binary tree over ranks 0..nranks-1 (trees.cc, ncclGetBtree): rank's parent (-1 at the
    root, rank 0) and its children. Transcribed line for line."""
    bit = 1
    while bit < nranks and not bit & rank:
        bit <<= 1
    if rank == 0:
        return -1, ([bit >> 1] if nranks > 1 else [])
    up = (rank ^ bit) | (bit << 1)
    if up >= nranks:
        up = rank ^ bit
    lowbit = bit >> 1
    down0 = -1 if lowbit == 0 else rank - lowbit
    down1 = -1 if lowbit == 0 else rank + lowbit
    while down1 >= nranks:
        down1 = -1 if lowbit == 0 else rank + lowbit
        lowbit >>= 1
    return up, [d for d in (down0, down1) if d != -1]


def double_binary_tree(nranks: int) -> tuple[list[int], list[int]]:
    """The parent of every rank in each of NCCL's two trees (ncclGetDtree): the first is `btree`; the
    second shifts it by one rank (odd nranks) or mirrors it (even)."""
    first = [btree(nranks, r)[0] for r in range(nranks)]
    if nranks % 2:
        second = [btree(nranks, (r - 1) % nranks)[0] for r in range(nranks)]
        second = [-1 if u == -1 else (u + 1) % nranks for u in second]
    else:
        second = [btree(nranks, nranks - 1 - r)[0] for r in range(nranks)]
        second = [-1 if u == -1 else nranks - 1 - u for u in second]
    return first, second


class Communicator:
    """An NCCL communicator over GPUs grouped by machine, ranked machine after machine, on a flow network.

    `allreduce`, `reduce_scatter` and `all_gather` are SimPy generators that return when every member
    holds the result; `estimate` and `algorithm_for` are NCCL's tuner.
    """

    def __init__(self, network, machines: list[list[str]], settings: NcclSettings):
        self.network = network
        self.settings = settings
        self.machines = [list(gpus) for gpus in machines if gpus]
        self.n = sum(len(gpus) for gpus in self.machines)
        self.trees = double_binary_tree(len(self.machines))
        self._machine_of = {gpu: j for j, gpus in enumerate(self.machines) for gpu in gpus}
        self._hops: dict[tuple[str, str], Hop] = {}
        self._rings: dict[int, list[Hop]] = {}  # each channel's ring hops; -1: the trees' hops
        self._bus_bandwidth: float | None = None
        self._fills: dict[tuple[str, int], float] = {}  # pipeline fills, read once like the routes
        self.nvls_switch = self._nvls_switch()
        if self.nvls_switch is not None:  # its flows' rate and latency, read once like the hops
            links = [network.topology.link(a, b) for gpu in self.machines[0]
                     for a, b in ((gpu, self.nvls_switch), (self.nvls_switch, gpu))]
            # Bytes/s an NVLS flow reaches: the efficiency times the slowest GPU's NVLink to the switch.
            self._nvls_rate = settings.nvls_efficiency * min(link.nominal_capacity for link in links)
            self._nvls_latest = max(network.latency((link,)) for link in links)

    def _nvls_switch(self) -> str | None:
        """The NVSwitch NVLS reduces in: this communicator's one machine's, if its GPUs all hang off one
        NVLink switch and their architecture has NVLS (module docstring); else None."""
        if self.settings.nvls_efficiency <= 0 or len(self.machines) != 1 or self.n < 2:
            return None
        graph = self.network.topology.graph
        shared = set.intersection(*(set(graph.successors(gpu)) for gpu in self.machines[0]))
        switches = [node for node in shared if all(graph[gpu][node]["link"].transport.kind == "nvlink"
                                                   for gpu in self.machines[0])]
        return switches[0] if len(switches) == 1 else None

    # -- the tuner ----------------------------------------------------------------------------------
    def algorithm_for(self, nbytes: float) -> str:
        """The algorithm NCCL runs for an all-reduce of nbytes: the one set, or the tuner's (ties: ring)."""
        if self.settings.algorithm == "nvls" and self.nvls_switch is None:
            raise ValueError("NVLS needs one machine of GPUs on an NVSwitch whose architecture has it (Hopper)")
        if self.settings.algorithm != "auto":
            return self.settings.algorithm
        candidates = ("ring", "tree", "nvls") if self.nvls_switch else ("ring", "tree")
        return min(candidates, key=lambda a: self.estimate(a, nbytes))

    def estimate(self, algorithm: str, nbytes: float) -> float:
        """NCCL's predicted time of an all-reduce: latency + nbytes / algorithm bandwidth (module docstring)."""
        n, bus = self.n, self.bus_bandwidth()
        if algorithm == "nvls":
            return self.settings.launch_s + NVLS_LATENCY_S + nbytes * (n + 1) / n / self._nvls_rate
        if algorithm == "ring":
            return self.settings.launch_s + self._ring_fill(2 * (n - 1)) + nbytes * 2 * (n - 1) / (n * bus)
        tree_bus = bus * (2 if len(self.machines) == 2 else 1)
        return self.settings.launch_s + self._tree_fill() + nbytes / (TREE_EFFICIENCY * tree_bus / 2)

    def bus_bandwidth(self) -> float:
        """Bytes/s of bus bandwidth NCCL's topology promises: 2(n-1)/n S over the time a ring all-reduce
        of S takes on the links' nominal capacities, i.e. at its most loaded link."""
        if self._bus_bandwidth is None:
            load: dict = {}  # bytes per link for S = 1, every channel's ring
            for hop, nbytes in self._ring_transfers(1.0, 2 * (self.n - 1)):
                for link in self.network.topology.route(hop.src, hop.dst):
                    load[link] = load.get(link, 0.0) + nbytes
            seconds = max(b / link.nominal_capacity for link, b in load.items())
            self._bus_bandwidth = 2 * (self.n - 1) / self.n / seconds
        return self._bus_bandwidth

    # -- collectives --------------------------------------------------------------------------------
    def allreduce(self, env, nbytes: float, tag: str = "allreduce"):
        """Every member ends with the sum: the algorithm `algorithm_for` picks."""
        if self.n < 2:
            return
        if nbytes <= self.n * self.settings.ll_bytes_per_rank:
            nbytes *= 2  # LL: half of every line is flags (NcclSettings.ll_bytes_per_rank)
        algorithm = self.algorithm_for(nbytes)
        if algorithm == "nvls":
            yield from self._nvls(env, nbytes, tag)
        elif algorithm == "tree":
            yield from self._run(env, self._tree_transfers(nbytes), self._tree_fill() - self._latest("tree"), tag)
        else:
            steps = 2 * (self.n - 1)
            yield from self._run(env, self._ring_transfers(nbytes, steps),
                                 self._ring_fill(steps) - self._latest("ring"), tag)

    def reduce_scatter(self, env, nbytes: float, tag: str = "reduce-scatter"):
        """Ring, n-1 steps: member i ends with the sum of slice i (nbytes / n)."""
        if self.n > 1:
            steps = self.n - 1
            yield from self._run(env, self._ring_transfers(nbytes, steps),
                                 self._ring_fill(steps) - self._latest("ring"), tag)

    def all_gather(self, env, nbytes: float, tag: str = "all-gather"):
        """Ring, n-1 steps: every member ends with every slice."""
        yield from self.reduce_scatter(env, nbytes, tag)

    def _run(self, env, transfers: list[tuple[Hop, float]], rest: float, tag: str):
        """Launch; every transfer as its hop's streams of equal flows, all at once; then the rest of the
        fill (`rest`: the fill less the longest hop latency, which the flows paid already)."""
        yield env.timeout(self.settings.launch_s)
        # all_of over the flows (the first failure is reported, a second does not stop the run)
        yield self.network.send_all([(hop.src, hop.dst, nbytes / hop.streams)
                                     for hop, nbytes in transfers for _ in range(hop.streams)], tag)
        yield env.timeout(max(0.0, rest))

    def _latest(self, kind: str) -> float:
        """The longest latency of the hops of every channel's ring ("ring") or trees ("tree"): the part
        of the fill a collective's flows pay themselves (read once, like the fills)."""
        key = (f"{kind}-latest", 0)
        if key not in self._fills:
            if kind == "ring":
                hops = [hop for k in range(self.settings.channels) for hop in self._ring_hops(k)]
            else:
                hops = [hop for hop, _ in self._tree_transfers(0.0)]
            self._fills[key] = max(hop.latency for hop in hops)
        return self._fills[key]

    # -- NVLS ---------------------------------------------------------------------------------------
    def _nvls(self, env, nbytes: float, tag: str):
        """Launch; M (n+1)/n up to the switch and down from it on every GPU's NVLink at once, each flow
        capped at the NVLS rate; then the rest of NVLS's latency beyond the flows' own."""
        gpus, switch = self.machines[0], self.nvls_switch
        wire = nbytes * (self.n + 1) / self.n
        yield env.timeout(self.settings.launch_s)
        yield self.network.send_all([(gpu, switch, wire) for gpu in gpus] + [(switch, gpu, wire) for gpu in gpus],
                                    tag, cap=self._nvls_rate)
        yield env.timeout(max(0.0, NVLS_LATENCY_S - self._nvls_latest))

    # -- rings --------------------------------------------------------------------------------------
    def ring(self, channel: int) -> list[str]:
        """Channel k's ring: machine after machine, each machine's GPUs rotated by k."""
        return [gpus[(channel + i) % len(gpus)] for gpus in self.machines for i in range(len(gpus))]

    def _ring_hops(self, channel: int) -> list[Hop]:
        """Channel k's ring as hops (read once per channel, as `hop` reads each hop once)."""
        hops = self._rings.get(channel)
        if hops is None:
            order = self.ring(channel)
            hops = self._rings[channel] = [self.hop(a, b) for a, b in zip(order, order[1:] + order[:1])]
        return hops

    def _ring_transfers(self, nbytes: float, steps: int) -> list[tuple[Hop, float]]:
        """Each channel's ring: every member sends `steps` chunks of nbytes / (n channels) to the next."""
        c = self.settings.channels
        return [(hop, steps * nbytes / (self.n * c)) for k in range(c) for hop in self._ring_hops(k)]

    def _ring_fill(self, steps: int) -> float:
        """The most latency `steps` consecutive hops of a channel's ring add up to."""
        if ("ring", steps) in self._fills:
            return self._fills["ring", steps]
        fill = 0.0
        for k in range(self.settings.channels):
            cost = [hop.step for hop in self._ring_hops(k)]
            around = list(accumulate(cost * (1 + -(-steps // len(cost))), initial=0.0))
            fill = max(fill, max(around[i + steps] - around[i] for i in range(len(cost))))
        self._fills["ring", steps] = fill
        return fill

    # -- trees --------------------------------------------------------------------------------------
    def _chain(self, machine: int, channel: int) -> list[str]:
        """The chain inside a machine for a channel, head first: channels 2j and 2j+1 (trees 0 and 1)
        rotate the machine's GPUs by j, and tree 1 runs the other way, so heads spread over the GPUs."""
        gpus = self.machines[machine]
        chain = [gpus[(channel // 2 + i) % len(gpus)] for i in range(len(gpus))]
        return chain if channel % 2 == 0 else chain[::-1]

    def _tree_edges(self, channel: int) -> list[tuple[str, str]]:
        """(child, parent) GPU pairs of a channel's tree: each chain, then each machine's head to its
        parent machine's head."""
        parents = self.trees[channel % 2]
        edges = []
        for j in range(len(self.machines)):
            chain = self._chain(j, channel)
            edges += list(zip(chain[1:], chain))
            if parents[j] != -1:
                edges.append((chain[0], self._chain(parents[j], channel)[0]))
        return edges

    def _tree_transfers(self, nbytes: float) -> list[tuple[Hop, float]]:
        """Each channel reduces its nbytes / channels up its tree and broadcasts it down: both ways on every edge."""
        c = self.settings.channels
        hops = self._rings.get(-1)  # every channel's tree edges both ways, read once (key -1)
        if hops is None:
            hops = self._rings[-1] = [self.hop(a, b) for k in range(c) for child, parent in self._tree_edges(k)
                                      for a, b in ((child, parent), (parent, child))]
        return [(hop, nbytes / c) for hop in hops]

    def _tree_fill(self) -> float:
        """Up the deepest path (a chain's last GPU to the root machine's head) and back down."""
        if ("tree", 0) in self._fills:
            return self._fills["tree", 0]
        fill = 0.0
        for k in range(min(2, self.settings.channels)):
            parents = self.trees[k % 2]
            for leaf in range(len(self.machines)):
                chain = self._chain(leaf, k)
                up = sum(self.hop(a, b).step for a, b in zip(chain[1:], chain))
                machine = leaf
                while parents[machine] != -1:
                    up += self.hop(self._chain(machine, k)[0], self._chain(parents[machine], k)[0]).step
                    machine = parents[machine]
                fill = max(fill, 2 * up)
        self._fills["tree", 0] = fill
        return fill

    # -- hops ---------------------------------------------------------------------------------------
    def hop(self, src: str, dst: str) -> Hop:
        """src -> dst as NCCL's init found it (routes and latencies are read once, as NCCL tunes once)."""
        hop = self._hops.get((src, dst))
        if hop is None:
            links = self.network.topology.route(src, dst)
            latency = self.network.latency(links)
            between = self._machine_of[src] != self._machine_of[dst]
            tcp = between and any(link.transport.kind == "tcp" for link in links)
            hop = Hop(src, dst, latency, latency + (self.settings.socket_step_s if tcp else 0.0),
                      self.settings.sockets if tcp else 1)
            self._hops[(src, dst)] = hop
        return hop


@dataclass(frozen=True)
class BusBandwidth:
    """One all-reduce as nccl-tests reports it."""

    nbytes: float
    algorithm: str
    seconds: float
    algbw: float  # nbytes / seconds
    busbw: float  # algbw x 2(n-1)/n: comparable across n, the NIC rate a ring reaches


def measure(env, communicator: Communicator, nbytes: float) -> BusBandwidth:
    """nccl-tests' all_reduce_perf for one size: run one all-reduce of nbytes on an idle network."""
    start = env.now
    env.run(until=env.process(communicator.allreduce(env, nbytes, "nccl-tests")))
    seconds = env.now - start
    n = communicator.n
    return BusBandwidth(nbytes, communicator.algorithm_for(nbytes), seconds, nbytes / seconds,
                        nbytes / seconds * 2 * (n - 1) / n)
