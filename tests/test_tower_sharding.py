"""Sharded DMT towers on emulated hosts (gloo, CPU) compute and train exactly like the flat model.

Each topology runs once in a module fixture: its ranks run every check of tests/_tower_checks.py in
order and report, per check, None or the failure's traceback; the tests below then assert per
check. The reference is always the flat *unsharded* DLRM on the global batch (each rank holds its
slice of it): sharded gradients are averaged over the world, which is the global batch's mean
loss gradient.
"""

from __future__ import annotations

import pytest
import torch
from _dist import run_distributed
from _tower_checks import FEATURES, _assert_ok, _plan, _worker

# -------------------------------------------------------------------------------- topologies
# 2 hosts x 2 ranks. Tower order != host order, more towers than hosts.
PLAN_2x2 = [(("f3", "f0"), 1), (("f5", "f1", "f2"), 0), (("f4",), 1)]
# Both towers on host 1: host 0 holds no tower.
PLAN_2x2_IDLE = [(("f4", "f2", "f0"), 1), (("f1", "f3", "f5"), 1)]
# 4 hosts x 1 rank: host 1 idle, order [2, 0, 3].
PLAN_4x1 = [(("f2", "f5"), 2), (("f0",), 0), (("f1", "f3", "f4"), 3)]
# 2 hosts x 1 rank.
PLAN_2x1 = [(("f1",), 1), (("f0", "f2", "f4"), 0), (("f3", "f5"), 1)]


@pytest.fixture(scope="module")
def reports_2x2():
    plan, idle = _plan(PLAN_2x2, 2), _plan(PLAN_2x2_IDLE, 2)
    common = dict(plan=plan, sharding="table_row_wise")
    checks = [
        ("parity_twrw", "check_parity", dict(arch="dlrm", **common)),
        ("parity_twcw_dcn_idle_host", "check_parity", dict(arch="dlrm_dcn", plan=idle, sharding="table_column_wise")),
        ("parity_auto_pipeline", "check_parity", dict(arch="dlrm", plan=plan, sharding="auto", pipeline=True, steps=3)),
        (
            "parity_dot_towers",
            "check_parity",
            dict(arch="dlrm", tower_module=dict(kind="dot", compression=2), **common),
        ),
        ("state_dict", "check_state_dict_round_trip", dict(arch="dlrm", **common)),
        (
            "state_dict_idle_host",
            "check_state_dict_round_trip",
            dict(arch="dlrm", plan=idle, sharding="table_column_wise"),
        ),
        ("batch_size", "check_batch_size_change", dict(arch="dlrm", plan=idle, sharding="table_row_wise")),
        ("sharder_keeps_plan", "check_sharder_keeps_plan", dict(arch="dlrm", **common)),
        ("one_lookup_per_host", "check_one_lookup_per_host", dict(arch="dlrm", **common)),
        ("intra_ids_staged", "check_intra_host_ids_before_compute", dict(arch="dlrm", plan=idle, sharding="auto")),
    ]
    return run_distributed(_worker, 4, 2, checks=checks)


@pytest.mark.parametrize("name", ["parity_twrw", "parity_twcw_dcn_idle_host", "parity_auto_pipeline"])
def test_2x2_matches_flat_unsharded(reports_2x2, name):
    _assert_ok(reports_2x2, name)


def test_2x2_tower_modules_train_like_unsharded_dmt(reports_2x2):
    """Parameterised tower modules: intra-host DDP gives the unsharded gradients."""
    name = "parity_dot_towers"
    _assert_ok(reports_2x2, name)


@pytest.mark.parametrize("name", ["state_dict", "state_dict_idle_host"])
def test_2x2_state_dict_round_trip(reports_2x2, name):
    _assert_ok(reports_2x2, name)


def test_2x2_changed_batch_size_is_a_clear_error(reports_2x2):
    _assert_ok(reports_2x2, "batch_size")


def test_2x2_sharder_does_not_mutate_the_plan(reports_2x2):
    _assert_ok(reports_2x2, "sharder_keeps_plan")


def test_2x2_towers_of_a_host_share_one_lookup(reports_2x2):
    _assert_ok(reports_2x2, "one_lookup_per_host")


def test_2x2_intra_host_ids_move_before_compute(reports_2x2):
    """What a train pipeline overlaps: both id exchanges, the intra-host one included (trap (g))."""
    _assert_ok(reports_2x2, "intra_ids_staged")


def test_4x1_idle_host_matches_flat_unsharded():
    plan = _plan(PLAN_4x1, 4)
    checks = [
        ("parity", "check_parity", dict(arch="dlrm", plan=plan, sharding="auto")),
        ("batch_size", "check_batch_size_change", dict(arch="dlrm", plan=plan, sharding="auto")),
    ]
    reports = run_distributed(_worker, 4, 1, checks=checks)
    _assert_ok(reports, "parity")
    _assert_ok(reports, "batch_size")


