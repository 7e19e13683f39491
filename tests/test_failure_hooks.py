"""Failure hooks above the network: a policy's process can be interrupted (it knows it, records it, and the
run goes on); a shard marked down refuses pushes and fails the pulls waiting on it."""

import pytest

from pssim import to_config
from pssim.policies.base import Interruption
from pssim.simulation import Simulation
from conftest import fast


def interrupted_run(policy, at, index, **overrides):
    sim = Simulation(to_config(**fast(policy=policy, cluster__workers=4, cluster__servers=2, train__steps=60,
                                      train__numerics=False, **overrides)))
    sim.env.timeout(at).callbacks.append(lambda _event: sim.policy.interrupt(index, "crash"))
    return sim.run()


def test_an_interrupted_async_worker_stops_and_the_others_finish_the_run():
    sim = interrupted_run("async", at=1e-3, index=2)
    assert sim.policy.interruptions == [Interruption(1e-3, 2, "crash")]
    assert sim.ctx.progress.global_step == 60  # the three others carried the run to train.steps
    rows = [r for r in sim.ctx.recorder.steps if r.worker == 2]
    assert rows and all(r.compute_start < 1e-3 for r in rows)
    assert max(r.compute_start for r in sim.ctx.recorder.steps) > 1e-3
    assert not sim.policy.processes[2].is_alive and not sim.stalled


def test_an_interrupted_sync_worker_stalls_the_barrier_and_the_run_ends_early():
    """BSP without recovery: the other workers wait for the crashed worker's gradient forever, so the
    clock runs out of events before train.steps (recovery is a fault model's job, not this hook's)."""
    sim = interrupted_run("sync", at=1e-3, index=0)
    assert [i.worker for i in sim.policy.interruptions] == [0]
    assert sim.stalled and 0 < sim.ctx.progress.global_step < 60


def test_interrupting_a_process_that_already_ended_is_an_error():
    sim = interrupted_run("async", at=1e-3, index=1)
    with pytest.raises(RuntimeError):
        sim.policy.interrupt(1, "again")


def test_interrupting_a_replicated_policy_stops_its_lockstep_process():
    """allreduce drives every worker from one process: interrupting it stops the job, recorded once."""
    sim = interrupted_run("allreduce", at=1e-3, index=0)
    assert [(i.worker, i.cause) for i in sim.policy.interruptions] == [(None, "crash")]
    assert sim.stalled and sim.ctx.progress.global_step < 60


def test_a_shard_marked_down_refuses_pushes_and_fails_waiting_pulls():
    """Shard 1 of 2 goes down mid-run under sync: the next push to it and the pulls waiting for its next
    version fail with ShardDown, which reaches the worker loops (a fault model would catch it)."""
    from pssim.comm.server import ShardDown

    sim = Simulation(to_config(**fast(cluster__workers=2, cluster__servers=2, train__steps=50,
                                      train__numerics=False)))
    shard = sim.ctx.servers.shards[1]
    sim.env.timeout(1e-3).callbacks.append(lambda _event: shard.mark_down())
    with pytest.raises(ShardDown):
        sim.run()
    assert 1e-3 <= sim.env.now < 1e-3 + 3e-4 and not shard.up  # within one iteration (~2e-4 s) of the failure
    assert 0 < sim.ctx.progress.global_step < 50
