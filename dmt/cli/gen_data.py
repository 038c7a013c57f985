"""``dmt gen-data``: synthetic Criteo-format rows with planted feature groups, plus their truth.

Example:
    dmt gen-data --rows 1000000 --out data/train.txt --truth data/truth.json --seed 0
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time

from dmt.atomic import atomic_write_text
from dmt.cli.args import POSITIVE_INT, SEED
from dmt.cli.outputs import check_output_file
from dmt.data.synthetic import PRESETS, generate_criteo
from dmt.errors import DmtError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``gen-data`` subcommand to the ``dmt`` parser."""
    p = subparsers.add_parser(
        "gen-data",
        help="generate synthetic Criteo-format rows with planted feature groups",
        description=(
            "Write N rows in the Criteo Kaggle TSV format (label, 13 integers, 26 hex categoricals) "
            "whose click depends on pairwise interactions inside hidden groups of categorical "
            "features, and a JSON file with the groups (the truth a tower partition is checked "
            "against). Both files are written atomically; a .gz output is gzip-compressed."
        ),
    )
    p.add_argument("--rows", type=POSITIVE_INT, required=True, help="number of rows to generate (>= 1)")
    p.add_argument("--out", required=True, help="output TSV file (.gz to compress)")
    p.add_argument("--truth", help="output JSON file with the planted groups (default: <out>.truth.json)")
    p.add_argument("--seed", type=SEED, default=0, help="random seed; same seed, same bytes (default: 0)")
    p.add_argument(
        "--groups", type=POSITIVE_INT, default=None, help="number of planted groups (default: the preset's, 4)"
    )
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="default",
        help="'default': Criteo-like cardinalities (up to 3M ids); 'tiny': <= 1000 ids a feature",
    )
    p.add_argument("--progress", action="store_true", help="show a progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Generate the rows and the truth file; print a one-line summary. Returns the exit code."""
    check_output_file(args.out, "--out")  # before the default --truth is derived from it
    if args.truth is None:
        args.truth = f"{args.out}.truth.json"
    if os.path.abspath(args.out) == os.path.abspath(args.truth):
        raise DmtError(f"--out and --truth are the same file ({args.out}); give two paths")
    overrides = {} if args.groups is None else {"num_groups": args.groups}
    try:
        spec = PRESETS[args.preset](**overrides)
    except ValueError as e:
        raise DmtError(f"bad generator settings: {e}") from None
    check_output_file(args.truth, "--truth")

    t0 = time.perf_counter()
    try:
        truth = generate_criteo(args.out, rows=args.rows, seed=args.seed, spec=spec, progress=args.progress)
    except OSError as e:
        raise DmtError(f"cannot write {args.out}: {e.strerror or e}") from None
    try:
        atomic_write_text(args.truth, json.dumps(truth, indent=2) + "\n")
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(args.out)  # all or nothing: no data file without its truth
        raise DmtError(f"cannot write {args.truth}: {e.strerror or e}") from None
    seconds = time.perf_counter() - t0
    size = os.path.getsize(args.out)
    print(
        f"wrote {args.rows:,} rows to {args.out} ({size:,} bytes) in {seconds:.1f}s: "
        f"click rate {truth['click_rate']:.1%}, {len(truth['groups'])} planted groups "
        f"(preset {args.preset}, seed {args.seed}); truth in {args.truth}"
    )
    return 0
