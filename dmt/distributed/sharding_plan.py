"""The torchrec ``ShardingPlan`` of a DMT model: every tower's tables on its plan host.

Plain data, built in one process without process groups: :func:`build_sharding_plan` turns a
:class:`dmt.plan.TowerPlan` and a :class:`dmt.distributed.topology.Topology` into torchrec's plan, by hand and
in plan order (torchrec's planner picks hosts without regard to the plan, and on CPU refuses
row-wise types); :func:`dmt.distributed.tower_sharding.shard` hands it to torchrec.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn
from torchrec.distributed.embedding_tower_sharding import EmbeddingTowerCollectionSharder
from torchrec.distributed.sharding_plan import column_wise, construct_module_sharding_plan, table_row_wise
from torchrec.distributed.types import ParameterSharding, ShardingPlan, ShardingType
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_tower import EmbeddingTower, EmbeddingTowerCollection

from dmt.choices import USER_TOWER_SHARDINGS, TowerSharding
from dmt.distributed.topology import Topology
from dmt.errors import DmtError
from dmt.model.transform import tables_in_lookup_order
from dmt.plan import PlanError, TowerPlan

__all__ = [
    "SMALL_TABLE_ROWS",
    "TW",
    "TWCW",
    "TWRW",
    "build_sharding_plan",
    "find_tower_collection",
    "intra_sharding_of",
    "place_tables",
    "tower_feature_names",
]

# torchrec's names for the two ways a host shards its tables (the same strings as TowerSharding's).
TWRW = ShardingType.TABLE_ROW_WISE.value
TWCW = ShardingType.TABLE_COLUMN_WISE.value
# Whole tables, each on one rank of its host. torchrec's tower sharder takes only TWRW and TWCW
# (its _replace_sharding_with_intra_node raises on anything else), so a whole table is given to it
# as a TWCW table of one column shard: torchrec's column-wise sharding is its table-wise sharding
# over column shards, so one full-width shard is a table-wise lookup on that rank.
TW = TowerSharding.TABLE_WISE.value
assert (TWRW, TWCW) == (TowerSharding.TABLE_ROW_WISE, TowerSharding.TABLE_COLUMN_WISE)
# "auto" shards a tower column-wise when all its tables have at most this many rows (see
# build_sharding_plan): below it, hot rows would pile row-wise lookups onto one rank.
SMALL_TABLE_ROWS = 65_536
# fbgemm's GPU kernels want column shards whose width is a multiple of 4.
_CW_ALIGN = 4


def tower_feature_names(tower: EmbeddingTower) -> list[str]:
    """The features of a tower's EBC, in its output (KeyedTensor key) order."""
    return [f for c in tower.embedding.embedding_bag_configs() for f in c.feature_names]


def find_tower_collection(model: nn.Module) -> tuple[str, EmbeddingTowerCollection]:
    """The FQN and module of the one ``EmbeddingTowerCollection`` in ``model``."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, EmbeddingTowerCollection)]
    if len(found) != 1:
        raise DmtError(
            f"expected one EmbeddingTowerCollection in the model, found {len(found)}"
            + (f" at {[n for n, _ in found]}" if found else "; transform the flat model with dmt.transform first")
        )
    return found[0]


def _plan_tower_tables(collection: EmbeddingTowerCollection, plan: TowerPlan) -> list[list[EmbeddingBagConfig]]:
    """Each plan tower's table configs, checked against the model's host groups.

    The model (``dmt.transform``) has one ``EmbeddingTower`` per host holding towers, in host
    order, with the features of that host's plan towers; any other shape was transformed with
    another plan (or by hand), and sharding it by this plan would place tables on wrong hosts.
    """
    hosts = sorted({t.host for t in plan.towers})
    groups = list(collection.towers)
    expected = [[f for t in plan.towers_on_host(h) for f in plan.towers[t].features] for h in hosts]
    found = [tower_feature_names(g) for g in groups]  # type: ignore[arg-type]
    if len(found) != len(expected) or any(sorted(a) != sorted(b) for a, b in zip(found, expected)):
        raise PlanError(
            f"the model's tower groups have features {found} but the plan puts {expected} on hosts {hosts}; "
            "shard with the plan the model was transformed with"
        )
    config_of = {f: c for g in groups for c in g.embedding.embedding_bag_configs() for f in c.feature_names}  # type: ignore[union-attr]
    return [tables_in_lookup_order(tower.features, config_of) for tower in plan.towers]


def _tower_sharding_type(
    configs: list[EmbeddingBagConfig], rowwise_optimizer: bool, choice: str, local_world_size: int
) -> str:
    """TWRW, TWCW or TW for one tower's tables under ``choice`` ("auto" or a type); see build_sharding_plan."""
    if choice != "auto":
        return choice
    if local_world_size == 1:
        # One rank per host: a column "shard" is the whole table, so TWCW is a table-wise lookup
        # (any optimizer keeps its maths) and skips row-wise bucketizing of every id.
        return TWCW
    if rowwise_optimizer:
        # Whole tables keep row-wise Adagrad's per-row state, as row shards do, at (L-1)/L of a
        # pooled vector per sample and table instead of L-1 (the cost model: 22.8 vs 23.3 ms at 2
        # hosts x 2 H200 behind sockets, 9.4 vs 14.1 ms on 8 hosts x 8 H100; dmt.perf.planning).
        return TW
    small = all(c.num_embeddings <= SMALL_TABLE_ROWS for c in configs)
    splits = all(c.embedding_dim % (_CW_ALIGN * local_world_size) == 0 for c in configs)
    return TWCW if small and splits else TWRW


