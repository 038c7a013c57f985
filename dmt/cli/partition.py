"""``dmt partition``: group the sparse features of a Criteo-format file into towers -> plan.json.

    dmt partition --data train.txt --num-towers 4 --hosts 2 --out plan.json --plot towers.png

Steps: read the data, measure per-feature costs, learn the feature representation from
``--probes`` briefly trained flat DLRMs (at most ``--steps`` each; cached with
``--representation``), fit the partitioner, print the per-tower table (with each tower's internal
affinity share and its stability over ``--resamples`` bootstrap resamples), warn when the towers
are too unstable to trust (the plan's ``params["confidence"]`` records it), write the plan
(atomically) and optionally the PNG and the adjusted Rand index against planted groups
(``--truth``, from ``dmt gen-data``). The balance limit is ``--balance-tolerance`` over the best
max tower cost achievable for these costs, so every tower count can be planned.

The partitioner package (scikit-learn, networkx) is imported inside ``run``: ``dmt`` itself never
imports it, so training hosts need neither library.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
import warnings

from dmt.errors import DmtError

METHOD_NAMES = ("tp", "random", "round_robin", "greedy")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "partition",
        help="group sparse features into towers (TP or a baseline) -> plan.json",
        description="Learn how the sparse features of a Criteo-format file interact (a briefly "
        "trained DLRM), measure what each costs, and group them into --num-towers towers spread "
        "over --hosts hosts, balanced in lookup cost. Writes a TowerPlan JSON for `dmt train`.",
    )
    p.add_argument("--data", required=True, help="Criteo TSV file (.gz ok)")
    p.add_argument("--num-towers", type=int, required=True, help="number of towers K")
    p.add_argument("--out", required=True, help="output plan JSON (written atomically)")
    p.add_argument("--hosts", type=int, default=1, help="hosts to spread the towers over (1)")
    p.add_argument("--method", choices=METHOD_NAMES, default="tp", help="tp (default) or a baseline")
    p.add_argument(
        "--balance-tolerance",
        type=float,
        default=0.1,
        help="max tower cost may exceed the best achievable max tower cost by this fraction (0.1); "
        "the best is the mean when the costs split evenly",
    )
    p.add_argument("--host-memory-gb", type=float, help="memory per host for tables + optimizer state (no limit)")
    p.add_argument("--seed", type=int, default=0, help="seed of the probe model and the partitioner (0)")
    p.add_argument("--plot", help="write a PNG: affinity ordered by tower, per-tower load")
    p.add_argument("--truth", help="truth JSON of `dmt gen-data`: print the adjusted Rand index vs its groups")
    probe = p.add_argument_group("feature representation (probe model)")
    probe.add_argument(
        "--steps", type=int, default=1000, help="training steps of the probe DLRM (1000); 0 skips it (baselines only)"
    )
    probe.add_argument(
        "--score",
        choices=["attribution", "dot", "embedding"],
        default="attribution",
        help="pair score: gradient x input of the interaction (default), mean |dot|, or the "
        "similarity of the learned embeddings (covariance cosine)",
    )
    probe.add_argument(
        "--probes", type=int, default=3, help="probe models trained with different seeds, affinities averaged (3)"
    )
    probe.add_argument(
        "--resamples",
        type=int,
        default=24,
        help="bootstrap resamples of the affinity used to measure tower stability (24); 0 skips it",
    )
    probe.add_argument("--representation", help="cache file (.npz): read if it exists, else written after learning")
    cost = p.add_argument_group("cost model")
    cost.add_argument("--embedding-dim", type=int, default=16, help="embedding dim of the model to train (16)")
    cost.add_argument("--num-embeddings", type=int, default=50_000, help="table size cap, rows (50000)")
    cost.add_argument("--batch-size", type=int, default=512, help="batch size of costs and probe (512)")
    cost.add_argument(
        "--sparse-optimizer",
        choices=["sgd", "adagrad", "rowwise_adagrad"],
        default="rowwise_adagrad",
        help="for the optimizer-state memory (rowwise_adagrad)",
    )
    p.add_argument("--max-rows", type=int, help="read at most this many rows")
    p.add_argument("--skip-bad-rows", action="store_true", help="skip and count malformed rows")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def _check_args(args: argparse.Namespace) -> None:
    problems = []
    if args.num_towers < 1:
        problems.append(f"--num-towers={args.num_towers} must be >= 1")
    if args.hosts < 1:
        problems.append(f"--hosts={args.hosts} must be >= 1")
    if args.balance_tolerance < 0:
        problems.append(f"--balance-tolerance={args.balance_tolerance} must be >= 0")
    if args.steps < 0 or (args.steps == 0 and args.method == "tp" and not _cached(args)):
        problems.append(f"--steps={args.steps}: tp needs >= 1 steps to learn how features interact")
    if args.probes < 1:
        problems.append(f"--probes={args.probes} must be >= 1")
    if args.resamples < 0:
        problems.append(f"--resamples={args.resamples} must be >= 0")
    for name in ("embedding_dim", "num_embeddings", "batch_size"):
        if getattr(args, name) < 1:
            problems.append(f"--{name.replace('_', '-')}={getattr(args, name)} must be >= 1")
    if args.max_rows is not None and args.max_rows < 1:
        problems.append(f"--max-rows={args.max_rows} must be >= 1")
    if args.host_memory_gb is not None and args.host_memory_gb <= 0:
        problems.append(f"--host-memory-gb={args.host_memory_gb} must be > 0")
    if os.path.isdir(args.out):
        problems.append(f"--out {args.out} is a directory; give a file path")
    if problems:
        raise DmtError("; ".join(problems))


def _cached(args: argparse.Namespace) -> bool:
    return bool(args.representation) and os.path.exists(args.representation)


def _read_truth(path: str) -> list[list[str]]:
    try:
        with open(path) as f:
            groups = json.load(f)["groups"]
    except OSError as e:
        raise DmtError(f"cannot read --truth {path}: {e.strerror}") from None
    except (ValueError, KeyError, TypeError):
        raise DmtError(f"--truth {path} is not a `dmt gen-data` truth file (JSON with 'groups')") from None
    if not isinstance(groups, list) or not all(isinstance(g, list) for g in groups):
        raise DmtError(f"--truth {path}: 'groups' must be a list of lists of feature names")
    return groups


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    groups = _read_truth(args.truth) if args.truth else None  # fail before the slow part

    # Heavy imports only now: `dmt --help` and the other commands stay fast and sklearn-free.
    from partitioner.metrics import ari_vs_groups
    from partitioner.report import plot_partition

    progress = not args.no_progress
    arrays, rows = _read(args, progress)
    costs = _measure(arrays, args)
    rep = _representation(arrays, rows, args, progress)
    estimator, fit_s = _fit(rep, costs, args)
    estimator.plan_.to_json(args.out)
    _print_summary(estimator, costs, args, fit_s, rows)
    if groups is not None:
        ari = ari_vs_groups(estimator.features_, estimator.labels_, groups)
        print(f"adjusted Rand index vs the {len(groups)} planted groups of {args.truth}: {ari:.3f}")
    if args.plot:
        plot_partition(estimator, rep, args.plot, title=f"{args.method} on {os.path.basename(args.data)}")
        print(f"wrote {args.plot}")
    print(f"wrote {args.out}")
    return 0


def _print_summary(estimator, costs, args: argparse.Namespace, fit_s: float, rows: int) -> None:
    """The per-tower table, the balance against what is achievable, and a warning if the plan is unstable."""
    from partitioner.report import format_tower_table, human_bytes

    print()
    print(format_tower_table(estimator))
    host_share = 100 * estimator.host_loads_ / max(float(estimator.host_loads_.sum()), 1e-300)
    print(
        f"\nmethod {args.method}: max/mean tower cost {estimator.imbalance_:.3f} (best achievable "
        f"{estimator.best_imbalance_:.3f}, limit {estimator.max_imbalance_:.3f}); host cost shares "
        f"{', '.join(f'{s:.1f} %' for s in host_share)}; tables {human_bytes(costs.memory_bytes.sum())}; "
        f"partitioned in {fit_s:.2f} s"
    )
    verdict = estimator.plan_.params.get("confidence", {}).get("warning")
    if verdict:
        print(
            f"warning: {verdict}; {rows:,} rows are likely too few to trust this plan: use more rows or more --probes"
        )


def _read(args: argparse.Namespace, progress: bool):
    """The rows of ``--data`` (at most ``--max-rows``) and how many were read."""
    from dmt.data.criteo import read_criteo

    arrays, read = read_criteo(args.data, skip_bad_rows=args.skip_bad_rows, max_rows=args.max_rows, progress=progress)
    print(
        f"read {read.rows:,} rows from {args.data}"
        + (f" ({read.bad_rows_skipped:,} bad rows skipped)" if read.bad_rows_skipped else "")
    )
    return arrays, read.rows


def _measure(arrays, args: argparse.Namespace):
    """Per-feature lookup cost and table memory (``partitioner.FeatureCosts``) of the model ``dmt train`` builds."""
    from dmt.data.criteo import SPARSE_NAMES
    from partitioner import measure_costs

    names = tuple(SPARSE_NAMES)
    return measure_costs(
        arrays.sparse,
        names,
        embedding_dim=args.embedding_dim,
        batch_size=args.batch_size,
        num_embeddings=[args.num_embeddings] * len(names),
        optimizer=args.sparse_optimizer,
    )


def _representation(arrays, rows: int, args: argparse.Namespace, progress: bool):
    """How the features interact: the ``--representation`` cache, a probe model's, or none (baselines)."""
    import numpy as np

    from dmt.data.criteo import SPARSE_NAMES
    from partitioner import FeatureRepresentation

    names = tuple(SPARSE_NAMES)
    source = {"data": os.path.abspath(args.data), "rows": rows}
    if _cached(args):
        return _load_representation(args, names, source)
    if args.steps > 0:
        return _learn_representation(arrays, args, progress, source)
    # Baselines without a probe: no affinity is known, every pair counts the same.
    return FeatureRepresentation(names=names, affinity=np.ones((len(names), len(names))), source="none")


