"""Layer-aware profiles (activation sizes, sparse layers, stage splits) and parameter-server keys."""

from types import SimpleNamespace

import pytest
import simpy

from pssim import ConfigError, to_config
from pssim.cluster.worker import StepRecord
from pssim.comm.ps import Key, ParameterServers, shard_keys, shard_ranges
from pssim.comm.server import ServerShard, ShardDown
from pssim.network.flows import FlowNetwork
from pssim.network.topology import star
from pssim.network.transport import Transport
from pssim.simulation import Simulation
from pssim.workload.models import mlp
from pssim.workload.profiles import Layer, Profile, bert_large, from_model, resnet50, vgg16
from conftest import fast


def layer(profile, name):
    return next(l for l in profile.layers if l.name == name)


# -- activation sizes, by hand ------------------------------------------------------------------------
def test_resnet50_activations_are_channels_times_resolution_times_four_bytes():
    p = resnet50()
    assert layer(p, "conv1").activation_bytes == 64 * 112 * 112 * 4
    assert layer(p, "layer1.0.conv3").activation_bytes == 256 * 56 * 56 * 4
    assert layer(p, "layer2.0.conv2").activation_bytes == 128 * 28 * 28 * 4  # v1.5: stride on the 3x3
    assert layer(p, "layer4.2.conv3").activation_bytes == 2048 * 7 * 7 * 4
    assert layer(p, "fc").activation_bytes == 1000 * 4


def test_vgg16_activations_conv_at_its_resolution_dense_its_out_features():
    p = vgg16()
    assert layer(p, "conv1").activation_bytes == 64 * 224 * 224 * 4
    assert layer(p, "conv13").activation_bytes == 512 * 14 * 14 * 4
    assert layer(p, "fc6").activation_bytes == 4096 * 4
    assert layer(p, "fc8").activation_bytes == 1000 * 4


def test_bert_large_activations_are_per_token_hidden_vectors():
    p = bert_large()
    assert layer(p, "embeddings").activation_bytes == 128 * 1024 * 4
    assert layer(p, "encoder7.ffn").activation_bytes == 128 * 1024 * 4
    assert layer(p, "pooler").activation_bytes == 1024 * 4


def test_the_numerics_models_profile_activations_are_fan_out_times_four():
    p = from_model(mlp(32, 10, [64]))
    assert [l.activation_bytes for l in p.layers] == [64 * 4, 10 * 4]


def test_every_preset_layer_is_dense_with_activations():
    for p in (resnet50(), vgg16(), bert_large()):
        assert all(l.kind == "dense" and l.rows == 0 and l.activation_bytes > 0 for l in p.layers)


def test_a_sparse_layer_has_rows_of_equal_bytes_and_a_dense_one_has_none():
    emb = Layer("emb", 1000 * 16, 0, 16 * 4, kind="sparse", rows=1000)
    assert emb.sparse and emb.row_bytes == 16 * 4 and emb.rows * emb.row_bytes == emb.nbytes
    with pytest.raises(ValueError):
        Layer("fc", 10, 10).row_bytes
    with pytest.raises(ValueError):
        Layer("emb", 1001, 0, kind="sparse", rows=10)  # rows must divide the parameters
    with pytest.raises(ValueError):
        Layer("x", 10, 10, kind="conv")


# -- stage split --------------------------------------------------------------------------------------
def macs_profile(*macs):
    return Profile("hand", tuple(Layer(f"l{i}", 1, m, 4) for i, m in enumerate(macs)))


def test_stages_cut_nearest_to_equal_shares_of_macs_ties_to_the_earlier_cut():
    p = macs_profile(10, 10, 10, 10, 20, 40)  # prefix MACs 0 10 20 30 40 60 100
    assert p.stages(1) == (range(0, 6),)
    # target 50: 40 and 60 are equally near, the earlier cut wins
    assert p.stages(2) == (range(0, 4), range(4, 6))
    # targets 33.3 (30 is nearest) and 66.7 (60: the last layer must stay for stage 3)
    assert p.stages(3) == (range(0, 3), range(3, 5), range(5, 6))
    assert p.stages(6) == tuple(range(i, i + 1) for i in range(6))
    with pytest.raises(ValueError):
        p.stages(7)


