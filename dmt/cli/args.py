"""Arguments that several ``dmt`` subcommands take, added here once, with choices from :mod:`dmt.choices`.

Flags name the thing they set: ``--flat-sharding`` (the flat model's tables over the job),
``--tower-sharding`` (a host's tower tables over its GPUs), ``--tower-compression`` (the tower
modules' ratio c). The old spellings ``--sharding`` and ``--compression`` still parse.
"""

from __future__ import annotations

import argparse

from dmt.choices import USER_TOWER_SHARDINGS, FlatSharding


def add_flat_sharding_argument(group: argparse._ArgumentGroup, default: str = FlatSharding.TABLE_WISE) -> None:
    """``--flat-sharding`` (old spelling ``--sharding``): torchrec's sharding type for the flat model."""
    group.add_argument(
        "--flat-sharding",
        "--sharding",
        dest="flat_sharding",
        choices=FlatSharding.names(),
        default=str(default),
        help=f"how the flat model's tables are sharded over all ranks ({default}; --sharding is the old spelling)",
    )


def add_tower_sharding_argument(group: argparse._ArgumentGroup) -> None:
    """``--tower-sharding``: how a host's tower tables are sharded over its GPUs (dmt.distributed.sharding_plan)."""
    group.add_argument(
        "--tower-sharding",
        choices=[s.value for s in USER_TOWER_SHARDINGS],
        default="auto",
        help="tower tables inside a host: table_row_wise (rows over the host's GPUs), table_column_wise "
        "(columns; exact with plain Adagrad/SGD, not with row-wise Adagrad), auto (whole tables on "
        "one-GPU hosts; else row-wise under row-wise Adagrad or for tables > 65,536 rows, else column-wise)",
    )


def add_tower_compression_argument(group: argparse._ArgumentGroup, default: float) -> None:
    """``--tower-compression`` (old spelling ``--compression``): the tower modules' output ratio c."""
    group.add_argument(
        "--tower-compression",
        "--compression",
        dest="tower_compression",
        type=float,
        default=default,
        help=f"tower output compression ratio c: a tower of F features emits round(F/c) vectors ({default:g}; "
        "--compression is the old spelling)",
    )
