"""Benchmark: DMT's vectorised Criteo reader vs torchrec's ``BinaryCriteoUtils.tsv_to_npys``.

Generates ``--rows`` synthetic rows (exact Criteo Kaggle format) into a temp dir, parses the same
file with both readers in one run, checks they agree on labels and categoricals, and prints a
markdown table. torchrec's reader goes row by row in Python, so 1M rows take it a minute or more.

Usage:
    .venv/bin/python benchmarks/bench_reader.py --rows 1000000
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence

import numpy as np
from torchrec.datasets.criteo import BinaryCriteoUtils

from dmt.data.criteo import read_criteo
from dmt.data.synthetic import generate_criteo


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000, help="rows to generate and parse (default: 1M)")
    p.add_argument("--seed", type=int, default=0, help="generator seed (default: 0)")
    p.add_argument("--skip-torchrec", action="store_true", help="time only DMT's reader")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dmt-bench-") as tmp:
        path = os.path.join(tmp, "train.txt")  # no "test" in the name: torchrec would drop labels
        t0 = time.perf_counter()
        generate_criteo(path, rows=args.rows, seed=args.seed)
        gen_s = time.perf_counter() - t0
        size = os.path.getsize(path)
        print(
            f"generated {args.rows:,} rows ({size / 1e6:.0f} MB) in {gen_s:.2f}s ({args.rows / gen_s:,.0f} rows/s)",
            file=sys.stderr,
        )

        t0, c0 = time.perf_counter(), time.process_time()
        ours, report = read_criteo(path)
        ours_s, ours_cpu = time.perf_counter() - t0, time.process_time() - c0
        assert report.rows == args.rows, report
        results = [("dmt.data.read_criteo", ours_s, ours_cpu)]

        if not args.skip_torchrec:
            outs = [os.path.join(tmp, f"{k}.npy") for k in ("dense", "sparse", "labels")]
            t0, c0 = time.perf_counter(), time.process_time()
            BinaryCriteoUtils.tsv_to_npys(path, *outs, dataset_name="criteo_kaggle")
            results.append(
                ("torchrec BinaryCriteoUtils.tsv_to_npys", time.perf_counter() - t0, time.process_time() - c0)
            )
            # Same file, same answer: torchrec maps a missing categorical to 0, we map it to -1.
            sparse, labels = np.load(outs[1]), np.load(outs[2])
            assert np.array_equal(np.where(ours.sparse < 0, 0, ours.sparse), sparse), "categoricals differ"
            assert np.array_equal(ours.labels, labels[:, 0].astype(np.float32)), "labels differ"

    # CPU seconds next to wall seconds: on a shared machine the wall clock also counts waiting.
    header = f"reader ({args.rows:,} rows, {size / 1e6:.0f} MB)"
    print(f"| {header} | seconds | CPU seconds | rows/s | time vs DMT |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, s, cpu in results:
        print(f"| {name} | {s:.2f} | {cpu:.2f} | {args.rows / s:,.0f} | {s / ours_s:.1f}x |")
    print(f"load average while running: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
