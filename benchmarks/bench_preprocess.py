"""Benchmark: ``dmt preprocess`` with 1 and 2 workers vs torchrec's ``BinaryCriteoUtils.tsv_to_npys``.

Generates ``--rows`` rows (exact Criteo Kaggle format) into a temp dir, converts the same file with
each tool in one run, checks DMT's arrays are identical to ``dmt.data.read_criteo``'s (and to the
real Criteo sample's, read from ../shared when it is there; those rows are never copied here), and
prints a markdown table. torchrec's converter goes row by row in Python and holds the day in lists,
so ``--torchrec-rows`` can time it on a prefix (its rows/s do not depend on the row count).

Usage:
    .venv/bin/python -m benchmarks.bench_preprocess --rows 2000000 --out benchmarks/results/data_scale
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torchrec.datasets.criteo import BinaryCriteoUtils

from dmt.data import PreprocessConfig, open_preprocessed, preprocess_criteo, read_criteo
from dmt.data.synthetic import generate_criteo

REPO = Path(__file__).resolve().parents[1]
CRITEO_SAMPLE = Path(
    os.environ.get("DMT_CRITEO_SAMPLE", REPO.parent / "shared/data/criteo/criteo_kaggle_sample_10000.txt")
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=2_000_000, help="rows to generate and convert (2M)")
    p.add_argument("--torchrec-rows", type=int, default=None, help="time torchrec on the first N rows (all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="directory for preprocess.md / preprocess.json")
    return p.parse_args(argv)


def _timed(fn) -> tuple[float, float]:
    """(wall, CPU of this process and its finished children) seconds of ``fn()``."""

    def cpu() -> float:
        own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    t0, c0 = time.perf_counter(), cpu()
    fn()
    return time.perf_counter() - t0, cpu() - c0


def _same_as_reader(tsv: Path, out: Path) -> bool:
    ref, _ = read_criteo(tsv)
    day = open_preprocessed(out).days[0]
    return (
        np.array_equal(day.dense, ref.dense)
        and np.array_equal(day.sparse, ref.sparse)
        and np.array_equal(day.labels[:, 0], ref.labels.astype(np.int32))
    )


def _run_dmt(tsv: Path, tmp: Path, rows: int) -> list[dict]:
    results = []
    for workers in (1, 2):
        out = tmp / f"dmt_{workers}"
        wall, cpu = _timed(
            lambda o=out, w=workers: preprocess_criteo(PreprocessConfig(inputs=(tsv,), out=o, workers=w))
        )
        results.append(dict(tool=f"dmt preprocess --workers {workers}", rows=rows, seconds=wall, cpu_seconds=cpu))
        results[-1]["identical_to_read_criteo"] = _same_as_reader(tsv, out)
    return results


def _run_torchrec(tsv: Path, tmp: Path, rows: int) -> dict:
    src = tsv
    if rows < _count_lines(tsv):
        src = tmp / "prefix.txt"
        with open(tsv, "rb") as f, open(src, "wb") as g:
            for _ in range(rows):
                g.write(f.readline())
    outs = [str(tmp / f"torchrec_{p}.npy") for p in ("dense", "sparse", "labels")]
    wall, cpu = _timed(lambda: BinaryCriteoUtils.tsv_to_npys(str(src), *outs, dataset_name="criteo_kaggle"))
    return dict(tool="torchrec BinaryCriteoUtils.tsv_to_npys", rows=rows, seconds=wall, cpu_seconds=cpu)


def _count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 24), b""))


def _real_sample(tmp: Path) -> dict | None:
    if not CRITEO_SAMPLE.is_file():
        return None
    out = tmp / "real"
    report = preprocess_criteo(PreprocessConfig(inputs=(CRITEO_SAMPLE,), out=out, workers=2))
    return {
        "file": CRITEO_SAMPLE.name,
        "rows": report.rows,
        "identical_to_read_criteo": _same_as_reader(CRITEO_SAMPLE, out),
    }


def format_table(results: list[dict], size: int) -> str:
    """rows/s by the wall clock and per CPU second: on a shared machine the wall clock also counts waiting."""
    base = results[0]["rows"] / results[0]["seconds"]
    lines = [
        f"| converter ({size / 1e6:,.0f} MB of TSV) | rows | seconds | CPU seconds | rows/s | rows per CPU second "
        "| rows/s vs 1 worker | identical to read_criteo |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        rate = r["rows"] / r["seconds"]
        same = {True: "yes", False: "NO"}.get(r.get("identical_to_read_criteo"), "-")
        lines.append(
            f"| {r['tool']} | {r['rows']:,} | {r['seconds']:.2f} | {r['cpu_seconds']:.2f} | {rate:,.0f} | "
            f"{r['rows'] / r['cpu_seconds']:,.0f} | {rate / base:.2f}x | {same} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dmt-bench-pre-") as tmp_name:
        tmp = Path(tmp_name)
        tsv = tmp / "train.txt"  # no "test" in the name: torchrec would drop the labels
        generate_criteo(tsv, rows=args.rows, seed=args.seed)
        size = tsv.stat().st_size
        print(f"generated {args.rows:,} rows ({size / 1e6:.0f} MB)", file=sys.stderr)
        results = _run_dmt(tsv, tmp, args.rows)
        results.append(_run_torchrec(tsv, tmp, min(args.torchrec_rows or args.rows, args.rows)))
        real = _real_sample(tmp)
    table = format_table(results, size)
    load = os.getloadavg()[0]
    machine = f"{os.cpu_count()} CPUs, load average {load:.1f} while running"
    real_line = (
        f"Real Criteo sample ({real['file']}, {real['rows']:,} rows): arrays identical to read_criteo: "
        f"{'yes' if real['identical_to_read_criteo'] else 'NO'}"
        if real
        else "Real Criteo sample: not found (set DMT_CRITEO_SAMPLE)"
    )
    print(table)
    print(real_line)
    print(machine, file=sys.stderr)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        cmd = "python -m benchmarks.bench_preprocess " + " ".join(sys.argv[1:] if argv is None else argv)
        Path(args.out, "preprocess.md").write_text(
            f"# Preprocessing throughput\n\n`{cmd}` on {machine}.\n\n{table}\n\n{real_line}\n"
        )
        Path(args.out, "preprocess.json").write_text(
            json.dumps({"machine": machine, "tsv_bytes": size, "results": results, "real_sample": real}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
