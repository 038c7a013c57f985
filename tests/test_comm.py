"""Communication accounting: exact counts on real gloo collectives, and the analytic model.

One spawn of 4 gloo ranks (2 emulated hosts x 2) runs every distributed scenario once and writes
what each rank counted; the tests below check those records. The flat table-wise DLRM step is
compared against :func:`dmt.perf.comm_model.analytic_flat`.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from _dist import run_distributed

from dmt.distributed.topology import Topology
from dmt.perf.comm_counter import (
    CommCounter,
    CommKey,
    CommStats,
    CommSummary,
    group_label,
    reduce_summary,
    register_ddp_counting_hooks,
)
from dmt.perf.comm_model import CommShape, analytic_dmt, analytic_flat

HOSTS, LOCAL = 2, 2
WORLD = HOSTS * LOCAL
ROW = 3  # floats per row in the hand-made all-to-all
AR_NUMEL = 10  # floats in the hand-made all-reduce
DLRM_FEATURES, DLRM_BATCH, DLRM_POOLING = ("a", "b", "c", "d", "e"), 8, 2


def _split(src: int, dst: int) -> int:
    """Rows rank ``src`` sends rank ``dst`` in the hand-made all-to-all (all different)."""
    return 1 + src + 2 * dst


def _dump(summary: CommSummary) -> list:
    return [[vars(k), vars(s)] for k, s in summary.stats.items()]


def _load(rows: list) -> CommSummary:
    return CommSummary({CommKey(**k): CommStats(**s) for k, s in rows})


class _AllReduceInBackward(torch.autograd.Function):
    """Identity whose backward all-reduces the gradient: a collective autograd runs."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def _hand_made(topology: Topology, rank: int) -> dict:
    """Known collectives: all-to-all with known splits, all-reduce, sub-groups, phases, hook removal."""
    intra = [dist.new_group(list(topology.host_ranks(h))) for h in range(HOSTS)][topology.host]
    peers_all = [dist.new_group([r + h * LOCAL for h in range(HOSTS)]) for r in range(LOCAL)]
    peers = peers_all[topology.local_rank]
    original = dist.all_to_all_single
    with CommCounter(topology) as comm:
        patched = dist.all_to_all_single is not original
        send = [_split(rank, j) for j in range(WORLD)]
        recv = [_split(j, rank) for j in range(WORLD)]
        out = torch.empty(sum(recv), ROW)
        dist.all_to_all_single(out, torch.ones(sum(send), ROW), recv, send)
        dist.all_reduce(torch.ones(AR_NUMEL))
        dist.all_gather_into_tensor(torch.empty(LOCAL, 4), torch.ones(1, 4), group=intra)
        dist.reduce_scatter_tensor(torch.empty(2), torch.ones(2 * HOSTS), group=peers)
        dist.all_reduce(torch.ones(4, dtype=torch.int64), group=peers)
        x = torch.ones(AR_NUMEL, requires_grad=True)
        _AllReduceInBackward.apply(x).sum().backward()  # counted as backward
        with comm.phase("eval"):
            dist.broadcast(torch.ones(5), src=0)
        reduced_inside = reduce_summary(comm.summary())  # must not count itself
    restored = dist.all_to_all_single is original
    dist.all_reduce(torch.ones(AR_NUMEL))  # after exit: not counted
    return {
        "patched": patched,
        "restored": restored,
        "local": _dump(comm.summary()),
        "reduced": _dump(reduce_summary(comm.summary())),
        "reduced_inside": _dump(reduced_inside),
    }


def _dlrm_batch(rank: int, step: int, features: tuple[str, ...] = DLRM_FEATURES):
    """This rank's batch: exactly ``DLRM_POOLING`` ids per (sample, feature) from 50-row tables."""
    from dmt.data import random_batch

    return random_batch(DLRM_BATCH, 50, features=features, pooling=DLRM_POOLING, rank=rank, step=step)