def _load_representation(args: argparse.Namespace, names: tuple[str, ...], source: dict):
    """The cached representation, refused if it was learned from other data or with another ``--score``."""
    from partitioner import FeatureRepresentation

    rep = FeatureRepresentation.load(args.representation)
    if rep.names != names or rep.info.get("source_data", source) != source:
        raise DmtError(
            f"--representation {args.representation} was learned from "
            f"{rep.info.get('source_data')}, not {source}; delete it to re-learn"
        )
    if rep.source != f"learned:{args.score}":
        raise DmtError(
            f"--representation {args.representation} holds {rep.source} scores, not "
            f"--score {args.score}; use another cache file"
        )
    print(f"representation: {rep.source} from {args.representation}")
    return rep


def _learn_representation(arrays, args: argparse.Namespace, progress: bool, source: dict):
    """Train the probe model, report how well it learned, and write ``--representation`` if given."""
    t0 = time.perf_counter()
    rep = _learn(arrays, args, progress)
    rep = dataclasses.replace(rep, info={**rep.info, "source_data": source})
    info = rep.info
    cv = f", pair-score variation {100 * info['pair_score_cv']:.0f} %" if "pair_score_cv" in info else ""
    print(
        f"representation: {rep.source} from {info['num_probes']} probe(s); held-out AUC "
        f"{info['initial_heldout_auc']:.4f} -> {info['heldout_auc']:.4f} (median best step "
        f"{info['best_step']} of {info['steps_run']} run, {info['samples_seen']:,} samples seen, stopped: "
        f"{info['stop_reason']}){cv}; {time.perf_counter() - t0:.1f} s"
    )
    if args.representation:
        rep.save(args.representation)
    return rep


def _fit(rep, costs, args: argparse.Namespace):
    """Fit the ``--method`` partitioner; returns it and the seconds the fit took. Prints its warnings."""
    from partitioner import METHODS

    estimator = METHODS[args.method](args.num_towers, balance_tolerance=args.balance_tolerance, random_state=args.seed)
    memory = None if args.host_memory_gb is None else args.host_memory_gb * 2**30
    t1 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        estimator.fit(rep, costs=costs, num_hosts=args.hosts, host_memory_bytes=memory)
    fit_s = time.perf_counter() - t1
    for w in caught:  # baselines report a broken balance instead of refusing: say it plainly
        print(f"warning: {w.message}")
    return estimator, fit_s


def _learn(arrays, args: argparse.Namespace, progress: bool):
    from partitioner.learned import LearnedEmbedder, ProbeConfig  # imports torch

    cfg = ProbeConfig(steps=args.steps, batch_size=args.batch_size, seed=args.seed)
    embedder = LearnedEmbedder(
        cfg, score=args.score, num_probes=args.probes, num_resamples=args.resamples, progress=progress
    )
    return embedder.embed(arrays)