def test_every_stage_keeps_a_layer_even_behind_a_huge_one():
    assert macs_profile(100, 1, 1).stages(3) == (range(0, 1), range(1, 2), range(2, 3))
    assert macs_profile(1, 1, 100).stages(2) == (range(0, 2), range(2, 3))


def test_resnet50_in_two_stages_is_balanced_within_two_percent():
    p = resnet50()
    a, b = p.stages(2)
    assert a.start == 0 and a.stop == b.start and b.stop == len(p.layers)
    share = sum(p.layers[i].macs for i in a) / p.macs
    assert share == pytest.approx(0.5, abs=0.02)


# -- parameter-server keys ----------------------------------------------------------------------------
def test_resnet50_keys_on_three_servers_hold_exactly_the_shards_bytes():
    cfg = to_config(**fast(profile="resnet50", train__numerics=False, **{"cluster.servers": 3}))
    sim = Simulation(cfg, progress=False)
    ps, wl, profile = sim.ctx.servers, sim.ctx.workload, resnet50()
    ranges = shard_ranges(wl.n_params, 3)
    for shard, (lo, hi) in zip(ps.shards, ranges):
        assert shard.nbytes == wl.wire_bytes(lo, hi)  # as before keys existed
        assert ps.push_bytes(shard) == shard.nbytes
        assert ps.push_bytes(shard, {0: 1}) == shard.nbytes  # no sparse layer: rows change nothing
        assert sum(k.nbytes for k in ps.keys[shard.index]) == pytest.approx(shard.nbytes, rel=1e-12)
    # The keys tile the profile's layers in order: each layer's pieces are contiguous and add up to it.
    keys = [k for s in ps.shards for k in ps.keys[s.index]]
    assert [k.layer for k in keys] == sorted(k.layer for k in keys)
    assert {k.layer for k in keys} == set(range(len(profile.layers)))
    for i, l in enumerate(profile.layers):
        pieces = [k for k in keys if k.layer == i]
        assert pieces[0].offset == 0
        assert all(a.offset + a.nbytes == pytest.approx(b.offset) for a, b in zip(pieces, pieces[1:]))
        assert sum(k.nbytes for k in pieces) == pytest.approx(l.nbytes, rel=1e-12)
    assert sum(len(ps.keys[s.index]) for s in ps.shards) == len(profile.layers) + 2  # two layers cut


# A hand-made profile: 4,000 dense bytes, an embedding table of 100 rows x 32 bytes, 1,000 dense bytes.
SPARSE = Profile("sparse", (Layer("dense0", 1000, 1000, 4), Layer("emb", 800, 0, 32, kind="sparse", rows=100),
                            Layer("head", 250, 250, 4)))
ROW_BYTES = 32


def test_a_sparse_layer_cut_by_a_boundary_gives_each_shard_its_rows():
    n = SPARSE.params  # boundaries at 4 * lo bytes
    ranges = shard_ranges(n, 3)  # lo = 0, 683, 1367: bytes 2732 and 5468
    keys = shard_keys(SPARSE, ranges, n)
    assert [[(k.layer, k.offset, k.nbytes) for k in ks] for ks in keys] == [
        [(0, 0, 2732)], [(0, 2732, 1268), (1, 0, 1468)], [(1, 1468, 1732), (2, 0, 1000)]]
    emb = [k for ks in keys for k in ks if k.layer == 1]
    # 1468 / 32 = 45.9: rows 0..45 start in the first piece, rows 46..99 in the second
    assert [(k.first_row, k.rows) for k in emb] == [(0, 46), (46, 54)]
    for t in (0, 1, 7, 46, 99, 100, 500):
        shares = [k.touched(t) for k in emb]
        assert sum(shares) == min(t, 100) and all(s <= k.rows for s, k in zip(shares, emb))
    assert [k.push_bytes(7) for k in emb] == [3 * ROW_BYTES, 4 * ROW_BYTES]
    assert [k.push_bytes(None) for k in emb] == [1468, 1732]  # no row count: the whole piece
    assert Key(0, 0, 2732).push_bytes(7) == 2732  # a dense key always carries its bytes


