"""The communication building blocks on their own: clocks and gates, the shard's failure hook, the
priority queue under an in-flight window, and the summation service's push, against closed forms; and
HetPipe's GPU queue against SimPy's priority resource."""

import pickle

import numpy as np
import pytest
import simpy

from pssim.cluster.gpu_queue import GpuQueue
from pssim.comm.gates import Clock, MinClock, wait_until
from pssim.comm.queues import PriorityWindow
from pssim.comm.server import ServerShard, ShardDown
from pssim.comm.summation import SummationService
from pssim.network import FlowNetwork, Transport, star


def at(env, event, log, what):
    """Log (now, what) when the event fires, or (now, the exception) when it fails. `event` may be a
    function that makes it, called inside the watching process (for an event that fails at once)."""
    def watch():
        try:
            yield event() if callable(event) else event
            log.append((env.now, what))
        except Exception as error:  # noqa: BLE001  (the test inspects it)
            log.append((env.now, error))
    return env.process(watch())


def later(env, t, action):
    """Call action() at time t."""
    def run():
        yield env.timeout(t)
        action()
    env.process(run())


# -- Clock -------------------------------------------------------------------------------------------
def test_clock_advances_by_one_or_to_a_value_and_never_back():
    clock = Clock(simpy.Environment())
    clock.advance()
    assert clock.value == 1
    clock.advance(to=5)
    assert clock.value == 5
    clock.advance(to=5)  # staying put is allowed
    assert clock.value == 5
    with pytest.raises(ValueError):
        clock.advance(to=4)


def test_clock_reached_fires_when_the_value_gets_there_and_at_once_if_it_is():
    env = simpy.Environment()
    clock = Clock(env)
    log = []
    for v in (3, 1, 2, 3):
        at(env, clock.reached(v), log, v)
    for t in (1.0, 2.0, 3.0):  # one tick a second
        later(env, t, clock.advance)
    env.run()
    # released at the tick that reaches them; two waiters on 3 in the order they came
    assert log == [(1.0, 1), (2.0, 2), (3.0, 3), (3.0, 3)]
    assert clock.waiting == 0
    done = clock.reached(2)
    assert done.triggered and done.ok


def test_a_jump_releases_every_waiter_it_passes_in_arrival_order():
    env = simpy.Environment()
    clock = Clock(env)
    log = []
    for v in (4, 2, 9, 3):
        at(env, clock.reached(v), log, v)
    later(env, 1.0, lambda: clock.advance(to=4))
    env.run()
    assert log == [(1.0, 4), (1.0, 2), (1.0, 3)]
    assert clock.waiting == 1


def test_a_broken_clock_fails_its_waiters_with_the_error():
    env = simpy.Environment()
    clock = Clock(env)
    log = []
    at(env, clock.reached(1), log, "never")
    later(env, 2.0, lambda: clock.fail(RuntimeError("gone")))
    env.run()
    assert len(log) == 1 and log[0][0] == 2.0 and isinstance(log[0][1], RuntimeError)


# -- MinClock ----------------------------------------------------------------------------------------
def test_min_clock_is_the_slowest_member_and_lead_is_the_distance_to_it():
    clocks = MinClock(simpy.Environment(), 3)
    clocks.tick(0, to=4)
    clocks.tick(1)
    assert clocks.value == 0 and [clocks[i] for i in range(3)] == [4, 1, 0]
    assert [clocks.lead(i) for i in range(3)] == [4, 1, 0]
    clocks.tick(2, to=2)
    assert clocks.value == 1
    assert [clocks.lead(i) for i in range(3)] == [3, 0, 1]
    with pytest.raises(ValueError):
        clocks.tick(0, to=3)


def test_min_clock_gate_opens_when_the_slowest_member_catches_up():
    """SSP with s=1: member 0 at clock 3 may go on once every member has reached 3 - 1 = 2."""
    env = simpy.Environment()
    clocks = MinClock(env, 2)
    clocks.tick(0, to=3)
    log = []
    at(env, clocks.reached(2), log, "go")
    at(env, clocks.members[0].reached(4), log, "member 0 at 4")
    later(env, 1.0, lambda: clocks.tick(1))  # min 1: still shut
    later(env, 2.0, lambda: clocks.tick(1))  # min 2: open
    later(env, 5.0, lambda: clocks.tick(0))
    env.run()
    assert log == [(2.0, "go"), (5.0, "member 0 at 4")]