def test_2x1_dcn_matches_flat_unsharded():
    plan = _plan(PLAN_2x1, 2)
    checks = [
        ("errors", "check_errors", dict(arch="dlrm_dcn", plan=plan)),
        ("parity", "check_parity", dict(arch="dlrm_dcn", plan=plan, sharding="table_row_wise")),
        # One rank per host: tower modules train without DDP, like the unsharded model.
        (
            "parity_linear_auto",
            "check_parity",
            dict(arch="dlrm", plan=plan, sharding="auto", tower_module=dict(kind="linear", compression=2)),
        ),
        ("one_lookup_per_host", "check_one_lookup_per_host", dict(arch="dlrm", plan=plan, sharding="auto")),
    ]
    reports = run_distributed(_worker, 2, 1, checks=checks)
    for name, _, _ in checks:
        _assert_ok(reports, name)


def test_build_sharding_plan_places_towers_on_their_hosts():
    """One process: the plan is data, built without process groups."""
    from dmt.distributed.sharding_plan import SMALL_TABLE_ROWS, build_sharding_plan
    from dmt.distributed.topology import Topology
    from dmt.model.flat import ModelConfig, build_flat_model
    from dmt.model.transform import transform

    rows = (40, 30, SMALL_TABLE_ROWS + 1, 20, 40, 30)
    cfg = ModelConfig.preset("debug", sparse_features=FEATURES, num_embeddings=rows)
    plan = _plan(PLAN_2x2, 2)  # tower 1 holds the big table f2
    dmt = transform(build_flat_model(cfg, device="meta"), plan)
    topo = Topology(world_size=4, local_world_size=2, rank=0)
    sharding = build_sharding_plan(dmt, plan, topo).plan["model.tower_arch"]
    assert {f: sharding[f"t_{f}"].sharding_type for f in FEATURES} == {
        "f3": "table_column_wise",
        "f0": "table_column_wise",
        "f4": "table_column_wise",  # small
        "f5": "table_row_wise",
        "f1": "table_row_wise",
        "f2": "table_row_wise",  # tower with a big table
    }
    for tower in plan.towers:
        for f in tower.features:
            ps = sharding[f"t_{f}"]
            assert ps.ranks == list(topo.host_ranks(tower.host)), (f, ps.ranks)
            offsets = [m.shard_offsets for m in ps.sharding_spec.shards]
            if ps.sharding_type == "table_column_wise":
                assert offsets == [[0, 0], [0, 4]]  # two 4-wide column shards
            else:
                assert [o[1] for o in offsets] == [0, 0] and offsets[1][0] > 0  # two row blocks
    forced = build_sharding_plan(dmt, plan, topo, sharding={"tower_0": "table_row_wise"}).plan["model.tower_arch"]
    assert forced["t_f3"].sharding_type == "table_row_wise" and forced["t_f4"].sharding_type == "table_column_wise"
    # One rank per host: "auto" is a whole-table column "shard" (no bucketizing), big table or not.
    one = build_sharding_plan(dmt, plan, Topology(world_size=2, local_world_size=1, rank=0)).plan["model.tower_arch"]
    assert {ps.sharding_type for ps in one.values()} == {"table_column_wise"}
    assert all(len(ps.sharding_spec.shards) == 1 for ps in one.values())


@pytest.mark.parametrize(
    "plan_spec, hosts, ranks_per_host, dot_arch",
    [
        pytest.param(
            PLAN_2x1,
            2,
            1,
            "dlrm_dcn",
            id="2x1",
            marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (the 2 hosts may share it)"),
        ),
        # 2 hosts x 2 GPUs: intra-host sharded lookups and DDP on NVLink, towers grouped per host.
        pytest.param(
            PLAN_2x2,
            2,
            2,
            "dlrm",
            id="2x2",
            marks=pytest.mark.skipif(
                torch.cuda.device_count() < 4, reason="needs 4 GPUs (the device machine's nvidia-h100-x4)"
            ),
        ),
    ],
)
def test_cuda_nccl_matches_unsharded(plan_spec, hosts, ranks_per_host, dot_arch):
    plan = _plan(plan_spec, hosts)
    checks = [
        ("parity", "check_parity", dict(arch="dlrm", plan=plan, sharding="table_row_wise", device="cuda")),
        (
            "parity_dot_twcw",
            "check_parity",
            dict(
                arch=dot_arch,
                plan=plan,
                sharding="table_column_wise",
                tower_module=dict(kind="dot", compression=2),
                device="cuda",
            ),
        ),
        (
            "parity_pipeline",
            "check_parity",
            dict(arch="dlrm", plan=plan, sharding="auto", pipeline=True, steps=3, device="cuda"),
        ),
    ]
    reports = run_distributed(_worker, hosts * ranks_per_host, ranks_per_host, backend="nccl", checks=checks)
    for name, _, _ in checks:
        _assert_ok(reports, name)
