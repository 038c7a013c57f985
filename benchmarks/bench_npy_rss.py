"""Benchmark: peak RSS of one process walking an epoch of 0.5M vs 4M preprocessed rows.

Generates ``--rows`` rows (default 4M), preprocesses them and their first ``--small-rows`` (0.5M)
into two directories, then runs each measurement in a fresh process (peak RSS is per process):

- ``iterate``: every batch of one shuffled epoch through ``RankBatches`` + ``Prefetcher``;
- ``train``: the same batches through ``dmt.train.loop.train`` (the "debug" flat DLRM, one process,
  evaluating a fixed 50k-row tail every 100 steps), i.e. the training step loop of ``dmt train``;
- ``train_losses_only``: ``train`` with a model whose training-mode output holds only a copy of
  the loss (all the loop uses of a training step), so the loop keeps no per-step logits (see below);
- ``train_mmap``: ``train`` with glibc's mmap threshold fixed (``MALLOC_MMAP_THRESHOLD_=65536``),
  which shows how much of ``train``'s growth is heap fragmentation (see FIXED_MMAP_THRESHOLD);
- ``tsv``: today's TSV path for comparison: ``read_criteo`` the whole file, then ``iter_batches``.

Prints a markdown table (peak RSS, the 4M / 0.5M ratio, rows/s) and with ``--out`` writes
``rss.md``, ``rss.json`` and ``rss.png`` there.

Usage:
    .venv/bin/python -m benchmarks.bench_npy_rss --out benchmarks/results/data_scale
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

MODES = ("iterate", "train", "train_losses_only", "train_mmap", "tsv")
# glibc's mmap threshold grows after large frees, so big per-step temporaries come from the heap,
# where the small tensors dmt.train.loop keeps (every step's logits until the phase ends) pin
# freed holes: RSS then grows with the steps of a phase. A fixed threshold returns them on free.
FIXED_MMAP_THRESHOLD = {"MALLOC_MMAP_THRESHOLD_": "65536"}
EVAL_ROWS = 50_000


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=4_000_000, help="rows of the large dataset (4M)")
    p.add_argument("--small-rows", type=int, default=500_000, help="rows of the small dataset (0.5M)")
    p.add_argument("--batch-size", type=int, default=8192)
    p.add_argument("--modes", default=",".join(MODES), help=f"which of {MODES} to measure")
    p.add_argument("--work", help="keep the generated data here (default: a temp dir)")
    p.add_argument("--out", help="directory for rss.md / rss.json / rss.png")
    p.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _child(mode: str, data: str, batch_size: int) -> dict:
    """One measurement in this (fresh) process: walk the data, report peak RSS.

    Imports come first; then the kernel's high-water mark is reset (``5 > /proc/self/clear_refs``)
    so ``work_peak_rss_mb`` is the peak while walking the data, next to the whole process's.
    """

    import dmt.data
    import dmt.train.loop  # imported before the mark is reset, as the train walk needs it

    torch.set_num_threads(1)
    start_mb = _status_mb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    t0 = time.perf_counter()
    if mode == "tsv":
        arrays, _ = dmt.data.read_criteo(data)
        batches = dmt.data.iter_batches(arrays, batch_size=batch_size, num_embeddings=[1000] * 26, shuffle=True)
        rows = sum(len(b.labels) for b in batches)
    elif mode == "iterate":
        rows_set = dmt.data.RowSet.from_data(dmt.data.open_preprocessed(data))
        shuffle = dmt.data.Shuffle()
        batches = dmt.data.iter_rank_batches(
            rows_set, batch_size=batch_size, num_embeddings=[1000] * 26, shuffle=shuffle
        )
        with dmt.data.Prefetcher(batches, depth=4) as it:
            rows = sum(len(b.labels) for b in it)
    else:  # train, train_losses_only, train_mmap (the parent set the environment)
        rows = _train(data, batch_size, losses_only=mode == "train_losses_only")
    return {
        "mode": mode,
        "data": data,
        "rows": rows,
        "seconds": time.perf_counter() - t0,
        "start_rss_mb": start_mb,
        "work_peak_rss_mb": _status_mb("VmHWM"),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _status_mb(field: str) -> float:
    """A memory figure of this process from /proc/self/status, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


