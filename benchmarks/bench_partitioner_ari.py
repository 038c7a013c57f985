"""TP on planted-group data: adjusted Rand index over rows x towers x seeds of ``dmt gen-data``.

    python -m benchmarks.bench_partitioner_ari                          # the full grid (hours on 2 cores)
    python -m benchmarks.bench_partitioner_ari --rows 30000 100000 --towers 4 --seeds 0
    python -m benchmarks.bench_partitioner_ari --report-only            # table + PNG from the cells

For each seed, ``dmt gen-data`` rows (default preset: 26 features in 4 planted groups) are
generated once at the largest row count; a smaller count reads the first rows of the same file
(the generator makes them identical). For each (rows, seed) the probes are trained once and score
the pairs three ways from the same probes: ``attribution`` (TP's default), ``embedding`` (cosine
of the learned embeddings' covariances) and ``combined`` (their mean, each scaled to mean 1).
Each tower count is then partitioned at the default tolerance, as ``dmt partition`` does, and
also from the planted truth itself (``oracle``, "truth-fed" in the table: TP given the planted
groups as its affinity, the plan a perfect probe would lead to). Its ARI is below 1 where no
plan can reach 1: with 2 or 8 towers for 4 groups, or when the planted groups break the balance
limit (seed 1: 1.12x the mean, limit 1.11x), so compare TP's ARI with it, not with 1.

Resumable: one JSON per (rows, towers, seed) cell under ``OUT/cells/``, skipped when present;
learned representations are cached under ``--work``. Cells run smallest rows first. ``OUT``
gets ``ari.md`` (the table, with wall time per cell) and ``ari.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dmt import atomic_write_text
from dmt.data import SPARSE_NAMES
from partitioner import FeatureRepresentation, TowerPartitioner, measure_costs
from partitioner.metrics import ari_vs_groups, imbalance

SCORES = ("attribution", "embedding", "combined")


def _data(work: Path, seed: int, rows: int) -> tuple[Path, list[list[str]]]:
    """The seed's TSV of at least ``rows`` rows (generated once) and its planted groups."""
    from dmt.data.synthetic import generate_criteo

    path, truth_path = work / f"seed{seed}.tsv", work / f"seed{seed}.truth.json"
    if truth_path.exists():
        truth = json.loads(truth_path.read_text())
        if truth["rows"] >= rows:
            return path, truth["groups"]
    truth = generate_criteo(path, rows=rows, seed=seed, progress=True)
    atomic_write_text(truth_path, json.dumps(truth))
    return path, truth["groups"]


def _representations(work: Path, path: Path, rows: int, seed: int, probes: int) -> tuple[dict, dict]:
    """Learned representations per score (cached) and the probe's wall time; costs of these rows."""
    from dmt.data.criteo import read_criteo
    from partitioner.learned import LearnedEmbedder

    arrays, _ = read_criteo(path, max_rows=rows)
    costs = measure_costs(
        arrays.sparse, SPARSE_NAMES, embedding_dim=16, batch_size=512, num_embeddings=[50_000] * len(SPARSE_NAMES)
    )
    cache = {s: work / f"rep_r{rows}_s{seed}_{s}.npz" for s in ("attribution", "embedding")}
    timing = work / f"rep_r{rows}_s{seed}.json"
    if all(p.exists() for p in cache.values()) and timing.exists():
        reps = {s: FeatureRepresentation.load(p) for s, p in cache.items()}
        seconds = json.loads(timing.read_text())["probe_seconds"]
    else:
        start = time.perf_counter()
        reps = LearnedEmbedder(num_probes=probes, progress=False).embed_scores(arrays, scores=tuple(cache))
        seconds = time.perf_counter() - start
        for s, p in cache.items():
            reps[s].save(p)
        atomic_write_text(timing, json.dumps({"probe_seconds": seconds}))
    reps["combined"] = combine(reps["attribution"], reps["embedding"])
    return reps, {"costs": costs, "probe_seconds": seconds}


def combine(a: FeatureRepresentation, b: FeatureRepresentation) -> FeatureRepresentation:
    """The mean of two affinities (and of their resamples), each scaled to mean 1 first."""

    def unit(x: np.ndarray) -> np.ndarray:
        return x / max(float(x.mean()), 1e-300)

    samples = None
    if a.affinity_samples is not None and b.affinity_samples is not None:
        samples = np.stack([(unit(x) + unit(y)) / 2 for x, y in zip(a.affinity_samples, b.affinity_samples)])
    affinity = (unit(a.dense_affinity()) + unit(b.dense_affinity())) / 2
    return dataclasses.replace(a, affinity=affinity, vectors=None, source="learned:combined", affinity_samples=samples)


