"""Benchmark: does building batches on threads slow the thread that launches the training step?

A launch-bound step (small batches on a GPU) is a thread issuing many small ops, each returning to
Python. ``dmt train`` builds the next batches on ``--data-workers`` threads (``dmt.data.Prefetcher``);
their Python between numpy calls takes the GIL from the launching thread. This emulates the job:
each "step" takes one batch from the producer and then launches ``--step-ms`` worth of small
tensor ops on ``--device``. Rows: Criteo days of ``dmt preprocess`` (``--data``, memory-mapped, as
the job reads them) or ``--rows`` generated in memory. Prints ms per step for batches built in
advance (0 workers) and for each worker count, the modes interleaved over ``--repeats`` rounds.

Usage:
    .venv/bin/python -m benchmarks.bench_producer --rows 1000000 --batch-size 2048
    python -m benchmarks.bench_producer --data /tmp/scale/npy --device cuda   # on the GPU box
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Sequence

import torch

from dmt.data.criteo import read_criteo
from dmt.data.npy_layout import open_preprocessed
from dmt.data.npy_source import RankBatches, RowSet, Shuffle
from dmt.data.prefetch import Prefetcher
from dmt.data.synthetic import generate_criteo


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", help="a `dmt preprocess` directory (default: generate --rows in memory)")
    p.add_argument("--rows", type=int, default=1_000_000, help="rows to generate without --data (1M)")
    p.add_argument("--batch-size", type=int, default=2048, help="rows per batch (2048)")
    p.add_argument("--step-ms", type=float, default=15.0, help="launch work per step, calibrated alone (15)")
    p.add_argument("--steps", type=int, default=60, help="timed steps per run (60)")
    p.add_argument("--repeats", type=int, default=3, help="rounds over all modes (3)")
    p.add_argument(
        "--workers",
        default="0,1,2,auto",
        help="producer threads to compare; 0: batches built in advance, auto: 1, grown while the step waits (to 4)",
    )
    p.add_argument("--device", default="cpu", help="where the step's small ops run (cpu, cuda)")
    return p.parse_args(argv)


def load_rows(args: argparse.Namespace) -> RowSet:
    if args.data:
        return RowSet.from_data(open_preprocessed(args.data))
    with tempfile.TemporaryDirectory(prefix="dmt-bench-") as tmp:
        path = os.path.join(tmp, "train.txt")
        generate_criteo(path, rows=args.rows, seed=0)
        arrays, _ = read_criteo(path)
    return RowSet.from_arrays(arrays)


class LaunchBoundStep:
    """``n`` small in-place ops on ``device``: a step whose cost is the launching thread's time."""

    def __init__(self, device: torch.device, step_ms: float) -> None:
        self.device = device
        self.x = torch.zeros(16, device=device)
        self.n = 1000
        self.run()  # the first run starts CUDA: calibrate on the second (on CUDA the first made 3 ms "15 ms" steps)
        start = time.perf_counter()
        self.run()
        self.n = max(1, int(1000 * step_ms / ((time.perf_counter() - start) * 1e3)))

    def run(self) -> None:
        for _ in range(self.n):
            self.x.add_(1)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def time_steps(batches, step: LaunchBoundStep, steps: int) -> float:
    """Mean ms per step: take a batch, launch the step's ops."""
    it = iter(batches)
    next(it)  # the first batch waits for the producer to start
    start = time.perf_counter()
    for _ in range(steps):
        next(it)
        step.run()
    return (time.perf_counter() - start) / steps * 1e3


def run_mode(rows: RowSet, workers: int | str, step: LaunchBoundStep, args: argparse.Namespace) -> tuple[float, int]:
    """Mean ms per step with ``workers`` building, and how many were building at the end."""
    rank_batches = RankBatches(
        rows, batch_size=args.batch_size, num_embeddings=(200_000,) * 26, rank=0, world_size=1, shuffle=Shuffle(seed=0)
    )
    if workers == 0:
        built = [rank_batches.build(i) for i in range(args.steps + 1)]
        return time_steps(built, step, args.steps), 0
    pin = step.device.type == "cuda"
    threads = {"workers": 1, "max_workers": 4} if workers == "auto" else {"workers": workers}
    with Prefetcher(rank_batches, depth=4, pin_memory=pin, **threads) as produced:
        return time_steps(produced, step, args.steps), produced.workers


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    modes = [w if w == "auto" else int(w) for w in args.workers.split(",")]
    rows = load_rows(args)
    if len(rows) < args.batch_size * (args.steps + 8):
        raise SystemExit(f"{len(rows):,} rows are too few for {args.steps} steps of {args.batch_size}: raise --rows")
    step = LaunchBoundStep(torch.device(args.device), args.step_ms)
    times: dict[int | str, list[float]] = {w: [] for w in modes}
    ended: dict[int | str, int] = {}
    for _ in range(args.repeats):
        for w in modes:
            ms, ended[w] = run_mode(rows, w, step, args)
            times[w].append(ms)
    base = statistics.median(times[0]) if 0 in times else None
    shape = f"{args.batch_size} rows per batch, {step.n} ops per step on {args.device}"
    print(f"\n{shape}, {args.steps} steps x {args.repeats}\n")
    print("| producer | ms/step (median) | runs | vs built in advance |")
    print("|---|---:|---|---:|")
    for w in modes:
        med = statistics.median(times[w])
        label = {0: "built in advance", 1: "1 thread", "auto": f"auto (ended at {ended[w]})"}.get(w, f"{w} threads")
        ratio = f"{med / base:.2f}x" if base else "-"
        print(f"| {label} | {med:.2f} | {', '.join(f'{t:.1f}' for t in times[w])} | {ratio} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