def _has_rowwise_optimizer(collection: EmbeddingTowerCollection) -> bool:
    """Whether the tables carry an in-backward row-wise optimizer (RowWiseAdagrad).

    Column-wise shards would change such an optimizer's maths: it keeps one accumulator per row,
    the mean of the row's squared gradient, and a column shard averages over its own columns only,
    so the sharded model would no longer train like the unsharded one (measured: AUC 0.769 vs 0.778
    for identity towers that should equal the flat model).
    """
    return any(
        "rowwise" in cls.__name__.lower()
        for tower in collection.towers
        for p in tower.embedding.parameters()  # type: ignore[union-attr]
        for cls in getattr(p, "_optimizer_classes", ())
    )


def _table_column_wise(ranks: list[int]) -> Any:
    """torchrec has no TWCW generator: ``column_wise`` over the host's ranks, labelled TWCW."""
    generate = column_wise(ranks=ranks)

    def _generator(*args: Any) -> ParameterSharding:
        sharding = generate(*args)
        sharding.sharding_type = TWCW  # our own fresh object
        return sharding

    return _generator


def place_tables(configs: list[EmbeddingBagConfig], ranks: list[int]) -> dict[str, int]:
    """Whole tables onto ``ranks`` (one host's), balanced greedily: the table name -> its rank.

    Largest first (by width, then rows), each onto the rank with the least lookup work so far (the
    sum of its tables' widths: every table is read once per sample and id, so a rank's pooled
    bytes per sample are its widths' sum), ties broken by fewer rows held (memory), then by rank.
    Why not torchrec's planner: its placement comes from its own GPU perf estimates (meaningless
    on CPU, where the parity tests run) over the whole job; the lookup work here is exactly
    proportional to the widths, so the greedy rule is what a planner would converge to, stays the
    same on CPU and GPU, and is deterministic on every rank.

    Example:
        >>> tables = [EmbeddingBagConfig(num_embeddings=n, embedding_dim=8, name=f"t{n}", feature_names=[f"f{n}"])
        ...           for n in (10, 40, 30, 20, 50)]
        >>> place_tables(tables, [2, 3])
        {'t50': 2, 't40': 3, 't30': 3, 't20': 2, 't10': 2}
    """
    work = dict.fromkeys(ranks, 0)
    rows = dict.fromkeys(ranks, 0)
    out: dict[str, int] = {}
    for c in sorted(configs, key=lambda c: (-c.embedding_dim, -c.num_embeddings)):  # stable: plan order on ties
        rank = min(ranks, key=lambda r: (work[r], rows[r], r))
        out[c.name] = rank
        work[rank] += c.embedding_dim
        rows[rank] += c.num_embeddings
    return out


def _check_choices(plan: TowerPlan, sharding: str | Mapping[str, str]) -> dict[str, str]:
    """The sharding of every plan tower by name; DmtError for unknown towers or choices."""
    choices = dict(sharding) if isinstance(sharding, Mapping) else {t.name: sharding for t in plan.towers}
    unknown = sorted(set(choices) - {t.name for t in plan.towers})
    if unknown:
        raise DmtError(f"sharding names towers {unknown} that are not in the plan")
    allowed = [s.value for s in USER_TOWER_SHARDINGS]
    bad = sorted({str(c) for c in choices.values() if c not in allowed})
    if bad:
        raise DmtError(f"sharding {bad} is not one of {allowed}")
    return choices