def _flat_table_wise(env, rank: int) -> dict:
    """One counted step (after a warm-up step) of the debug DLRM, sharded table-wise by DMP."""
    from dmt.distributed.flat import shard_flat
    from dmt.model.flat import ModelConfig, build_flat_model
    from dmt.train.optim import OptimConfig, apply_sparse_optimizer, build_optimizer

    cfg = ModelConfig.preset("debug", sparse_features=DLRM_FEATURES, num_embeddings=(50,) * len(DLRM_FEATURES))
    torch.manual_seed(0)
    model = build_flat_model(cfg, device="meta")
    dense_params = sum(p.numel() for n, p in model.named_parameters() if "embedding_bag" not in n)
    optim = OptimConfig(sparse="sgd", dense="sgd")
    apply_sparse_optimizer(model, optim)
    model = shard_flat(model, cfg, env, "table_wise")
    hooked = register_ddp_counting_hooks(model)
    optimizer = build_optimizer(model, optim)

    def step(i: int) -> None:
        optimizer.zero_grad()
        loss, _ = model(_dlrm_batch(rank, i))
        loss.backward()
        optimizer.step()

    step(0)
    with CommCounter(env.topology) as comm:
        step(1)
    step(2)  # the DDP hook stays registered but counts nothing outside the context
    return {"hooked": hooked, "dense_params": dense_params, "reduced": _dump(reduce_summary(comm.summary()))}


def _dmt_linear_towers(env, rank: int) -> dict:
    """One counted step of a 2-tower DMT model (linear towers, c=2): tower DDPs are found and counted."""
    from dmt.distributed.tower_sharding import shard
    from dmt.model.flat import ModelConfig, build_flat_model
    from dmt.model.transform import transform
    from dmt.plan import TowerPlan
    from dmt.train.optim import OptimConfig, apply_sparse_optimizer, build_optimizer
    from towers import TowerModuleConfig

    features = DLRM_FEATURES[:4]
    cfg = ModelConfig.preset("debug", sparse_features=features, num_embeddings=(50,) * len(features))
    plan = TowerPlan.from_groups([features[:2], features[2:]], num_hosts=HOSTS)
    torch.manual_seed(0)
    model = transform(
        build_flat_model(cfg, device="meta"), plan, tower_module=TowerModuleConfig(kind="linear", compression=2)
    )
    optim = OptimConfig(sparse="sgd", dense="sgd")
    apply_sparse_optimizer(model, optim)
    model = shard(model, plan, env, sharding="table_row_wise")
    hooked = register_ddp_counting_hooks(model)
    optimizer = build_optimizer(model, optim)
    for i in range(2):
        with CommCounter(env.topology) as comm:
            optimizer.zero_grad()
            loss, _ = model(_dlrm_batch(rank, i, features))
            loss.backward()
            optimizer.step()
    return {"hooked": hooked, "reduced": _dump(reduce_summary(comm.summary()))}


def _scenario(rank: int, world_size: int) -> dict:
    from dmt.quiet import quiet_third_party

    quiet_third_party()
    from dmt.distributed.env import init_distributed

    env = init_distributed("gloo")  # joins the harness's group; sets torchrec's host size
    return {
        "hand": _hand_made(env.topology, rank),
        "tw": _flat_table_wise(env, rank),
        "dmt": _dmt_linear_towers(env, rank),
    }


@pytest.fixture(scope="module")
def runs() -> list[dict]:
    """Every rank's records of the one 4-rank gloo run (2 emulated hosts x 2)."""
    return run_distributed(_scenario, WORLD, LOCAL)


# --------------------------------------------------------------------------------------------
# Distributed


def test_all_to_all_single_counts_known_splits_exactly(runs) -> None:
    topo = Topology(world_size=WORLD, local_world_size=LOCAL)
    for rank, run in enumerate(runs):
        s = _load(run["hand"]["local"]).total(op="all_to_all_single")
        cross = sum(_split(rank, j) for j in range(WORLD) if not topo.same_host(rank, j)) * ROW * 4
        intra = sum(_split(rank, j) for j in range(WORLD) if topo.same_host(rank, j) and j != rank) * ROW * 4
        assert (s.calls, s.cross_host, s.intra_host, s.bytes) == (1, cross, intra, cross + intra)


def test_all_reduce_is_the_ring_estimate_split_by_destination(runs) -> None:
    size = AR_NUMEL * 4
    for run in runs:
        s = _load(run["hand"]["local"]).stats[CommKey("all_reduce", "world", "forward", "float")]
        # 2(n-1)/n * S in all, 2S/n to each of the 2 remote and 1 local ranks
        assert (s.calls, s.bytes, s.cross_host, s.intra_host) == (1, 2 * 3 / 4 * size, size, size / 2)


def test_sub_groups_are_labelled_and_classified(runs) -> None:
    for run in runs:
        stats = _load(run["hand"]["local"]).stats
        ag = stats[CommKey("all_gather", "intra_host", "forward", "float")]
        assert (ag.cross_host, ag.intra_host) == (0, 16)  # 16 B to the other local rank
        rs = stats[CommKey("reduce_scatter", "cross_host", "forward", "float")]
        assert (rs.cross_host, rs.intra_host) == (8, 0)  # half of 16 B to the peer
        ar = stats[CommKey("all_reduce", "cross_host", "forward", "int")]
        assert (ar.cross_host, ar.intra_host) == (32, 0)  # 2(2-1)/2 * 32 B, int payload


