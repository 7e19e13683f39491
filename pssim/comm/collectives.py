"""Ideal collectives over the flow network: ring all-reduce and its halves, inside and across machines.

These are the closed-form models (one flow per ring hop, no channels, sockets or launch costs), used by
BytePS's and Herring's local reduce and by `policy.algorithm=ideal_ring`; NCCL as it runs (channels,
TCP sockets, Ring or Tree) is pssim/comm/nccl.py.

A ring phase of r rounds, in each of which every member sends one chunk to its successor, is
pipelined as NCCL does: member i streams its r chunks to member i+1 as one flow that pays the
per-message latency r times (once before its first byte, r-1 times after its last), and the phase
ends when the last of these n flows lands. If a link of the ring fails, the phase fails with the
network's LinkDown (once, however many of its flows the failure hit). A ring thus
runs at its slowest link's pace, and one flow per member (not one per round) keeps large rings cheap
to simulate. A ring all-reduce of M bytes over n members is 2(n-1) rounds of M/n bytes, so on a star
of bandwidth B and per-message latency alpha it takes 2(n-1)/n * M/B + 2(n-1) * alpha
(REFERENCES.md, shared formulas).
"""

from __future__ import annotations


def ring_rounds(env, network, members: list[str], chunk: float, rounds: int, tag: str):
    """`rounds` ring rounds in which member i sends `chunk` bytes to member i+1, pipelined."""
    n = len(members)
    if n < 2 or rounds < 1:
        return
    # all_of over the n flows (the phase reports the first failure; a second does not stop the run)
    yield network.send_all([(members[i], members[(i + 1) % n], rounds * chunk) for i in range(n)], tag,
                           messages=rounds)


def ring_allreduce(env, network, members: list[str], nbytes: float, tag: str = "allreduce"):
    """Reduce-scatter then all-gather around the ring: 2(n-1) rounds of nbytes/n."""
    n = len(members)
    yield from ring_rounds(env, network, members, nbytes / n, 2 * (n - 1), tag)


def reduce_scatter(env, network, members: list[str], nbytes: float, tag: str = "reduce-scatter"):
    """n-1 rounds of nbytes/n: afterwards member i holds the sum of slice i."""
    n = len(members)
    yield from ring_rounds(env, network, members, nbytes / n, n - 1, tag)


def all_gather(env, network, members: list[str], nbytes: float, tag: str = "all-gather"):
    """n-1 rounds of nbytes/n: afterwards every member holds every slice."""
    n = len(members)
    yield from ring_rounds(env, network, members, nbytes / n, n - 1, tag)


def concurrently(env, generators):
    """Run SimPy generators side by side; done when all are."""
    procs = [env.process(g) for g in generators]
    if procs:
        yield env.all_of(procs)


def hierarchical_allreduce(env, network, machines: list[list[str]], nbytes: float):
    """Reduce-scatter inside every machine, one ring per local rank across machines on its 1/g slice,
    all-gather inside every machine (Horovod's hierarchical all-reduce)."""
    g = len(machines[0])
    yield from concurrently(env, [reduce_scatter(env, network, gpus, nbytes, "local-rs") for gpus in machines])
    yield from concurrently(env, [ring_allreduce(env, network, [gpus[l] for gpus in machines], nbytes / g,
                                                 "cross-allreduce") for l in range(g)])
    yield from concurrently(env, [all_gather(env, network, gpus, nbytes, "local-ag") for gpus in machines])


def reduce_to_host(env, network, gpus: list[str], host: str, nbytes: float):
    """Local reduce of a machine's GPUs into host memory: reduce-scatter over the intra-node fabric,
    then each GPU copies its reduced 1/g slice to the host."""
    if len(gpus) == 1 and gpus[0] == host:
        return
    yield from reduce_scatter(env, network, gpus, nbytes, "local-reduce")
    g = len(gpus)
    yield env.all_of([network.send(gpu, host, nbytes / g, "to-host") for gpu in gpus])


def broadcast_from_host(env, network, gpus: list[str], host: str, nbytes: float):
    """The reverse: each GPU copies a 1/g slice from the host, then all-gather over the fabric."""
    if len(gpus) == 1 and gpus[0] == host:
        return
    g = len(gpus)
    yield env.all_of([network.send(host, gpu, nbytes / g, "from-host") for gpu in gpus])
    yield from all_gather(env, network, gpus, nbytes, "local-broadcast")