class _LossOnlyOutputs(torch.nn.Module):
    """A DLRMTrain whose training steps return only the loss: dmt.train.loop then keeps nothing else."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch):
        loss, output = self.model(batch)
        # A copy made after the step: keeping the step's own loss tensor pins its heap neighbours.
        return (loss, (output[0].clone(),)) if self.training else (loss, output)


def _train(data: str, batch_size: int, losses_only: bool = False) -> int:
    """One epoch of the debug DLRM through dmt.train.loop.train on memory-mapped batches."""

    from dmt.data import Prefetcher, RowSet, Shuffle, iter_rank_batches, open_preprocessed
    from dmt.model.flat import ModelConfig
    from dmt.train.build import build_model
    from dmt.train.loop import LoopConfig, train
    from dmt.train.optim import OptimConfig

    cfg = ModelConfig.preset("debug")
    model, optimizer = build_model(cfg, OptimConfig(), seed=0, towers=None)  # as `dmt train` builds it
    if losses_only:
        model = _LossOnlyOutputs(model)
    rows = RowSet.from_data(open_preprocessed(data))
    train_rows, eval_rows = rows.slice(0, len(rows) - EVAL_ROWS), rows.slice(len(rows) - EVAL_ROWS, len(rows))
    batches = iter_rank_batches(train_rows, batch_size=batch_size, num_embeddings=cfg.num_embeddings, shuffle=Shuffle())

    def eval_batches():
        return iter(iter_rank_batches(eval_rows, batch_size=batch_size, num_embeddings=cfg.num_embeddings))

    with Prefetcher(batches, depth=4) as it:
        result = train(
            model, optimizer, it, eval_batches, LoopConfig(steps=len(batches), eval_every=100, progress=False)
        )
    return result.steps * batch_size


def _prepare(work: Path, rows: int, small_rows: int) -> dict[str, dict[str, str]]:
    """The two datasets (TSV and preprocessed), made once per work dir."""
    from dmt.data import PreprocessConfig, preprocess_criteo
    from dmt.data.synthetic import generate_criteo

    big = work / f"rows_{rows}.txt"
    small = work / f"rows_{small_rows}.txt"
    if not big.exists():
        generate_criteo(big, rows=rows, seed=0, progress=True)
    if not small.exists():
        with open(big, "rb") as f, open(small, "wb") as g:
            for _ in range(small_rows):
                g.write(f.readline())
    out = {}
    for n, tsv in ((small_rows, small), (rows, big)):
        npy = work / f"{tsv.stem}_npy"
        preprocess_criteo(PreprocessConfig(inputs=(tsv,), out=npy))
        out[f"{n:,}"] = {"tsv": str(tsv), "npy": str(npy)}
    return out


def _measure(mode: str, data: str, batch_size: int) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.bench_npy_rss", "--child", mode, "--data", data]
    cmd += ["--batch-size", str(batch_size)]
    env = {**os.environ, **(FIXED_MMAP_THRESHOLD if mode == "train_mmap" else {})}
    done = subprocess.run(
        cmd, check=True, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], env=env
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def format_table(results: list[dict], sizes: list[str]) -> str:
    """Peak RSS while walking the data (after imports) and of the whole process, per path and size."""
    work = " | ".join(f"walk peak {s} (MB)" for s in sizes)
    whole = " | ".join(f"process peak {s} (MB)" for s in sizes)
    rates = " | ".join(f"rows/s {s}" for s in sizes)
    lines = [
        f"| path | after imports (MB) | {work} | walk ratio | {whole} | process ratio | {rates} |",
        "| --- |" + " ---: |" * (3 * len(sizes) + 3),
    ]
    for mode in dict.fromkeys(r["mode"] for r in results):
        rs = [next(r for r in results if r["mode"] == mode and r["size"] == s) for s in sizes]
        cells = [f"{rs[0]['start_rss_mb']:,.0f}"]
        cells += [f"{r['work_peak_rss_mb']:,.0f}" for r in rs] + [
            f"{rs[-1]['work_peak_rss_mb'] / rs[0]['work_peak_rss_mb']:.2f}"
        ]
        cells += [f"{r['peak_rss_mb']:,.0f}" for r in rs] + [f"{rs[-1]['peak_rss_mb'] / rs[0]['peak_rss_mb']:.2f}"]
        cells += [f"{r['rows'] / r['seconds']:,.0f}" for r in rs]
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plot(results: list[dict], sizes: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(dict.fromkeys(r["mode"] for r in results))
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(sizes)
    for i, size in enumerate(sizes):
        values = [next(r["work_peak_rss_mb"] for r in results if r["mode"] == m and r["size"] == size) for m in modes]
        ax.bar([k + i * width for k in range(len(modes))], values, width, label=f"{size} rows")
    ax.set_xticks([k + width * (len(sizes) - 1) / 2 for k in range(len(modes))], modes)
    ax.set_ylabel("peak RSS while walking the data (MB)")
    ax.set_title("One process, one epoch: memory-mapped days vs the whole TSV in RAM")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child, args.data, args.batch_size)))
        return 0
    modes = args.modes.split(",")
    with tempfile.TemporaryDirectory(prefix="dmt-bench-rss-") as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        datasets = _prepare(work, args.rows, args.small_rows)
        results = []
        for mode in modes:
            for size, paths in datasets.items():
                r = _measure(mode, paths["tsv" if mode == "tsv" else "npy"], args.batch_size)
                results.append({**r, "size": size})
                print(f"{mode} {size}: {r['work_peak_rss_mb']:,.0f} MB in {r['seconds']:.1f}s", file=sys.stderr)
    sizes = list(datasets)
    table = format_table(results, sizes)
    machine = f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end"
    print(table)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        cmd = "python -m benchmarks.bench_npy_rss " + " ".join(sys.argv[1:] if argv is None else argv)
        Path(args.out, "rss.md").write_text(
            f"# Peak RSS of one process, one epoch\n\n`{cmd}` on {machine}; batch {args.batch_size}.\n\n{table}\n\n"
            "![peak RSS](rss.png)\n"
        )
        Path(args.out, "rss.json").write_text(json.dumps({"machine": machine, "results": results}, indent=2))
        _plot(results, sizes, Path(args.out, "rss.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