def test_phase_inferred_in_backward_and_forced_by_phase(runs) -> None:
    for rank, run in enumerate(runs):
        stats = _load(run["hand"]["local"]).stats
        assert stats[CommKey("all_reduce", "world", "backward", "float")].calls == 1
        bcast = stats[CommKey("broadcast", "world", "eval", "float")]
        assert bcast.calls == 1 and bcast.bytes == (3 * 20 if rank == 0 else 0)  # only the source sends


def test_hooks_removed_after_exit(runs) -> None:
    for run in runs:
        hand = run["hand"]
        assert hand["patched"] and hand["restored"]
        # the all-reduce after the context is missing: exactly one world float all-reduce forward
        assert _load(hand["local"]).total(op="all_reduce", group="world", phase="forward").calls == 1
    assert dist.all_to_all_single.__module__ == "torch.distributed.distributed_c10d"


def test_reduce_summary_sums_ranks_and_does_not_count_itself(runs) -> None:
    per_rank = [_load(run["hand"]["local"]) for run in runs]
    reduced = _load(runs[0]["hand"]["reduced"])
    assert all(_load(run["hand"]["reduced"]) == reduced for run in runs)
    assert _load(runs[0]["hand"]["reduced_inside"]) == reduced
    for key, s in reduced.stats.items():
        assert s.calls == sum(p.stats[key].calls for p in per_rank if key in p.stats)
        assert s.cross_host == pytest.approx(sum(p.stats[key].cross_host for p in per_rank if key in p.stats))


def test_flat_table_wise_step_matches_analytic(runs) -> None:
    tw = runs[0]["tw"]
    assert all(run["tw"]["hooked"] == 1 for run in runs)  # DMP's one dense DDP
    measured = _load(tw["reduced"]).per_sample(DLRM_BATCH * WORLD)
    shape = CommShape(
        num_features=len(DLRM_FEATURES),
        embedding_dim=8,
        num_hosts=HOSTS,
        ranks_per_host=LOCAL,
        batch_size=DLRM_BATCH,
        pooling_factor=DLRM_POOLING,
    )
    expected = analytic_flat(shape, "table_wise", dense_params=tw["dense_params"])
    for phase in ("forward", "backward"):  # pooled embeddings out, their gradients back: exact
        m = measured.total(op="all_to_all_single", phase=phase, payload="float")
        e = expected.total(op="all_to_all_single", phase=phase, payload="float")
        assert (m.cross_host, m.intra_host) == (e.cross_host, e.intra_host) == (5 * 8 * 4 / 2, 5 * 8 * 4 / 4)
    ddp_m, ddp_e = measured.total(op="ddp_allreduce"), expected.total(op="ddp_allreduce")
    assert ddp_m.calls >= 4 and measured.total(op="ddp_allreduce", phase="backward") == ddp_m
    assert (ddp_m.cross_host, ddp_m.intra_host) == pytest.approx((ddp_e.cross_host, ddp_e.intra_host))
    # ids and lengths: the model plus only the per-step split-size exchange (a few int64 per rank pair)
    ids_m, ids_e = measured.total(payload="int"), expected.total(payload="int")
    meta_per_sample = 4 * 8 * (WORLD - 1) / DLRM_BATCH
    assert 0 <= ids_m.bytes - ids_e.bytes <= meta_per_sample
    assert measured.total(phase="backward", payload="int").bytes == 0


