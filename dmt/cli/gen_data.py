"""``dmt gen-data``: synthetic Criteo-format rows with planted feature groups, plus their truth.

Example:
    dmt gen-data --rows 1000000 --out data/train.txt --truth data/truth.json --seed 0
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import time

from tqdm import tqdm

from dmt.atomic import atomic_write_text
from dmt.cli.args import POSITIVE_INT, SEED
from dmt.cli.outputs import check_output_dir, check_output_file
from dmt.data.synthetic import CHUNK_ROWS, PRESETS, generate_criteo
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
    p.add_argument(
        "--days",
        type=POSITIVE_INT,
        help="write the rows as K day files DIR/day_0 .. day_{K-1} (--out is then a directory), in "
        "parallel; together they are the rows one file of --rows would hold",
    )
    p.add_argument("--workers", type=POSITIVE_INT, help="--days: parallel writers (default: every core)")
    # A progress bar by default, as every other command; --progress was the opt-in before.
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("--progress", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(progress=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Generate the rows and the truth file; print a one-line summary. Returns the exit code."""
    if args.days is not None:
        return run_days(args)
    if args.workers is not None:
        raise DmtError("--workers writes day files in parallel: give --days K too")
    check_output_file(args.out, "--out")  # before the default --truth is derived from it
    if args.truth is None:
        args.truth = f"{args.out}.truth.json"
    if os.path.abspath(args.out) == os.path.abspath(args.truth):
        raise DmtError(f"--out and --truth are the same file ({args.out}); give two paths")
    spec = _spec(args)
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


def _spec(args: argparse.Namespace):
    overrides = {} if args.groups is None else {"num_groups": args.groups}
    try:
        return PRESETS[args.preset](**overrides)
    except ValueError as e:
        raise DmtError(f"bad generator settings: {e}") from None


def run_days(args: argparse.Namespace) -> int:
    """``--days K``: the rows of one long file cut into K day files, written by parallel processes.

    Day ``d`` starts at a chunk boundary (``CHUNK_ROWS``), and each writer starts its random streams
    at its first chunk, so the days are exactly the pieces of the single file ``--rows`` would give.
    """
    check_output_dir(args.out, "--out")
    truth_path = args.truth or os.path.join(args.out, "truth.json")
    spec = _spec(args)
    chunks = -(-args.rows // CHUNK_ROWS)
    if args.days > chunks:
        raise DmtError(f"--days {args.days} needs at least {args.days * CHUNK_ROWS:,} rows ({CHUNK_ROWS} per chunk)")
    os.makedirs(args.out, exist_ok=True)
    cuts = [d * chunks // args.days for d in range(args.days + 1)]
    jobs = [
        (os.path.join(args.out, f"day_{d}"), min(cuts[d + 1] * CHUNK_ROWS, args.rows) - cuts[d] * CHUNK_ROWS, cuts[d])
        for d in range(args.days)
    ]
    t0 = time.perf_counter()
    workers = args.workers or os.cpu_count() or 1
    with concurrent.futures.ProcessPoolExecutor(min(workers, args.days)) as pool:
        futures = [
            pool.submit(generate_criteo, p, rows=n, seed=args.seed, spec=spec, first_chunk=c) for p, n, c in jobs
        ]
        truths = [f.result() for f in tqdm(futures, desc="days", unit="day", disable=not args.progress)]
    truth = {**truths[0], "rows": args.rows}
    truth["click_rate"] = sum(t["click_rate"] * t["rows"] for t in truths) / args.rows
    atomic_write_text(truth_path, json.dumps(truth, indent=2) + "\n")
    print(
        f"wrote {args.rows:,} rows as {args.days} days to {args.out} in {time.perf_counter() - t0:.1f}s "
        f"({min(workers, args.days)} writers): click rate {truth['click_rate']:.1%}; truth in {truth_path}; "
        f"next: dmt preprocess {args.out}/day_* --out {args.out.rstrip('/')}_npy"
    )
    return 0