def test_min_clock_follows_the_minimum_through_random_ticks():
    """The minimum it keeps (recomputed only when the last member at it moves) is min over the members
    after every tick, ties at the minimum and jumps included (3,000 random ticks of 7 members)."""
    import random
    rng = random.Random(7)
    clocks = MinClock(simpy.Environment(), 7)
    for _ in range(3000):
        member = rng.randrange(7)
        clocks.tick(member, to=clocks[member] + rng.choice([0, 0, 1, 1, 1, 2, 5]))
        assert clocks.value == min(clocks[i] for i in range(7))


# -- wait_until ---------------------------------------------------------------------------------------
def test_wait_until_sleeps_only_while_the_time_is_ahead():
    env = simpy.Environment()
    times = []

    def proc():
        yield env.timeout(1.0)
        yield from wait_until(env, 3.5)
        times.append(env.now)
        yield from wait_until(env, 2.0)  # already past: no timeout at all
        times.append(env.now)

    env.process(proc())
    env.run()
    assert times == [3.5, 3.5]
    assert list(wait_until(env, env.now)) == []  # nothing yielded when t is now


# -- ServerShard failure hook ---------------------------------------------------------------------------
def shard(env):
    return ServerShard(env, index=0, host="server0", lo=0, hi=10, nbytes=40.0, state=None)


def test_shard_version_is_its_clock():
    env = simpy.Environment()
    s = shard(env)
    log = []
    at(env, s.reached(2), log, "v2")
    later(env, 1.0, lambda: s.apply(None))
    later(env, 3.0, lambda: s.apply(None))
    env.run()
    assert s.version == 2 and log == [(3.0, "v2")]


def test_a_shard_going_down_fails_its_waiters_and_new_requests_until_it_is_back():
    env = simpy.Environment()
    s = shard(env)
    log = []
    at(env, s.reached(1), log, "v1")
    at(env, s.reached(5), log, "v5")
    later(env, 2.0, s.mark_down)
    env.run()
    assert [t for t, _ in log] == [2.0, 2.0]
    assert all(isinstance(e, ShardDown) for _, e in log) and log[0][1].shard == 0 and log[0][1].at == 2.0
    copy = pickle.loads(pickle.dumps(log[0][1]))  # its fields are its args (SimPy copies failures so)
    assert (copy.shard, copy.host, copy.at) == (0, "server0", 2.0)

    log.clear()
    at(env, lambda: s.reached(0), log, "v0 while down")  # even a version it has: the shard cannot serve it
    env.run()
    assert isinstance(log[0][1], ShardDown)
    with pytest.raises(ShardDown):
        s.apply(None)
    with pytest.raises(ShardDown):
        s.check_up()
    assert s.version == 0

    s.mark_up()
    s.check_up()
    log.clear()
    at(env, s.reached(1), log, "v1 after")
    later(env, 1.0, lambda: s.apply(None))
    env.run()
    assert log == [(env.now, "v1 after")] and s.version == 1


# -- PriorityWindow ---------------------------------------------------------------------------------
def drain(env, queue, transfer_s, log, count):
    """The sender: take `count` items; each transfer takes transfer_s[item] seconds, then done()."""
    def transfer(item):
        yield env.timeout(transfer_s[item])
        queue.done()

    def sender():
        for _ in range(count):
            item = yield from queue.get()
            log.append((env.now, item, queue.in_flight))
            env.process(transfer(item))

    return env.process(sender())


def test_window_of_one_sends_in_priority_order_and_a_better_item_overtakes_the_queue():
    """Window 1, transfers of 1 s. At t=0 items c(3), d(4), b(2) are queued: b first, then c at 1.
    At t=1.5 a(1) is put while d waits: a overtakes d, going at 2; d at 3."""
    env = simpy.Environment()
    queue = PriorityWindow(env, window=1)
    log = []
    drain(env, queue, dict.fromkeys("abcd", 1.0), log, 4)
    for priority, item in ((3, "c"), (4, "d"), (2, "b")):
        queue.put(priority, item)
    later(env, 1.5, lambda: queue.put(1, "a"))
    env.run()
    assert [(t, item) for t, item, _ in log] == [(0.0, "b"), (1.0, "c"), (2.0, "a"), (3.0, "d")]


