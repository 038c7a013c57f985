"""Flat (non-tower) sharding: torchrec's planner and DistributedModelParallel, unchanged.

The flat baselines use torchrec as a user would (:class:`dmt.choices.FlatBaseline`):

* one sharding type for every table (``table_wise``, ``row_wise``, ``table_row_wise``, any
  :class:`dmt.choices.FlatSharding`): torchrec's planner places the shards under that constraint;
* ``planner``: torchrec's planner with no constraint, its own plan for the job's topology;
* ``2d``: torchrec's 2D sparse parallelism (``DMPCollection``): the tables are sharded over a
  group of one rank per host (the planner's plan for that group) and replicated on the ranks of a
  host, whose replicas ``DMPCollection.sync`` averages every ``sync_every`` steps over the host's
  fast link (:func:`replica_sync`). torchrec 1.6.1 and 1.8.0 have it, for CUDA only.

DMP shards the EmbeddingBagCollection and wraps the dense part in DDP.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import torch
import torch.distributed as dist
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner
from torchrec.distributed.planner import Topology as PlannerTopology
from torchrec.distributed.planner.types import ParameterConstraints
from torchrec.distributed.types import ShardingEnv, ShardingPlan

from dmt.choices import FLAT_LAYOUTS, FlatBaseline
from dmt.distributed.env import DistEnv
from dmt.distributed.qcomm import CommCompression, comm_codecs_registry, largest_table_rows
from dmt.distributed.torchrec_fixes import CpuRowWiseEBCSharder, exact_resume_ddp_wrapper
from dmt.errors import DmtError
from dmt.model.flat import ModelConfig, table_name


def _parse_layout(sharding: str) -> str:
    if sharding not in FLAT_LAYOUTS:
        raise DmtError(f"flat sharding={sharding!r} is not one of {list(FLAT_LAYOUTS)}")
    return str(sharding)


def shard_flat(
    model: torch.nn.Module,
    cfg: ModelConfig,
    env: DistEnv,
    sharding: str = "table_wise",
    *,
    qcomm_codecs_registry: dict | None = None,
    comm_compression: CommCompression | None = None,
) -> DistributedModelParallel:
    """Shard the flat model's tables: one sharding type, torchrec's own plan, or 2D (module docstring).

    ``qcomm_codecs_registry`` (torchrec's) or ``comm_compression`` (built with
    :func:`dmt.distributed.qcomm.comm_codecs_registry`) compresses the embedding comms, all of them: a flat
    model's all-to-alls mix intra- and cross-host destinations.

    Raises:
        DmtError: an unknown ``sharding``, both codec arguments, or ``"2d"`` without CUDA.
    """
    sharding = _parse_layout(sharding)
    if comm_compression is not None:
        if qcomm_codecs_registry is not None:
            raise DmtError("pass qcomm_codecs_registry or comm_compression to shard_flat, not both")
        qcomm_codecs_registry = comm_codecs_registry(
            comm_compression, device=env.device, rows=largest_table_rows(model)
        )
    sharders = [CpuRowWiseEBCSharder(qcomm_codecs_registry=qcomm_codecs_registry)]
    if sharding == FlatBaseline.TWO_D:
        return _shard_2d(model, env, sharders)
    topo = env.topology
    constraints = None
    if sharding != FlatBaseline.PLANNER:
        constraints = {table_name(f): ParameterConstraints(sharding_types=[sharding]) for f in cfg.sparse_features}
    planner = EmbeddingShardingPlanner(
        topology=PlannerTopology(
            world_size=topo.world_size, compute_device=env.device.type, local_world_size=topo.local_world_size
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


def _shard_2d(model: torch.nn.Module, env: DistEnv, sharders: list) -> DistributedModelParallel:
    """torchrec's DMPCollection: tables sharded over one rank per host, replicated inside a host.

    The sharding group is the H peers of a rank (torchrec's default layout, "replicated shards on
    the ranks within the node": ``use_inter_host_allreduce=False``), so the embedding all-to-all
    crosses hosts as flat table-wise does and the replica sync stays on the host's links. Its plan
    is torchrec's planner's for a group of H ranks, one per host, unconstrained.
    """
    try:
        from torchrec.distributed.model_parallel import DMPCollection
    except ImportError:  # torchrec before 2D sparse parallelism
        raise DmtError("flat 2d needs torchrec's DMPCollection (torchrec >= 1.1); this torchrec has none") from None
    if env.device.type != "cuda":
        raise DmtError("flat 2d (torchrec's DMPCollection) runs on CUDA only; leave flat:2d out on CPU")
    topo = env.topology
    planner = EmbeddingShardingPlanner(
        topology=PlannerTopology(world_size=topo.num_hosts, compute_device="cuda", local_world_size=1),
    )
    plan = planner.plan(model, sharders)
    return DMPCollection(
        module=model,
        device=env.device,
        plan=plan,
        world_size=topo.world_size,
        sharding_group_size=topo.num_hosts,
        global_pg=dist.group.WORLD,
        sharders=sharders,
        data_parallel_wrapper=exact_resume_ddp_wrapper(),
    )


def replica_sync(model: torch.nn.Module, every: int = 1) -> Callable[[], None] | None:
    """What to call after each optimizer step of a 2D model (None for any other model).

    ``DMPCollection.sync`` averages the replicas' tables and optimizer state over each host;
    without it the replicas drift apart. The returned callable syncs on every ``every``-th call.

    Raises:
        DmtError: ``every`` < 1.
    """
    if every < 1:
        raise DmtError(f"2d sync interval {every} must be >= 1")
    if not hasattr(model, "sync") or type(model).__name__ != "DMPCollection":
        return None
    calls = [0]

    def after_step() -> None:
        calls[0] += 1
        if calls[0] % every == 0:
            model.sync()  # type: ignore[operator]

    return after_step


def sharding_types(model: torch.nn.Module) -> dict[str, int]:
    """How many tables of a DMP model use each torchrec sharding type (what the planner chose)."""
    plan: ShardingPlan | None = getattr(model, "plan", None)
    if plan is None:
        return {}
    counts = Counter(ps.sharding_type for module_plan in plan.plan.values() for ps in module_plan.values())  # type: ignore[union-attr]
    return dict(sorted(counts.items()))
