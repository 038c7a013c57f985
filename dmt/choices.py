"""The named choices a user makes, one enum per concept, shared by the CLI, the sharding code and
the cost model (torch-free, so the CLI and the cost model import it at no cost).

Every enum is a ``str`` enum: a member equals its value (``FlatSharding.TABLE_WISE ==
"table_wise"``), so plans, bench JSONs and argparse keep plain strings, and :meth:`parse` turns a
string from any of them into a member with one clear error.

Example:
    >>> TowerSharding.parse("table_row_wise") is TowerSharding.TABLE_ROW_WISE
    True
    >>> FlatSharding.names()[:2]
    ('table_wise', 'row_wise')
    >>> LinkKind.parse("hierarchical") is LinkKind.HIERARCHICAL
    True
"""

from __future__ import annotations

from enum import Enum

from dmt.errors import DmtError


class _Choice(str, Enum):
    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The values, in definition order (argparse ``choices``, error messages)."""
        return tuple(m.value for m in cls)

    @classmethod
    def parse(cls, value: str | _Choice, what: str | None = None) -> _Choice:
        """The member whose value is ``value``; DmtError naming the choices otherwise."""
        try:
            return cls(value)
        except ValueError:
            raise DmtError(f"{what or cls.__name__}={value!r} is not one of {list(cls.names())}") from None

    def __str__(self) -> str:
        return self.value


class FlatSharding(_Choice):
    """How the flat model's tables are sharded over the whole job (torchrec's sharding types)."""

    TABLE_WISE = "table_wise"  # whole tables on ranks of any host
    ROW_WISE = "row_wise"  # every table's rows over all ranks
    COLUMN_WISE = "column_wise"  # every table's columns over ranks
    TABLE_ROW_WISE = "table_row_wise"  # a table's rows over the ranks of one host (TWRW)
    DATA_PARALLEL = "data_parallel"  # every table replicated


class TowerSharding(_Choice):
    """How a host shards its towers' tables over its own GPUs (DMT's intra-host lookup).

    ``TABLE_WISE`` (whole tables, one rank each) is what ``AUTO`` does on one-GPU hosts; on hosts
    of several GPUs it places each table whole on one of them
    (:func:`dmt.distributed.sharding_plan.build_sharding_plan`); the cost and comm models use it by
    that name.
    """

    AUTO = "auto"  # see dmt.distributed.sharding_plan.build_sharding_plan
    TABLE_ROW_WISE = "table_row_wise"  # rows over the host's GPUs (TWRW): exact under any optimizer
    TABLE_COLUMN_WISE = "table_column_wise"  # columns (TWCW): changes row-wise Adagrad's state
    TABLE_WISE = "table_wise"  # whole tables, each on one GPU of its host (exact under any optimizer)


class CommPrecision(_Choice):
    """Precision of the compressed embedding exchange (``--comm-compression``), one per direction."""

    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"
    FP8 = "fp8"
    INT8 = "int8"
    LOSSY = "lossy"  # error-bounded, see dmt.distributed.qcomm


class FlatBaseline(_Choice):
    """A flat (non-DMT) model as a user would shard it: a sharding type, torchrec's planner, or 2D.

    The baselines ``dmt bench`` (variants ``flat:<value>``) and the cost model compare DMT with;
    see :func:`dmt.distributed.flat.shard_flat`.
    """

    TABLE_WISE = "table_wise"
    TABLE_ROW_WISE = "table_row_wise"
    ROW_WISE = "row_wise"
    PLANNER = "planner"  # torchrec's planner, no sharding-type constraint: its own plan for the topology
    TWO_D = "2d"  # torchrec's DMPCollection (2D sparse parallelism): shard over one rank per host, replicate in it


class LinkKind(_Choice):
    """How emulated hosts on one GPU box are connected (``dmt bench --link``), see dmt.distributed.links.

    On real hosts the link is what the cluster has; these emulate one with NCCL's transports.
    """

    NVLINK = "nvlink"  # NCCL's defaults: every collective on NVLink (P2P) or shared memory
    HIERARCHICAL = "hierarchical"  # NVLink inside an emulated host, NCCL's TCP sockets between hosts
    SOCKETS = "sockets"  # TCP sockets for every collective, intra-host ones too


class TableInit(_Choice):
    """How a sharded model's tables start (dmt.train.build)."""

    AUTO = "auto"  # seeded for small tables, else local (dmt.train.build.SEEDED_MAX_BYTES)
    SEEDED = "seeded"  # the one-process run's tables, copied into the shards: every rank builds them whole
    LOCAL = "local"  # each rank draws its own shards (torchrec's init on the meta model): no whole table


# The tower shardings a user can ask for.
USER_TOWER_SHARDINGS = (
    TowerSharding.AUTO,
    TowerSharding.TABLE_ROW_WISE,
    TowerSharding.TABLE_COLUMN_WISE,
    TowerSharding.TABLE_WISE,
)
# What a flat model can be sharded by (dmt.distributed.flat.shard_flat): the baselines, then any
# other torchrec sharding type.
FLAT_LAYOUTS = tuple(dict.fromkeys((*FlatBaseline.names(), *FlatSharding.names())))
