"""Flat (non-tower) sharding: torchrec's planner and DistributedModelParallel, unchanged.

The flat baseline uses torchrec as a user would: its planner picks shard placement under a
sharding-type constraint, DMP shards the EmbeddingBagCollection and wraps the dense part in DDP.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner
from torchrec.distributed.planner import Topology as PlannerTopology
from torchrec.distributed.planner.types import ParameterConstraints
from torchrec.distributed.types import ShardingEnv

from dmt.choices import FlatSharding
from dmt.distributed.env import DistEnv
from dmt.distributed.qcomm import CommCompression, comm_codecs_registry, largest_table_rows
from dmt.distributed.torchrec_fixes import CpuRowWiseEBCSharder, exact_resume_ddp_wrapper
from dmt.errors import DmtError
from dmt.model.flat import ModelConfig, table_name


def shard_flat(
    model: torch.nn.Module,
    cfg: ModelConfig,
    env: DistEnv,
    sharding: str = "table_wise",
    *,
    qcomm_codecs_registry: dict | None = None,
    comm_compression: CommCompression | None = None,
) -> DistributedModelParallel:
    """Shard the flat model's tables with one sharding type; the planner places the shards.

    ``qcomm_codecs_registry`` (torchrec's) or ``comm_compression`` (built with
    :func:`dmt.distributed.qcomm.comm_codecs_registry`) compresses the embedding comms, all of them: a flat
    model's all-to-alls mix intra- and cross-host destinations.
    """
    sharding = FlatSharding.parse(sharding, "flat sharding").value
    if comm_compression is not None:
        if qcomm_codecs_registry is not None:
            raise DmtError("pass qcomm_codecs_registry or comm_compression to shard_flat, not both")
        qcomm_codecs_registry = comm_codecs_registry(
            comm_compression, device=env.device, rows=largest_table_rows(model)
        )
    topo = env.topology
    constraints = {table_name(f): ParameterConstraints(sharding_types=[sharding]) for f in cfg.sparse_features}
    sharders = [CpuRowWiseEBCSharder(qcomm_codecs_registry=qcomm_codecs_registry)]
    planner = EmbeddingShardingPlanner(
        topology=PlannerTopology(
            world_size=topo.world_size,
            compute_device=env.device.type,
            local_world_size=topo.local_world_size,
        ),
        constraints=constraints,
    )
    # plan() on every rank rather than collective_plan(): the planner is deterministic, and a
    # planning error on rank 0 would otherwise leave the other ranks hanging in the broadcast.
    plan = planner.plan(model, sharders)
    return DistributedModelParallel(
        module=model,
        env=ShardingEnv.from_process_group(dist.group.WORLD),
        device=env.device,
        plan=plan,
        sharders=sharders,
        data_parallel_wrapper=exact_resume_ddp_wrapper(),
    )