def test_the_window_caps_the_items_in_flight():
    """Window 2, five items of 1 s each queued at once: two go at 0, two at 1, one at 2."""
    env = simpy.Environment()
    queue = PriorityWindow(env, window=2)
    log = []
    drain(env, queue, dict.fromkeys(range(5), 1.0), log, 5)
    for i in range(5):
        queue.put(i, i)
    env.run()
    assert [(t, item) for t, item, _ in log] == [(0.0, 0), (0.0, 1), (1.0, 2), (1.0, 3), (2.0, 4)]
    assert max(n for _, _, n in log) == 2
    assert queue.in_flight == 0 and len(queue) == 0


def test_items_put_in_one_instant_leave_by_priority_not_by_arrival():
    """The sender waits on an empty queue; at t=1 one producer puts 5, 1, 3 in that order. The choice
    is made when the sender runs, after all three are in: 1, then (window 1, 1 s each) 3, then 5."""
    env = simpy.Environment()
    queue = PriorityWindow(env, window=1)
    log = []
    drain(env, queue, dict.fromkeys((1, 3, 5), 1.0), log, 3)

    def producer():
        yield env.timeout(1.0)
        for p in (5, 1, 3):
            queue.put(p, p)

    env.process(producer())
    env.run()
    assert [(t, item) for t, item, _ in log] == [(1.0, 1), (2.0, 3), (3.0, 5)]


def test_equal_priorities_leave_in_the_order_they_were_put():
    env = simpy.Environment()
    queue = PriorityWindow(env, window=1)
    log = []
    drain(env, queue, dict.fromkeys("xyz", 1.0), log, 3)
    for item in "zxy":
        queue.put(0, item)
    env.run()
    assert [item for _, item, _ in log] == ["z", "x", "y"]


def test_release_when_returns_the_credit_when_the_event_fires():
    env = simpy.Environment()
    queue = PriorityWindow(env, window=1)
    log = []

    def sender():
        for _ in range(2):
            item = yield from queue.get()
            log.append((env.now, item))
            queue.release_when(env.timeout(2.5))

    env.process(sender())
    queue.put(0, "first")
    queue.put(1, "second")
    env.run()
    assert log == [(0.0, "first"), (2.5, "second")]


# -- SummationService ----------------------------------------------------------------------------------
GB = 1e9
B = 1.25 * GB  # bytes/s, efficiency 1
LATENCY, HOP = 20e-6, 1e-6
ALPHA = LATENCY + 2 * HOP  # host -> switch -> host: two hops plus the per-message overhead
SUM, TRANSPORT = 0.5e-9, 0.25e-9  # CPU seconds per byte: adding, and the transport's per-byte work
S = 1e6


def service_on_a_star(hosts, cores):
    env = simpy.Environment()
    t = Transport("t", "tcp", B, 1.0, LATENCY, HOP, float("inf"), TRANSPORT)
    net = FlowNetwork(env, star(hosts, t))
    return env, SummationService(env, net, "svc", cores, SUM, TRANSPORT, "test")


def run_pushes(env, pushes):
    """Start the pushes at t=0; return when each one's sum came back and when each one landed."""
    summed, landed = [], []
    for push in pushes:
        push.callbacks.append(lambda _e: summed.append(env.now))
        push.landed.callbacks.append(lambda _e: landed.append(env.now))
    env.run()
    return summed, landed


def test_one_remote_push_costs_two_network_trips_plus_its_cpu():
    """A machine pushes S bytes to a service on another host; alone, the sum is its own push:
    landed at alpha + S/B; added in S(sum + transport); sent back after S transport of CPU, in
    alpha + S/B. Total 2(alpha + S/B) + S(sum + 2 transport)."""
    env, svc = service_on_a_star(["svc", "w"], cores=1)
    summed, landed = run_pushes(env, [svc.push("w", "k", S, ["w"])])
    assert landed == [pytest.approx(ALPHA + S / B, rel=1e-12)]
    assert summed == [pytest.approx(2 * (ALPHA + S / B) + S * (SUM + 2 * TRANSPORT), rel=1e-12)]
    assert [what for _, _, what in svc.cpu.busy] == ["sum", "send"]


def test_the_sum_waits_for_every_machine_and_a_local_push_pays_no_transport():
    """Machines svc (the service's own host) and w. svc's push is local: it lands at 0 and is added in
    S*sum, before w's lands at alpha + S/B. w's is added by t1 = alpha + S/B + S(sum + transport); the
    sum is back at svc at t1 (no transport CPU, no network) and at w at t1 + S transport + alpha + S/B."""
    env, svc = service_on_a_star(["svc", "w"], cores=1)
    assert S * SUM < ALPHA + S / B
    summed, landed = run_pushes(env, [svc.push("svc", "k", S, ["svc", "w"]), svc.push("w", "k", S, ["svc", "w"])])
    t1 = ALPHA + S / B + S * (SUM + TRANSPORT)
    assert summed == [pytest.approx(t1, rel=1e-12), pytest.approx(t1 + S * TRANSPORT + ALPHA + S / B, rel=1e-12)]
    assert landed == [0.0, pytest.approx(ALPHA + S / B, rel=1e-12)]


