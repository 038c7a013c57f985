"""Build the model a job trains: flat or DMT, unsharded (one process) or sharded (torchrun).

Every variant starts from the same seeded flat model, so a DMT model starts from the flat model's
tables, and a sharded model from the unsharded one's weights: runs differ only in what they are
meant to differ in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dmt.model.flat import ModelConfig, build_flat_model
from dmt.plan import TowerPlan
from dmt.train.optim import OptimConfig, apply_sparse_optimizer, build_optimizer
from towers import GlobalInteractionConfig, TowerModuleConfig


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
):
    """The model and its optimizer. ``env`` (a DistEnv) shards the model over the job.

    ``comm`` (a :class:`dmt.distributed.qcomm.CommCompression`) compresses the sharded model's embedding
    comms: DMT's cross-host exchange, or all of a flat model's embedding all-to-alls.
    """
    torch.manual_seed(seed)  # same initial weights on every rank and in the 1-process run
    if towers is not None:
        from dmt.model.transform import transform  # torchrec towers only when used

        model = transform(
            build_flat_model(model_cfg),
            towers.plan,
            tower_module=towers.module,
            global_interaction=towers.global_interaction,
        )
        if env is not None:
            from dmt.distributed.tower_sharding import shard

            apply_sparse_optimizer(model, optim_cfg)
            model = shard(model, towers.plan, env, sharding=towers.sharding, comm_compression=comm)
    elif env is not None:
        from dmt.distributed.flat import shard_flat

        # Shard a meta model (no table memory), then copy in the tables a 1-process run starts from.
        model = build_flat_model(model_cfg, device="meta")
        torch.manual_seed(seed)
        reference = build_flat_model(model_cfg).state_dict()
        apply_sparse_optimizer(model, optim_cfg)
        model = shard_flat(model, model_cfg, env, flat_sharding, comm_compression=comm)
        _load_global_weights(model, reference)
    else:
        model = build_flat_model(model_cfg)
    return model, build_optimizer(model, optim_cfg)


def _load_global_weights(model: torch.nn.Module, global_state: dict[str, torch.Tensor]) -> None:
    """Copy unsharded weights into a DMP model's (possibly sharded) state, in place."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    for key, target in model.state_dict().items():
        source = global_state[key.removeprefix("_dmp_wrapped_module.").removeprefix("module.")]
        if isinstance(target, ShardedTensor):
            for shard in target.local_shards():
                offsets = shard.metadata.shard_offsets
                sizes = shard.metadata.shard_sizes
                index = tuple(slice(o, o + s) for o, s in zip(offsets, sizes))
                shard.tensor.detach().copy_(source[index])
        else:
            target.detach().copy_(source)
