"""Whole tables per rank inside a host (``--tower-sharding table_wise``): placement and exact training.

Row-wise tower shards make every rank of a host return a partial sum for the host's whole batch
((L-1) pooled vectors per sample and table); whole tables return one vector per sample and table,
from one rank ((L-1)/L of it off-rank). The runs below are real 2 hosts x 2 ranks (gloo) jobs
against the unsharded flat DLRM on the global batch, as in tests/test_tower_sharding.py.
"""

from __future__ import annotations

import pytest
import torch
from _dist import run_distributed
from _tower_checks import FEATURES, _assert_ok, _plan, _worker

# Tower order != host order; 3 tables on each host of 2 ranks: placement 2 + 1.
PLAN_2x2 = [(("f3", "f0"), 1), (("f5", "f1", "f2"), 0), (("f4",), 1)]


@pytest.fixture(scope="module")
def reports_2x2():
    plan = _plan(PLAN_2x2, 2)
    common = dict(arch="dlrm", plan=plan)
    checks = [
        ("parity_sgd", "check_parity", dict(**common, sharding="table_wise")),
        (
            "parity_linear_towers",
            "check_parity",
            dict(arch="dlrm_dcn", plan=plan, sharding="table_wise", tower_module=dict(kind="linear", compression=2)),
        ),
        ("parity_pipeline", "check_parity", dict(**common, sharding="table_wise", pipeline=True, steps=3)),
        ("rowwise_adagrad", "check_rowwise_adagrad_parity", dict(**common, sharding="table_wise")),
        ("whole_tables", "check_whole_tables_on_one_rank", dict(**common)),
        ("state_dict", "check_state_dict_round_trip", dict(**common, sharding="table_wise")),
    ]
    return run_distributed(_worker, 4, 2, checks=checks)


@pytest.mark.parametrize("name", ["parity_sgd", "parity_linear_towers", "parity_pipeline"])
def test_table_wise_towers_train_like_unsharded(reports_2x2, name):
    _assert_ok(reports_2x2, name)


def test_table_wise_is_exact_under_rowwise_adagrad(reports_2x2):
    """Whole rows keep their one accumulator each: the sharded model trains like the unsharded one."""
    _assert_ok(reports_2x2, "rowwise_adagrad")


def test_each_rank_holds_whole_tables(reports_2x2):
    _assert_ok(reports_2x2, "whole_tables")


def test_table_wise_state_dict_round_trip(reports_2x2):
    _assert_ok(reports_2x2, "state_dict")


def test_table_wise_plan_balances_whole_tables_over_the_host():
    """One process: each table is one full-width shard on one rank of its tower's host, placed
    greedily (equal widths: table counts within one per host, then fewer rows held)."""
    from collections import Counter

    from dmt.distributed.sharding_plan import TWCW, build_sharding_plan, intra_sharding_of
    from dmt.distributed.topology import Topology
    from dmt.model.flat import ModelConfig, build_flat_model
    from dmt.model.transform import transform

    cfg = ModelConfig.preset("debug", sparse_features=FEATURES, num_embeddings=(40, 30, 52, 20, 40, 30))
    plan = _plan(PLAN_2x2, 2)
    dmt = transform(build_flat_model(cfg, device="meta"), plan)
    topo = Topology(world_size=4, local_world_size=2, rank=0)
    sharding_plan = build_sharding_plan(dmt, plan, topo, sharding="table_wise")
    tables = sharding_plan.plan["model.tower_arch"]
    per_rank = Counter()
    for tower in plan.towers:
        for f in tower.features:
            ps = tables[f"t_{f}"]
            assert ps.sharding_type == TWCW and len(ps.sharding_spec.shards) == 1, (f, ps)
            assert ps.sharding_spec.shards[0].shard_sizes == [cfg.num_embeddings[FEATURES.index(f)], 8]
            assert len(ps.ranks) == 1 and ps.ranks[0] in topo.host_ranks(tower.host), (f, ps.ranks)
            per_rank[ps.ranks[0]] += 1
    # host 0: f2 (52 rows) alone on rank 0, the two 30-row tables on rank 1 (equal widths: the
    # fewer rows held breaks the tie); host 1: f0 and f4 (40 rows) apart, f3 (20) with f0.
    assert sorted(per_rank.items()) == [(0, 1), (1, 2), (2, 2), (3, 1)]
    assert intra_sharding_of(sharding_plan) == "table_wise"
    mixed = build_sharding_plan(dmt, plan, topo, sharding={"tower_0": "table_wise", "tower_1": "table_row_wise"})
    assert intra_sharding_of(mixed) is None


@pytest.mark.skipif(torch.cuda.device_count() < 4, reason="needs 4 GPUs (the device machine's 4x H200)")
def test_cuda_nccl_table_wise_matches_unsharded():
    """2 hosts x 2 GPUs on NCCL: whole tables per GPU, fused SGD and fused row-wise Adagrad."""
    plan = _plan(PLAN_2x2, 2)
    checks = [
        ("parity", "check_parity", dict(arch="dlrm", plan=plan, sharding="table_wise", device="cuda")),
        (
            "parity_pipeline",
            "check_parity",
            dict(arch="dlrm", plan=plan, sharding="table_wise", pipeline=True, steps=3, device="cuda"),
        ),
        (
            "rowwise_adagrad",
            "check_rowwise_adagrad_parity",
            dict(arch="dlrm", plan=plan, sharding="table_wise", device="cuda"),
        ),
    ]
    reports = run_distributed(_worker, 4, 2, backend="nccl", checks=checks)
    for name, _, _ in checks:
        _assert_ok(reports, name)
