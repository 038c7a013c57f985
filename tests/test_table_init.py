"""How a sharded model's tables start: seeded (the one-process run's) or local (each rank's own draws)."""

from __future__ import annotations

import pytest
import torch
from _dist import run_distributed

from dmt.errors import DmtError
from dmt.model.flat import ModelConfig
from dmt.train.build import SEEDED_MAX_BYTES, resolve_table_init

INIT = 0.1  # the debug preset's tables start uniform in [-0.1, 0.1]


def _cfg(rows: int) -> ModelConfig:
    return ModelConfig.preset("debug", num_embeddings=(rows,) * 26, embedding_init=INIT)


def test_auto_is_seeded_for_small_tables_and_local_for_large():
    small, large = _cfg(1000), _cfg(SEEDED_MAX_BYTES // (26 * 8 * 4) + 1)  # 26 tables x dim 8 x fp32
    assert resolve_table_init("auto", small) == "seeded"
    assert resolve_table_init("auto", large) == "local"
    assert resolve_table_init("seeded", large) == "seeded" and resolve_table_init("local", small) == "local"
    with pytest.raises(DmtError, match="table_init='random' is not one of"):
        resolve_table_init("random", small)


def _local_shards(rank, world, towers):
    """This rank's table shards after a "local" build, and their first values."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    from dmt.distributed.env import init_distributed
    from dmt.plan import TowerPlan
    from dmt.train.build import TowerSpec, build_model
    from dmt.train.optim import OptimConfig

    env = init_distributed()
    features = _cfg(1000).sparse_features
    spec = None
    if towers:
        plan = TowerPlan.from_groups([features[:13], features[13:]], num_hosts=2)
        spec = TowerSpec(plan=plan, sharding="table_wise")
    model, _ = build_model(_cfg(1000), OptimConfig(), seed=0, towers=spec, env=env, table_init="local")
    shards = [
        s.tensor
        for key, value in model.state_dict().items()
        if isinstance(value, ShardedTensor) and "embedding_bags" in key
        for s in value.local_shards()
    ]
    values = torch.cat([s.reshape(-1) for s in shards])
    first = shards[0][:50].reshape(-1).tolist()  # plain numbers: a tensor would not outlive the rank's process
    return {"max_abs": values.abs().max().item(), "std": values.std().item(), "first": first}


@pytest.mark.parametrize("towers", [False, True], ids=["flat", "dmt"])
def test_local_shards_follow_the_init_and_differ_between_ranks(towers):
    ranks = run_distributed(_local_shards, 2, 1, towers=towers)
    for r in ranks:
        assert r["max_abs"] <= INIT
        assert r["std"] == pytest.approx(INIT / 3**0.5, rel=0.05)  # uniform in [-A, A]
    # One seed on every rank would start table 0 (rank 0) and table 13 (rank 1) alike.
    assert ranks[0]["first"] != ranks[1]["first"]