def test_dmt_tower_ddp_is_found_and_cross_host_floats_match_analytic(runs) -> None:
    # DMP's DDP plus the host's tower DDP, which torchrec hides from named_modules()
    assert all(run["dmt"]["hooked"] == 2 for run in runs)
    measured = _load(runs[0]["dmt"]["reduced"]).per_sample(DLRM_BATCH * WORLD)
    tower_ddp = measured.total(op="ddp_allreduce", group="intra_host")
    # one all-reduce per tower parameter (weight, bias) per rank: DDP buckets hold one parameter each
    # so that a resumed run reduces bit-identically (dmt.distributed.torchrec_fixes.exact_resume_ddp_kwargs)
    assert tower_ddp.calls == 2 * WORLD and tower_ddp.cross_host == 0 and tower_ddp.intra_host > 0
    assert measured.total(op="ddp_allreduce", phase="backward") == measured.total(op="ddp_allreduce")
    shape = CommShape(
        num_features=4,
        embedding_dim=8,
        num_hosts=HOSTS,
        ranks_per_host=LOCAL,
        batch_size=DLRM_BATCH,
        pooling_factor=DLRM_POOLING,
    )
    # Linear(2*8 -> 1*8) per tower: 136 parameters each
    expected = analytic_dmt(shape, [2, 2], [8, 8], intra_sharding="table_row_wise", tower_params=2 * 136)
    for phase in ("forward", "backward"):
        m, e = (
            s.total(phase=phase, payload="float", op=["all_to_all_single", "reduce_scatter", "all_gather"])
            for s in (measured, expected)
        )
        assert (m.cross_host, m.intra_host) == (e.cross_host, e.intra_host)
    assert tower_ddp.intra_host == pytest.approx(expected.total(op="ddp_allreduce").intra_host)


# --------------------------------------------------------------------------------------------
# Single process


def test_group_labels() -> None:
    t = Topology(world_size=8, local_world_size=4)
    assert [group_label(r, t) for r in (range(8), [4, 5, 6, 7], [1, 5], [0, 1, 4])] == [
        "world",
        "intra_host",
        "cross_host",
        "mixed",
    ]


def test_counter_without_process_group_patches_only_inside() -> None:
    original = dist.all_reduce
    comm = CommCounter(Topology(world_size=4, local_world_size=2, rank=1))
    with comm:
        assert dist.all_reduce is not original
        with CommCounter(Topology(world_size=4, local_world_size=2, rank=1)) as inner:
            assert dist.all_reduce is not original
        assert dist.all_reduce is not original  # the outer counter still counts
        comm.record("all_to_all_single", [0, 1, 2, 3], [1.0, 100.0, 10.0, 1000.0], "float")
    assert dist.all_reduce is original
    s = comm.summary().total()
    assert (s.calls, s.intra_host, s.cross_host) == (1, 1.0, 1010.0)  # rank 1: own 100 B ignored
    assert inner.summary().stats == {}


def test_summary_filters_and_grouping() -> None:
    s = CommSummary(
        {
            CommKey("all_to_all_single", "world", "forward", "int"): CommStats(2, 30.0, 20.0, 10.0),
            CommKey("all_to_all_single", "world", "backward", "float"): CommStats(1, 64.0, 64.0, 0.0),
            CommKey("ddp_allreduce", "world", "backward", "float"): CommStats(3, 6.0, 4.0, 2.0),
        }
    )
    assert s.total(phase="backward").bytes == 70.0
    assert s.total(op=["ddp_allreduce", "all_to_all_single"], payload="float").calls == 4
    assert s.grouped("phase") == {
        ("backward",): CommStats(4, 70.0, 68.0, 2.0),
        ("forward",): CommStats(2, 30.0, 20.0, 10.0),
    }
    assert s.per_sample(2).total().bytes == 50.0
    assert "ddp_allreduce" in s.to_markdown()
    with pytest.raises(ValueError, match="global_batch"):
        s.per_sample(0)


def test_analytic_relations() -> None:
    sh = CommShape(num_features=8, embedding_dim=16, num_hosts=4, ranks_per_host=2, batch_size=32)
    tw, rw = analytic_flat(sh, "table_wise"), analytic_flat(sh, "row_wise")
    twf = tw.total(phase="forward", payload="float")
    # row-wise sends every sample's partial sums to all W-1 ranks, table-wise to one rank of W
    assert rw.total(phase="forward", payload="float").bytes == pytest.approx(twf.bytes * 8)
    assert twf.cross_host == 8 * 16 * 4 * 3 / 4
    identity = analytic_dmt(sh, [2, 2, 2, 2], [32, 32, 32, 32])  # O_t = F_t * D
    c4 = analytic_dmt(sh, [2, 2, 2, 2], [8, 8, 8, 8])
    for phase in ("forward", "backward"):
        flat_cross = tw.total(phase=phase).cross_host
        assert identity.total(phase=phase).cross_host == pytest.approx(flat_cross)
        assert c4.total(phase=phase, payload="float").cross_host == pytest.approx(
            tw.total(phase=phase, payload="float").cross_host / 4
        )
    assert identity.total(group="cross_host").intra_host == 0
    with pytest.raises(ValueError, match="num_features"):
        analytic_dmt(sh, [2, 2], [8, 8])
