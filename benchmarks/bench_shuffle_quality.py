"""Benchmark: what the block + window shuffle costs in quality, against a full permutation.

``dmt.data.Shuffle`` never holds a permutation of all rows: it permutes blocks of consecutive rows
and shuffles rows only inside windows (see ``dmt.data.npy_source``). Where rows are i.i.d. that
changes nothing, so the data here is made adversarially ordered: generated rows sorted by their
label (every click last), or by one categorical (a feature whose values drift through the file,
like Criteo's time-ordered days). The same flat DLRM ("small" preset, built and optimised as
``dmt train`` does) trains one epoch on each order with a full permutation
(``dmt.data.iter_batches``, the TSV path), the block + window shuffle (memory-mapped), and no
shuffle; AUC / log loss on held-out rows of the same generator run (i.i.d.).

Usage:
    .venv/bin/python -m benchmarks.bench_shuffle_quality --rows 1000000 --out benchmarks/results/data_scale
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from dmt.data import (
    CriteoArrays,
    RowSet,
    Shuffle,
    iter_batches,
    iter_rank_batches,
    open_preprocessed,
    read_criteo,
)
from dmt.data.npy_layout import write_day
from dmt.data.synthetic import generate_criteo
from dmt.model.flat import ModelConfig
from dmt.train.build import build_model
from dmt.train.loop import LoopConfig, train
from dmt.train.optim import OptimConfig

ORDERS = ("label", "cat_0")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000, help="training rows (1M)")
    p.add_argument("--eval-rows", type=int, default=200_000)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--preset", default="small", help="flat DLRM preset (small)")
    p.add_argument(
        "--seeds", default="0", help="comma-separated shuffle seeds: the spread between seeds is the noise (0)"
    )
    p.add_argument("--block-rows", type=int, default=Shuffle().block_rows)
    p.add_argument("--window-rows", type=int, default=Shuffle().window_rows)
    p.add_argument("--out", help="directory for shuffle_quality.md / .json")
    return p.parse_args(argv)


def _sorted(arrays: CriteoArrays, by: str) -> CriteoArrays:
    key = arrays.labels if by == "label" else arrays.sparse[:, 0]
    order = np.argsort(key, kind="stable")
    return CriteoArrays(arrays.labels[order], arrays.dense[order], arrays.sparse[order])


def _fit(batches: Iterator, steps: int, eval_arrays: CriteoArrays, args) -> dict:
    cfg = ModelConfig.preset(args.preset)
    optim = OptimConfig.for_preset(args.preset)  # as `dmt train` builds it, the preset's rates too
    model, optimizer = build_model(cfg, optim, seed=0, towers=None)

    def eval_batches():
        return iter_batches(eval_arrays, batch_size=args.batch_size, num_embeddings=cfg.num_embeddings, shuffle=False)

    result = train(model, optimizer, batches, eval_batches, LoopConfig(steps=steps, progress=False))
    return {k: result.evals[-1][k] for k in ("auc", "logloss")}


def _run_order(by: str, arrays: CriteoArrays, eval_arrays: CriteoArrays, tmp: Path, args) -> list[dict]:
    data = _sorted(arrays, by)
    write_day(tmp / by, "day_0", data.dense, data.sparse, data.labels.reshape(-1, 1))
    rows = RowSet.from_data(open_preprocessed(tmp / by))
    tables = ModelConfig.preset(args.preset).num_embeddings
    steps = len(data) // args.batch_size
    out = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        shuffle = Shuffle(seed=seed, block_rows=args.block_rows, window_rows=args.window_rows)
        runs = {
            "full permutation (iter_batches)": iter_batches(
                data, batch_size=args.batch_size, num_embeddings=tables, seed=seed
            ),
            f"blocks of {args.block_rows:,} + windows of {args.window_rows:,}": iter(
                iter_rank_batches(rows, batch_size=args.batch_size, num_embeddings=tables, shuffle=shuffle)
            ),
        }
        if seed == int(args.seeds.split(",")[0]):  # the same order whatever the seed: run it once
            runs["no shuffle"] = iter(iter_rank_batches(rows, batch_size=args.batch_size, num_embeddings=tables))
        for name, batches in runs.items():
            fit = _fit(batches, steps, eval_arrays, args)
            out.append({"order": f"sorted by {by}", "shuffle": name, "seed": seed, **fit})
            print(out[-1], file=sys.stderr)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="dmt-bench-shuffle-") as tmp_name:
        tmp = Path(tmp_name)
        # One file: the generator's seed also draws its planted interactions, so the held-out
        # rows must come from the same run (its rows are i.i.d.).
        generate_criteo(tmp / "rows.txt", rows=args.rows + args.eval_rows, seed=0)
        everything, _ = read_criteo(tmp / "rows.txt")
        arrays, eval_arrays = everything.slice(0, args.rows), everything.slice(args.rows, len(everything))
        results = [r for by in ORDERS for r in _run_order(by, arrays, eval_arrays, tmp, args)]
    lines = ["| training rows | shuffle | seed | eval AUC | eval log loss |", "| --- | --- | ---: | ---: | ---: |"]
    lines += [f"| {r['order']} | {r['shuffle']} | {r['seed']} | {r['auc']:.4f} | {r['logloss']:.4f} |" for r in results]
    table = "\n".join(lines)
    print(table)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        cmd = "python -m benchmarks.bench_shuffle_quality " + " ".join(sys.argv[1:] if argv is None else argv)
        Path(args.out, "shuffle_quality.md").write_text(
            f"# Shuffle quality on adversarially ordered rows\n\n`{cmd}`; the {args.preset!r} flat DLRM, one epoch, "
            f"batch {args.batch_size}, evaluated on {args.eval_rows:,} held-out generated rows.\n\n{table}\n"
        )
        Path(args.out, "shuffle_quality.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
