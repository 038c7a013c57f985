"""Build the model a job trains: flat or DMT, unsharded (one process) or sharded (torchrun).

The one recipe for it (``dmt train``, ``dmt bench``, the partitioner's probe, the benchmarks and
examples): seed, build the flat model, transform it into towers if asked, attach the in-backward
table optimizer, shard, and build the optimizer the loop steps. Every variant starts from the same
seeded flat model, so a DMT model starts from the flat model's tables, and (with
``table_init="seeded"``) a sharded model from the unsharded one's weights: runs differ only in
what they are meant to differ in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dmt.choices import TableInit
from dmt.errors import DmtError
from dmt.model.flat import ModelConfig, build_flat_model
from dmt.plan import TowerPlan
from dmt.train.optim import OptimConfig, apply_sparse_optimizer, build_optimizer
from towers import GlobalInteractionConfig, TowerModuleConfig

# "seeded": the tables of the seeded unsharded model, copied into the shards (runs comparable
# across shardings; each rank holds every full table once while building). "local": tables stay
# on the meta device and torchrec initialises each rank's own shards (no full table anywhere),
# from a per-rank seed (one seed everywhere would start the tables of different ranks alike).
# "auto": seeded up to SEEDED_MAX_BYTES of tables, else local (26 x 200k x 128 fp32 tables, 2.7 GB:
# seeded builds took 19 s per rank on 2 CPU cores, local 4 s; Criteo 1TB's would not fit).
TABLE_INITS = TableInit.names()
SEEDED_MAX_BYTES = 1 << 30
# "dmt": dmt.distributed.tower_sharding.shard. "stock": torchrec's own EmbeddingTowerCollectionSharder
# (none of dmt's fixes; `dmt bench` times it as the baseline).
TOWER_SHARDERS = ("dmt", "stock")


@dataclass(frozen=True, kw_only=True)
class TowerSpec:
    """What turns the flat model into a DMT model."""

    plan: TowerPlan
    module: TowerModuleConfig = TowerModuleConfig()
    sharding: str = "auto"  # inside a host: "auto", "table_row_wise" or "table_column_wise"
    global_interaction: GlobalInteractionConfig | None = None  # None: transform's default


def build_model(
    model_cfg: ModelConfig,
    optim_cfg: OptimConfig,
    *,
    seed: int,
    towers: TowerSpec | None,
    env=None,
    flat_sharding: str = "table_wise",
    comm=None,
    table_init: str = "seeded",
    tower_sharder: str = "dmt",
):
    """The model and its optimizer. ``env`` (a DistEnv) shards the model over the job.

    Args:
        model_cfg: the flat model.
        optim_cfg: its optimizers.
        seed: torch's seed for every initial weight (the same on every rank).
        towers: None for the flat model, else the DMT model over these towers.
        env: a :class:`dmt.distributed.env.DistEnv` to shard over; None: unsharded, one process.
        flat_sharding: the flat model's sharding type (see ``dmt.distributed.flat.FLAT_SHARDINGS``).
        comm: a :class:`dmt.distributed.qcomm.CommCompression` for the sharded model's embedding
            comms: DMT's cross-host exchange, or all of a flat model's embedding all-to-alls.
        table_init: how a sharded model's tables start, one of :data:`TABLE_INITS` (see there).
        tower_sharder: what shards a DMT model's towers, one of :data:`TOWER_SHARDERS`.

    Returns:
        ``(model, optimizer)``: the optimizer is the keyed one the training loop steps.

    Raises:
        DmtError: an unknown or unsupported ``table_init`` / ``tower_sharder``.
    """
    table_init = resolve_table_init(table_init, model_cfg)
    _check_choices(table_init, tower_sharder, comm)
    torch.manual_seed(seed)  # same initial weights on every rank and in the 1-process run
    if env is None:
        model = _unsharded(model_cfg, towers)
    elif towers is not None:
        model = _sharded_towers(model_cfg, optim_cfg, seed, towers, env, comm, table_init, tower_sharder)
    else:
        model = _sharded_flat(model_cfg, optim_cfg, seed, env, flat_sharding, comm, table_init)
    return model, build_optimizer(model, optim_cfg)


def resolve_table_init(table_init: str, model_cfg: ModelConfig) -> str:
    """``table_init`` with "auto" decided by the size of the tables ("seeded" or "local")."""
    if table_init not in TABLE_INITS:
        raise DmtError(f"table_init={table_init!r} is not one of {TABLE_INITS}")
    if table_init != "auto":
        return table_init
    table_bytes = sum(model_cfg.num_embeddings) * model_cfg.embedding_dim * 4
    return "seeded" if table_bytes <= SEEDED_MAX_BYTES else "local"


def _seed_local_shards(seed: int, env) -> None:
    """Seed this rank's own shards apart from the other ranks' (the dense layers are already built)."""
    torch.manual_seed(seed + 1 + env.topology.rank)


def _check_choices(table_init: str, tower_sharder: str, comm) -> None:
    if tower_sharder not in TOWER_SHARDERS:
        raise DmtError(f"tower_sharder={tower_sharder!r} is not one of {TOWER_SHARDERS}")
    if tower_sharder == "stock" and (table_init != "local" or comm is not None):
        raise DmtError(
            "torchrec's stock tower sharder neither copies tables in nor compresses comms: "
            "use it with table_init='local' and no comm compression"
        )


def _unsharded(model_cfg: ModelConfig, towers: TowerSpec | None, device: str | None = None) -> torch.nn.Module:
    """The flat model, or its DMT transform; ``device="meta"``: tables without memory."""
    flat = build_flat_model(model_cfg, device=device)
    if towers is None:
        return flat
    from dmt.model.transform import transform  # torchrec towers only when used

    return transform(flat, towers.plan, tower_module=towers.module, global_interaction=towers.global_interaction)


def _sharded_towers(
    model_cfg: ModelConfig,
    optim_cfg: OptimConfig,
    seed: int,
    towers: TowerSpec,
    env,
    comm,
    table_init: str,
    tower_sharder: str,
) -> torch.nn.Module:
    # shard() copies materialised tables into the shards and leaves meta ones to torchrec.
    model = _unsharded(model_cfg, towers, device="meta" if table_init == "local" else None)
    apply_sparse_optimizer(model, optim_cfg)
    if table_init == "local":
        _seed_local_shards(seed, env)
    if tower_sharder == "stock":
        return _shard_stock(model, towers, env)
    from dmt.distributed.tower_sharding import shard

    return shard(model, towers.plan, env, sharding=towers.sharding, comm_compression=comm)


def _sharded_flat(
    model_cfg: ModelConfig,
    optim_cfg: OptimConfig,
    seed: int,
    env,
    flat_sharding: str,
    comm,
    table_init: str,
) -> torch.nn.Module:
    from dmt.distributed.flat import shard_flat

    # Shard a meta model (no table memory); "seeded": then copy in the weights a 1-process run starts from.
    model = build_flat_model(model_cfg, device="meta")
    reference = None
    if table_init == "seeded":
        torch.manual_seed(seed)
        reference = build_flat_model(model_cfg).state_dict()
    apply_sparse_optimizer(model, optim_cfg)
    if table_init == "local":
        _seed_local_shards(seed, env)
    model = shard_flat(model, model_cfg, env, flat_sharding, comm_compression=comm)
    if reference is not None:
        _copy_unsharded_weights(model, reference)
    return model


def _copy_unsharded_weights(model: torch.nn.Module, unsharded: dict[str, torch.Tensor]) -> None:
    """Copy an unsharded model's weights into a DMP model's (possibly sharded) state, in place."""
    from dmt.distributed.state_dict import StateDictError, copy_into

    errors: list[str] = []
    for key, target in model.state_dict().items():
        source = unsharded[key.removeprefix("_dmp_wrapped_module.").removeprefix("module.")]
        copy_into(key, target, source, errors)
    if errors:
        raise StateDictError("cannot copy the unsharded weights in:\n  " + "\n  ".join(errors))


def _shard_stock(model: torch.nn.Module, towers: TowerSpec, env) -> torch.nn.Module:
    """torchrec's DMP + EmbeddingTowerCollectionSharder on the sharding plan ``dmt.shard`` would use.

    Only what it cannot run without is added: on CPU its intra-host DDP rejects CPU
    ``device_ids`` (the swap of ``dmt.distributed.tower_sharding``), and its process groups need
    torchrec's host-size variables pinned. torchrec mutates the plan, so it gets a copy.
    """
    import contextlib
    import copy

    import torch.distributed as dist
    from torchrec.distributed.embedding_tower_sharding import EmbeddingTowerCollectionSharder
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.types import ShardingEnv

    from dmt.distributed import torchrec_fixes as ds
    from dmt.distributed.sharding_plan import build_sharding_plan

    plan = build_sharding_plan(model, towers.plan, env.topology, sharding=towers.sharding, device_type=env.device.type)
    ds.tower_process_groups(env.topology, env.device)
    cpu_fix = ds.safe_tower_sharding() if env.device.type == "cpu" else contextlib.nullcontext()
    with cpu_fix, ds.torchrec_host_size(env.topology.local_world_size):
        return DistributedModelParallel(
            module=model,
            env=ShardingEnv.from_process_group(dist.group.WORLD),
            device=env.device,
            plan=copy.deepcopy(plan),
            sharders=[EmbeddingTowerCollectionSharder()],
        )
