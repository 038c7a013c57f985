"""Arguments that several ``dmt`` subcommands take, added here once, with choices from :mod:`dmt.choices`.

Flags name the thing they set: ``--flat-sharding`` (the flat model's tables over the job),
``--tower-sharding`` (a host's tower tables over its GPUs), ``--tower-compression`` (the tower
modules' ratio c). The old spellings ``--sharding`` and ``--compression`` still parse.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from dmt.choices import USER_TOWER_SHARDINGS, FlatSharding, LinkKind
from dmt.errors import DmtError


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
        type=POSITIVE_FLOAT,
        default=default,
        help=f"tower output compression ratio c: a tower of F features emits round(F/c) vectors ({default:g}; "
        "--compression is the old spelling)",
    )


# ------------------------------------------------------------------ numbers
# Every numeric flag of every subcommand parses through one of these, so a bad value (nan, a
# negative seed, a zero size) is refused by argparse in one line with exit 2 before anything runs,
# instead of a traceback later or a silent replacement (``--embedding-dim 0`` once meant "the
# preset's"). Library configs keep their own checks in ``__post_init__`` for callers that skip the CLI.


def int_arg(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: an integer in ``[minimum, maximum]``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
            raise argparse.ArgumentTypeError(f"{value} must be {bounds}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def float_arg(minimum: float, *, above: bool = False, below: float | None = None) -> Callable[[str], float]:
    """An argparse ``type``: a finite float >= ``minimum`` (> with ``above``), and < ``below`` if given."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        too_low = value <= minimum if above else value < minimum
        if not math.isfinite(value) or too_low or (below is not None and value >= below):
            low = f"> {minimum:g}" if above else f">= {minimum:g}"
            bounds = low if below is None else f"{low} and < {below:g}"
            raise argparse.ArgumentTypeError(f"{text} must be a finite number {bounds}")
        return value

    parse.__name__ = "number"
    return parse


POSITIVE_INT = int_arg(1)
NON_NEGATIVE_INT = int_arg(0)
SEED = int_arg(0, 2**32 - 1)  # a range every seeded generator here (numpy's, torch's) accepts
POSITIVE_FLOAT = float_arg(0.0, above=True)
NON_NEGATIVE_FLOAT = float_arg(0.0)
FRACTION = float_arg(0.0, above=True, below=1.0)


def auto_or_positive_int(text: str) -> int | str:
    """``auto``, or a whole number >= 1 (argparse type)."""
    if text == "auto":
        return text
    try:
        return POSITIVE_INT(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither 'auto' nor a whole number >= 1") from None


auto_or_positive_int.__name__ = "'auto' or number"


def add_link_arguments(group: argparse._ArgumentGroup) -> None:
    """``--link`` and its socket knobs (dmt.distributed.links), for `dmt bench` and `dmt train`."""
    group.add_argument(
        "--link",
        choices=LinkKind.names(),
        help="GPU: how the emulated hosts are connected: nvlink (NCCL's defaults, the default), hierarchical "
        "(NVLink inside a host, NCCL TCP sockets between hosts: NCCL_HOSTID per host), sockets (TCP for every "
        "collective). Not on CPU: use --shaped-link there",
    )
    group.add_argument(
        "--socket-threads",
        type=POSITIVE_INT,
        help="NCCL_SOCKET_NTHREADS of the socket transport (1-16; NCCL's default otherwise): raises or lowers "
        "the socket link's bandwidth",
    )
    group.add_argument(
        "--sockets-per-thread", type=POSITIVE_INT, help="NCCL_NSOCKS_PERTHREAD (threads x sockets <= 64)"
    )


def emulated_link(args: argparse.Namespace):
    """The :class:`dmt.distributed.links.EmulatedLink` of these arguments (bench's ``--slow-link`` = sockets)."""
    from dmt.distributed.links import EmulatedLink

    slow_link = getattr(args, "slow_link", False)
    if slow_link and args.link not in (None, LinkKind.SOCKETS):
        raise DmtError(f"--slow-link is the old spelling of --link sockets; it contradicts --link {args.link}")
    kind = LinkKind.SOCKETS if slow_link else (args.link or LinkKind.NVLINK)
    return EmulatedLink(kind, socket_threads=args.socket_threads, sockets_per_thread=args.sockets_per_thread)
