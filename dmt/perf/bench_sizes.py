"""The sizes of a model that the analytic byte model (``dmt.perf.comm_model``) needs.

Read off a meta model (tables without memory), so they need no sharded model and no process group:
``dmt bench`` and ``benchmarks/bench_comm_bytes.py`` take them next to what they measure.

Example:
    >>> from dmt.distributed.topology import Topology
    >>> from dmt.model.flat import ModelConfig
    >>> from dmt.plan import TowerPlan
    >>> from dmt.train.build import TowerSpec
    >>> from dmt.train.optim import OptimConfig
    >>> cfg, optim = ModelConfig.preset("debug"), OptimConfig()
    >>> model_sizes(cfg, optim).dense_params
    6137
    >>> spec = TowerSpec(plan=TowerPlan.from_groups([cfg.sparse_features[:13], cfg.sparse_features[13:]], 2))
    >>> sizes = model_sizes(cfg, optim, spec, Topology(world_size=4, local_world_size=2))
    >>> sizes.tower_features, sizes.tower_outputs, sizes.intra_sharding
    ((13, 13), (104, 104), 'table_wise')
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, kw_only=True)
class ModelSizes:
    """What the analytic byte model needs of one model, besides the batch shape."""

    dense_params: int  # everything that is not a table: replicated over the world (world DDP)
    tower_params: int = 0  # tower modules, replicated per host (intra-host DDP)
    tower_features: tuple[int, ...] = ()  # F_t per tower, plan order
    tower_outputs: tuple[int, ...] = ()  # floats per sample per tower
    intra_sharding: str | None = None  # a TowerSharding value, when every tower table uses one type


def model_sizes(model_cfg, optim_cfg, towers=None, topology=None, device_type: str = "cpu") -> ModelSizes:
    """The sizes of the flat model (``towers`` None) or of its DMT transform sharded on ``topology``.

    Builds its own meta model under a forked RNG, so it neither needs memory for the tables nor
    changes the weights a model built afterwards gets.

    Args:
        model_cfg: a :class:`dmt.model.flat.ModelConfig`.
        optim_cfg: the :class:`dmt.train.optim.OptimConfig` the model trains with: under "auto", a
            row-wise table optimizer decides how a host shards its towers.
        towers: a :class:`dmt.train.build.TowerSpec`, or None for the flat model.
        topology: the :class:`dmt.distributed.topology.Topology` the towers are sharded on (it decides
            ``intra_sharding`` under ``"auto"``); needed with ``towers``.
        device_type: "cpu" or "cuda", as the sharding plan is built for.
    """
    from dmt.model.flat import build_flat_model
    from dmt.train.optim import apply_sparse_optimizer

    with torch.random.fork_rng(devices=[]):
        flat = build_flat_model(model_cfg, device="meta")
        if towers is None:
            dense = sum(p.numel() for n, p in flat.named_parameters() if "embedding_bag_collection" not in n)
            return ModelSizes(dense_params=dense)
        from dmt.model.transform import transform

        model = transform(flat, towers.plan, tower_module=towers.module, global_interaction=towers.global_interaction)
    apply_sparse_optimizer(model, optim_cfg)
    return _tower_sizes(model, towers, topology, device_type)


def _tower_sizes(model: torch.nn.Module, towers, topology, device_type: str) -> ModelSizes:
    from dmt.distributed.sharding_plan import build_sharding_plan, find_tower_collection, intra_sharding_of
    from dmt.model.dmt import tower_output_dims

    fqn, collection = find_tower_collection(model)
    # The plan dmt.shard follows (pure: nothing is sharded).
    plan = build_sharding_plan(model, towers.plan, topology, sharding=towers.sharding, device_type=device_type)
    return ModelSizes(
        dense_params=sum(p.numel() for n, p in model.named_parameters() if not n.startswith(f"{fqn}.")),
        tower_params=sum(p.numel() for t in collection.towers for p in t.interaction.parameters()),
        tower_features=tuple(len(t.features) for t in towers.plan.towers),
        tower_outputs=tower_output_dims(collection),
        intra_sharding=intra_sharding_of(plan),
    )