def _oracle(groups: list[list[str]]) -> FeatureRepresentation:
    group_of = {f: g for g, members in enumerate(groups) for f in members}
    g = np.array([group_of.get(n, -1) for n in SPARSE_NAMES])
    truth = ((g[:, None] == g[None, :]) & (g[:, None] >= 0)).astype(float)
    np.fill_diagonal(truth, 0.0)
    return FeatureRepresentation(names=tuple(SPARSE_NAMES), affinity=truth, source="oracle")


def _purity(names, labels: np.ndarray, groups: list[list[str]]) -> dict:
    """Towers inside one group, and groups inside one tower."""
    group_of = {f: g for g, members in enumerate(groups) for f in members}
    g = np.array([group_of[n] for n in names])
    k = int(labels.max()) + 1
    return {
        "pure_towers": int(sum(len(set(g[labels == t])) == 1 for t in range(k))),
        "whole_groups": int(sum(len(set(labels[g == q])) == 1 for q in range(len(groups)))),
    }


def run_cell(reps: dict, extra: dict, groups: list[list[str]], towers: int) -> dict:
    """Partition ``towers`` ways with every score and the oracle; figures of each."""
    costs = extra["costs"]
    cell: dict = {"probe_seconds": extra["probe_seconds"], "probe": _probe_info(reps["attribution"].info)}
    group_of = {f: g for g, members in enumerate(groups) for f in members}
    truth = np.array([group_of[n] for n in SPARSE_NAMES])
    cell["truth_imbalance"] = imbalance(np.bincount(truth, weights=costs.lookup_cost), len(groups))
    for name, rep in [*reps.items(), ("oracle", _oracle(groups))]:
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            tp = TowerPartitioner(towers, random_state=0).fit(rep, costs=costs)
        conf = tp.plan_.params["confidence"]
        cell[name] = {
            "ari": ari_vs_groups(tp.features_, tp.labels_, groups),
            "fit_seconds": time.perf_counter() - start,
            "imbalance": tp.imbalance_,
            "best_imbalance": tp.best_imbalance_,
            "min_stability": min(conf["stability"]) if "stability" in conf else None,
            "regret": conf.get("regret"),
            "trusted": conf["trusted"],
            "towers": [list(t.features) for t in tp.plan_.towers],
            **_purity(tp.features_, tp.labels_, groups),
        }
    # The 8-tower case is about equal costs: the same affinity, every feature costing 1.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        equal = TowerPartitioner(towers, random_state=0).fit(reps["attribution"])
    cell["equal_costs"] = {
        "ari": ari_vs_groups(equal.features_, equal.labels_, groups),
        **_purity(equal.features_, equal.labels_, groups),
    }
    cell["wall_seconds"] = cell["probe_seconds"] + cell["attribution"]["fit_seconds"]
    return cell


def _probe_info(info: dict) -> dict:
    keys = ("heldout_auc", "initial_heldout_auc", "best_step", "steps_run", "samples_seen", "stop_reason")
    return {k: info.get(k) for k in keys} | {"pair_score_cv": info.get("pair_score_cv")}


def run_grid(args: argparse.Namespace) -> None:
    cells_dir = Path(args.out) / "cells"
    cells_dir.mkdir(parents=True, exist_ok=True)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    todo = [(r, s) for r in sorted(args.rows) for s in args.seeds]
    bar = tqdm(total=len(todo) * len(args.towers), desc="ARI grid", unit="cell")
    for rows, seed in todo:
        missing = [k for k in args.towers if not (cells_dir / f"r{rows}_k{k}_s{seed}.json").exists()]
        bar.update(len(args.towers) - len(missing))
        if not missing:
            continue
        bar.set_postfix(rows=rows, seed=seed)
        path, groups = _data(work, seed, max(args.rows))
        reps, extra = _representations(work, path, rows, seed, args.probes)
        for k in missing:
            cell = {"rows": rows, "towers": k, "seed": seed} | run_cell(reps, extra, groups, k)
            atomic_write_text(cells_dir / f"r{rows}_k{k}_s{seed}.json", json.dumps(cell, indent=1))
            bar.update(1)
    bar.close()


def load_cells(out: str) -> list[dict]:
    cells = [json.loads(p.read_text()) for p in sorted((Path(out) / "cells").glob("*.json"))]
    return sorted(cells, key=lambda c: (c["rows"], c["towers"], c["seed"]))


def main(argv: list[str] | None = None) -> int:
    from benchmarks.partitioner_ari_report import write_report

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, nargs="+", default=[30_000, 100_000, 300_000, 1_000_000])
    p.add_argument("--towers", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--probes", type=int, default=3, help="probes per (rows, seed), as dmt partition's --probes")
    p.add_argument("--out", default="benchmarks/results/partitioner")
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "dmt-bench-partitioner"))
    p.add_argument("--report-only", action="store_true", help="only rebuild ari.md and ari.png from the cells")
    args = p.parse_args(argv)
    if not args.report_only:
        run_grid(args)
    cells = load_cells(args.out)
    if not cells:
        print(f"no cells under {args.out}/cells; run without --report-only first")
        return 2
    print(write_report(cells, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
