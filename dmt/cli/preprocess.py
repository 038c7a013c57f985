"""``dmt preprocess``: Criteo TSV -> per-day ``.npy`` files (torchrec's layout) that training memory-maps.

Example:
    dmt preprocess day_0.gz day_1.gz ... day_23.gz --out criteo_1tb_npy --progress
    dmt preprocess train.txt --out kaggle_npy --skip-bad-rows
"""

from __future__ import annotations

import argparse

from dmt.cli.args import NON_NEGATIVE_INT, POSITIVE_INT
from dmt.data.preprocess import PreprocessConfig, preprocess_criteo


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``preprocess`` subcommand to the ``dmt`` parser."""
    p = subparsers.add_parser(
        "preprocess",
        help="convert Criteo TSV (.gz too) to per-day .npy files for memory-mapped training",
        description=(
            "Convert Criteo TSV files (Kaggle train.txt, Terabyte day_0 .. day_23, .gz too) into "
            "day_N_dense.npy / day_N_sparse.npy / day_N_labels.npy, the layout torchrec.datasets.criteo "
            "reads, plus manifest.json. Files named day_N keep N; others become day_0, day_1, ... in "
            "the order given. Plain files are parsed in parallel byte ranges, .gz files one per worker. "
            "An interrupted run resumes where it stopped when run again with the same inputs and --out. "
            "Dense values are stored as log1p(max(x, 0)), missing categoricals as -1."
        ),
    )
    p.add_argument("data", nargs="+", metavar="DATA", help="Criteo TSV files, plain or .gz (one day each)")
    p.add_argument("--out", required=True, help="output directory (created; an unfinished run there is resumed)")
    p.add_argument(
        "--workers", type=NON_NEGATIVE_INT, default=0, help="parallel worker processes (default 0: every core)"
    )
    p.add_argument("--skip-bad-rows", action="store_true", help="skip and count malformed rows instead of failing")
    p.add_argument(
        "--part-mb",
        type=POSITIVE_INT,
        default=256,
        help="plain files are parsed in ranges of about this many MB: the unit of parallel work and of restart (256)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Preprocess, then print one line per day and a total. Returns the exit code."""
    cfg = PreprocessConfig(
        inputs=tuple(args.data),
        out=args.out,
        workers=args.workers,
        skip_bad_rows=args.skip_bad_rows,
        part_bytes=args.part_mb << 20,
        progress=not args.no_progress,
    )
    report = preprocess_criteo(cfg)
    for day in report.days:
        skipped = f", {day['bad_rows_skipped']:,} bad rows skipped" if day["bad_rows_skipped"] else ""
        print(f"{day['stem']}: {day['rows']:,} rows from {day['source']['path']}{skipped}")
    reused = []
    if report.days_reused:
        reused.append(f"{report.days_reused} day(s) already done")
    if report.parts_reused:
        reused.append(f"{report.parts_reused} range(s) done by an earlier run")
    print(
        f"wrote {report.rows:,} rows in {len(report.days)} day(s) to {cfg.out} in {report.seconds:.1f}s "
        f"({cfg.num_workers} workers{'; ' + ', '.join(reused) if reused else ''}); "
        f"train with --data {cfg.out}"
    )
    return 0
