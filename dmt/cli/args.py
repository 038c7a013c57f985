"""The ``dmt`` subcommands; arguments that several of them take are added here once."""

from __future__ import annotations

import argparse


def add_tower_sharding_argument(group: argparse._ArgumentGroup) -> None:
    """``--tower-sharding``: how a host's tower tables are sharded over its GPUs (dmt.distributed.sharding_plan)."""
    group.add_argument(
        "--tower-sharding",
        choices=["auto", "table_row_wise", "table_column_wise"],
        default="auto",
        help="tower tables inside a host: table_row_wise (rows over the host's GPUs), table_column_wise "
        "(columns; exact with plain Adagrad/SGD, not with row-wise Adagrad), auto (whole tables on "
        "one-GPU hosts; else row-wise under row-wise Adagrad or for tables > 65,536 rows, else column-wise)",
    )