@pytest.mark.parametrize("cores", [1, 2, 4])
def test_a_c_core_service_adds_c_pushes_at_once(cores):
    """c keys pushed from the service's own host at t=0 (no network, no transport CPU), each the only
    machine of its key: on c cores all c adds run side by side and every sum is back at S*sum;
    one core would take them one after the other (the last at c*S*sum)."""
    env, svc = service_on_a_star(["svc"], cores=cores)
    summed, _ = run_pushes(env, [svc.push("svc", i, S, ["svc"]) for i in range(cores)])
    assert summed == pytest.approx([S * SUM] * cores, rel=1e-12)


@pytest.mark.parametrize("c", [2, 3])
def test_c_remote_machines_on_a_c_core_service(c):
    """c machines each push S to a service on its own host at t=0: the pushes share its downlink and
    land together at alpha + cS/B; the c adds run on c cores at once, S(sum + transport); the c
    returns pay S transport each, side by side, then share its uplink: alpha + cS/B again."""
    hosts = [f"w{i}" for i in range(c)]
    env, svc = service_on_a_star(["svc", *hosts], cores=c)
    summed, landed = run_pushes(env, [svc.push(h, "k", S, hosts) for h in hosts])
    assert landed == pytest.approx([ALPHA + c * S / B] * c, rel=1e-12)
    assert summed == pytest.approx([2 * (ALPHA + c * S / B) + S * (SUM + 2 * TRANSPORT)] * c, rel=1e-12)


def test_a_push_from_outside_the_machines_or_twice_is_refused():
    env, svc = service_on_a_star(["svc", "w"], cores=1)
    with pytest.raises(ValueError):
        svc.push("w", "k", S, ["svc"])
    svc.push("w", "k", S, ["svc", "w"])
    with pytest.raises(ValueError):
        svc.push("w", "k", S, ["svc", "w"])


def test_a_shard_hands_out_one_snapshot_per_state_of_its_parameters():
    """Pulls of one version share one copy (so workers on that version share a tensor), a copy never
    changes afterwards, and an update, an `overwrite` (a replica taking over, the version unchanged) or
    any other in-place write gives the next pull the new values."""
    import torch
    from pssim.workload.optimizer import SGD
    from pssim.workload.state import ModelState
    env = simpy.Environment()
    params = torch.zeros(10, dtype=torch.float64)
    s = ServerShard(env, 0, "server0", 0, 10, 40.0, ModelState(params, SGD(0.5, 0.0, 0.0)))
    first = s.snapshot()
    assert s.snapshot() is first
    s.apply(torch.ones(10, dtype=torch.float64))  # params -= 0.5
    after = s.snapshot()
    assert after is not first and torch.equal(first, torch.zeros(10, dtype=torch.float64))
    assert torch.equal(after, torch.full((10,), -0.5, dtype=torch.float64))
    s.overwrite(torch.full((10,), 2.0, dtype=torch.float64), None)
    assert s.version == 1 and torch.equal(s.snapshot(), torch.full((10,), 2.0, dtype=torch.float64))
    assert torch.equal(after, torch.full((10,), -0.5, dtype=torch.float64))
    params.add_(1.0)  # any in-place write to the model the shard views, however made
    assert torch.equal(s.snapshot(), torch.full((10,), 3.0, dtype=torch.float64))


