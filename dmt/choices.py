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

    ``TABLE_WISE`` (whole tables, one rank each) is what ``AUTO`` does on one-GPU hosts; the cost
    and comm models use it by that name.
    """

    AUTO = "auto"  # see dmt.distributed.sharding_plan.build_sharding_plan
    TABLE_ROW_WISE = "table_row_wise"  # rows over the host's GPUs (TWRW): exact under any optimizer
    TABLE_COLUMN_WISE = "table_column_wise"  # columns (TWCW): changes row-wise Adagrad's state
    TABLE_WISE = "table_wise"  # whole tables (a one-GPU host)


class CommPrecision(_Choice):
    """Precision of the compressed embedding exchange (``--comm-compression``), one per direction."""

    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"
    FP8 = "fp8"
    INT8 = "int8"
    LOSSY = "lossy"  # error-bounded, see dmt.distributed.qcomm


# The tower shardings a user can ask for (TABLE_WISE only happens through AUTO on one-GPU hosts).
USER_TOWER_SHARDINGS = (TowerSharding.AUTO, TowerSharding.TABLE_ROW_WISE, TowerSharding.TABLE_COLUMN_WISE)