def build_sharding_plan(
    model: nn.Module,
    plan: TowerPlan,
    topology: Topology,
    *,
    sharding: str | Mapping[str, str] = "auto",
    device_type: str = "cpu",
) -> ShardingPlan:
    """The torchrec ``ShardingPlan`` that puts every tower's tables on its plan host.

    Inside its host a tower is sharded one way for all its tables:

    * ``"table_row_wise"`` (TWRW): rows split over the host's L ranks; each id travels to one rank,
      but every rank returns a partial sum for every sample of the host's batch: L-1 pooled vectors
      per (sample, table) cross the host's links, growing with L.
    * ``"table_column_wise"`` (TWCW): columns split over the host's ranks in shards of a multiple
      of 4 wide (fewer shards than L when D/L is not); every rank does an equal share of every
      lookup, whatever the id skew, at the price of sending each id to every shard.
    * ``"table_wise"`` (TW): each table whole on one rank of the host, placed by
      :func:`place_tables` over all the host's table-wise tables; a pooled vector moves only when
      its sample is on another rank ((L-1)/L of one vector per (sample, table)), and row-wise
      Adagrad stays exact (rows keep their state). The cost: a rank's lookups are whole tables, so
      hosts with fewer tables than GPUs leave GPUs idle, and skewed tables load one GPU.
    * ``"auto"`` (default): with one rank per host TWCW (a whole-table lookup, no bucketizing);
      else TW under a row-wise optimizer (see :func:`_has_rowwise_optimizer`; TWRW before the
      cost model had TW), TWCW when all the tower's tables have at most ``SMALL_TABLE_ROWS`` rows
      and widths divisible into L shards of a multiple of 4 -- small tables are where a few hot
      rows would load one row-wise rank -- and TWRW otherwise.

    The compute kernel is torchrec's choice: fused when the tables carry an in-backward optimizer
    (``dmt.train.optim.apply_sparse_optimizer``), dense otherwise.

    Args:
        model: a DMT model (or anything with one ``EmbeddingTowerCollection`` matching ``plan``).
        plan: the tower plan; tower ``t`` goes to host ``plan.towers[t].host``.
        topology: the job's hosts and ranks.
        sharding: "auto", "table_row_wise", "table_column_wise" or "table_wise", for all towers or
            per tower name.
        device_type: "cpu" or "cuda".
    """
    fqn, collection = find_tower_collection(model)
    tower_tables = _plan_tower_tables(collection, plan)
    rowwise = _has_rowwise_optimizer(collection)
    choices = _check_choices(plan, sharding)
    kinds = [
        _tower_sharding_type(configs, rowwise, choices.get(t.name, "auto"), topology.local_world_size)
        for configs, t in zip(tower_tables, plan.towers)
    ]
    per_table: dict[str, Any] = {}
    for host in sorted({t.host for t in plan.towers}):
        ranks = list(topology.host_ranks(host))
        whole = [c for cs, t, k in zip(tower_tables, plan.towers, kinds) if t.host == host and k == TW for c in cs]
        per_table.update({name: _table_column_wise([r]) for name, r in place_tables(whole, ranks).items()})
    for configs, planned, kind in zip(tower_tables, plan.towers, kinds):
        if kind == TWRW:
            per_table.update({c.name: table_row_wise(host_index=planned.host) for c in configs})
        elif kind == TWCW:
            per_table.update({c.name: _table_column_wise(list(topology.host_ranks(planned.host))) for c in configs})
    module_plan = construct_module_sharding_plan(
        collection,
        per_table,
        sharder=EmbeddingTowerCollectionSharder(),  # only its sharding types are read
        local_size=topology.local_world_size,
        world_size=topology.world_size,
        device_type=device_type,
    )
    return ShardingPlan({fqn: module_plan})


def intra_sharding_of(sharding_plan: ShardingPlan) -> str | None:
    """The :class:`dmt.choices.TowerSharding` value every tower table of ``sharding_plan`` uses, or
    None when they differ; a TWCW table of one column shard counts as ``"table_wise"``.

    On hosts of one rank every "auto" table is such a shard: a whole-table lookup, ``"table_wise"``.
    """
    kinds = set()
    for module_plan in sharding_plan.plan.values():
        for ps in module_plan.values():  # type: ignore[union-attr]
            one_shard = ps.sharding_type == TWCW and len(ps.sharding_spec.shards) == 1  # type: ignore[union-attr]
            kinds.add(TW if one_shard else ps.sharding_type)
    return kinds.pop() if len(kinds) == 1 else None