def test_a_resend_after_the_worker_crashed_keeps_the_original_record():
    """A push part re-sent after its shard's server changed (bounded_delay's takeover) keeps the record
    of the step it began with, though the worker crashed meanwhile (Policy.crash_worker sets
    worker.current = None)."""
    from types import SimpleNamespace
    from pssim import to_config
    from pssim.cluster.worker import StepRecord
    from pssim.comm.ps import ParameterServers
    from conftest import fast
    env = simpy.Environment()
    transport = Transport.from_config(to_config(**fast()).network)
    network = FlowNetwork(env, star(["worker0", "server0", "server1"], transport))
    shard = ServerShard(env, 0, "server0", 0, 10, 4e6, None)
    ps = ParameterServers(env, network, [shard], 1e-9, 1e-9, on_version=lambda: None)
    rec = StepRecord(0, 0, 0)
    worker = SimpleNamespace(host="worker0", index=0, current=rec, delivered=0)
    arrived = []

    def pusher():
        try:
            yield from ps.push(worker, None, lambda s, w, g: arrived.append(env.now))
        except simpy.Interrupt:
            pass

    proc = env.process(pusher())

    def crash(_):
        proc.interrupt()
        worker.current = None  # Policy.crash_worker
        shard.host = "server1"  # Replication.crash: the range's new primary

    env.timeout(1e-4).callbacks.append(crash)
    env.run()
    assert len(arrived) == 1
    assert rec.bytes_sent == 4e6 and rec.push_end == arrived[0]


def test_a_part_failing_after_its_pusher_was_interrupted_does_not_stop_the_run():
    """A worker interrupted mid-push (a crash) no longer waits on its push; when a part then fails (its
    link goes down) the run goes on, while a pusher still waiting gets the LinkDown."""
    from pssim import to_config
    from pssim.cluster.worker import StepRecord
    from pssim.comm.ps import ParameterServers
    from pssim.network.errors import LinkDown
    from conftest import fast
    transport = Transport.from_config(to_config(**fast()).network)
    for interrupted in (True, False):
        env = simpy.Environment()
        network = FlowNetwork(env, star(["worker0", "server0"], transport))
        ps = ParameterServers(env, network, [ServerShard(env, 0, "server0", 0, 10, 4e6, None)], 0.0, 0.0,
                              on_version=lambda: None)
        worker = type("W", (), {"host": "worker0", "index": 0, "current": StepRecord(0, 0, 0), "delivered": 0})()
        caught = []

        def pusher():
            try:
                yield from ps.push(worker, None, lambda s, w, g: None)
            except (simpy.Interrupt, LinkDown) as error:
                caught.append(type(error).__name__)

        proc = env.process(pusher())
        if interrupted:
            env.timeout(1e-4).callbacks.append(lambda _: proc.interrupt())
        env.timeout(2e-4).callbacks.append(lambda _: network.fail_link("worker0", "switch"))
        env.run()  # must not raise
        assert caught == (["Interrupt"] if interrupted else ["LinkDown"])


# -- GpuQueue ----------------------------------------------------------------------------------------
def _gpu_schedule(use_queue: bool, jobs):
    """Run `jobs` (arrival, priority, seconds, then: seconds of its follow-up at priority 0 or None) on one
    GPU; each job's process asks for its follow-up the moment its first piece ends (a minibatch's backward
    after its forward). Returns (job, piece, start, end) in the order pieces end."""
    env = simpy.Environment()
    gpu = GpuQueue(env) if use_queue else simpy.PriorityResource(env, capacity=1)
    log = []

    def piece(priority, seconds):
        if use_queue:
            done = gpu.run(priority, seconds)
            yield done
            return
        with gpu.request(priority=priority) as turn:
            yield turn
            yield env.timeout(seconds)

    def job(i, arrival, priority, seconds, then):
        yield env.timeout(arrival)
        for k, (p, s) in enumerate([(priority, seconds)] + ([(0, then)] if then is not None else [])):
            asked = env.now
            yield from piece(p, s)
            log.append((i, k, round(env.now - s, 12), round(env.now, 12), asked))

    for i, j in enumerate(jobs):
        env.process(job(i, *j))
    env.run()
    return log


def test_a_gpu_queue_runs_pieces_in_a_priority_resources_order():
    """Random jobs (arrivals on a coarse grid, so many tie) on one GPU: the GpuQueue starts and ends every
    piece when a simpy.PriorityResource(capacity=1) does: the lowest priority number first, then the
    earliest request, then first come; a follow-up asked for the instant its first piece ends competes
    with the pieces already waiting."""
    rng = np.random.default_rng(7)
    for _ in range(200):
        jobs = [(float(rng.integers(0, 6)), int(rng.integers(0, 3)), float(rng.integers(1, 4)),
                 float(rng.integers(1, 3)) if rng.random() < 0.6 else None) for _ in range(int(rng.integers(1, 12)))]
        ours = sorted(_gpu_schedule(True, jobs))
        assert ours == sorted(_gpu_schedule(False, jobs))
        busy = sorted((start, end) for _, _, start, end, _ in ours)
        assert all(a[1] <= b[0] for a, b in zip(busy, busy[1:]))  # one piece at a time