def lone_push(servers: int, rows_touched):
    """One worker pushes SPARSE to `servers` shards on an otherwise idle tcp_10g star."""
    cfg = to_config(**fast())
    net_cfg = cfg.network
    env = simpy.Environment()
    transport = Transport.from_config(net_cfg)
    hosts = ["worker0", *(f"server{j}" for j in range(servers))]
    network = FlowNetwork(env, star(hosts, transport))
    n = SPARSE.params
    ranges = shard_ranges(n, servers)
    shards = [ServerShard(env, j, f"server{j}", lo, hi, SPARSE.nbytes * (hi - lo) / n, None)
              for j, (lo, hi) in enumerate(ranges)]
    keys = shard_keys(SPARSE, ranges, n)
    aggregation = 1e-9
    ps = ParameterServers(env, network, shards, transport.cpu_s_per_byte + aggregation, transport.cpu_s_per_byte,
                          on_version=lambda: None, keys={s.index: keys[s.index] for s in shards})
    worker = SimpleNamespace(host="worker0", index=0, current=StepRecord(0, 0, 0), delivered=0)
    env.process(ps.push(worker, None, lambda shard, w, grad: None, rows_touched=rows_touched))
    env.run()
    return SimpleNamespace(rec=worker.current, network=network, shards=shards, net=net_cfg, ps=ps,
                           cpu_per_byte=transport.cpu_s_per_byte + aggregation)


@pytest.mark.parametrize("touched", [0, 7, 100])
def test_a_push_with_k_rows_touched_carries_k_rows_plus_the_dense_bytes(touched):
    dense = 4000 + 1000
    run = lone_push(1, {1: touched})
    sent = dense + touched * ROW_BYTES
    assert run.network.sent["worker0"] == sent and run.rec.bytes_sent == sent
    # Closed form on an idle network: two hops, one message latency, the bytes at the flow's rate,
    # then the shard's CPU on the bytes it actually received.
    c = run.net
    rate = min(c.bandwidth_gbps * c.efficiency, c.flow_cap_gbps or float("inf")) / 8 * 1e9
    expected = 2 * c.hop_latency_us * 1e-6 + c.latency_us * 1e-6 + sent / rate + sent * run.cpu_per_byte
    assert run.rec.push_end - run.rec.comm_start == pytest.approx(expected, rel=1e-12)
    (start, end, _), = run.shards[0].cpu.busy
    assert end - start == pytest.approx(sent * run.cpu_per_byte, rel=1e-12)


def test_without_rows_touched_a_sparse_layer_is_pushed_whole():
    run = lone_push(1, None)
    assert run.network.sent["worker0"] == SPARSE.nbytes == run.rec.bytes_sent


def test_rows_touched_of_a_split_sparse_layer_add_up_over_the_shards():
    run = lone_push(3, {1: 7})
    assert run.network.sent["worker0"] == pytest.approx(5000 + 7 * ROW_BYTES, rel=1e-12)
    assert [run.ps.push_bytes(s, {1: 7}) for s in run.shards] == [2732, 1268 + 3 * 32, 4 * 32 + 1000]


def test_more_stages_than_profile_layers_is_a_config_error():
    from pssim import simulate
    with pytest.raises(ConfigError, match="cluster.gpus_per_worker"):
        simulate(**fast(**{"cluster.gpus_per_worker": 3}))  # the MLP's profile has two layers


def test_a_push_that_lands_on_a_shard_marked_down_is_refused_and_never_applied():
    """ServerShard.mark_down (the failure hook): the push's bytes cross the network, the shard refuses
    them on arrival (ShardDown, before any CPU work), and on_arrival is never called."""
    env = simpy.Environment()
    transport = Transport.from_config(to_config(**fast()).network)
    network = FlowNetwork(env, star(["worker0", "server0"], transport))
    shard = ServerShard(env, 0, "server0", 0, 10, 4000.0, None)
    ps = ParameterServers(env, network, [shard], 1e-9, 1e-9, on_version=lambda: None)
    worker = SimpleNamespace(host="worker0", index=0, current=StepRecord(0, 0, 0), delivered=0)
    arrived = []
    push = env.process(ps.push(worker, None, lambda s, w, grad: arrived.append(s.index)))
    shard.mark_down()
    with pytest.raises(ShardDown):
        env.run(push)
    assert arrived == [] and worker.delivered == 0 and shard.cpu.busy == []
    assert network.sent["worker0"] == 4000.0  # the bytes did travel
