"""Choosing with the cost model: flat baselines vs DMT configurations on a cluster, and flat-or-DMT.

:func:`sweep` predicts every flat baseline a user would pick (:data:`dmt.perf.cost_model.FLAT_BASELINES`:
table-wise, table-row-wise, row-wise, 2D; torchrec's planner picked one of these for every table in
our runs) and every DMT configuration (towers H and 2H x intra-host sharding x compression c) under
every codec, and rates each against the *best flat baseline at the same codec* (fp32 against fp32,
fp16 against fp16). :func:`choose_layout` is what ``dmt plan-cluster`` recommends and what
``dmt train --plan auto`` asks before training: DMT only where the model predicts it clearly faster
than the best flat baseline, flat otherwise, with the reason in words.

Example:
    >>> from dmt.perf.cost_model import ModelShape, load_cluster
    >>> model = ModelShape(num_embeddings=200_000, embedding_dim=128)
    >>> choose_layout(model, load_cluster("h200x4-2x2-hierarchical"), 8192).kind
    'dmt'
    >>> choose_layout(model, load_cluster("h200x4-2x2-nvlink"), 8192).kind
    'flat'
"""

from __future__ import annotations

import dataclasses
import itertools

from dmt.choices import TowerSharding
from dmt.errors import DmtError
from dmt.perf.cost_model import CODECS, FLAT_BASELINES, Cluster, ModelShape, Setup, load_cluster, predict_step

COMPRESSIONS = (1.0, 2.0, 4.0, 8.0)
INTRA = (TowerSharding.TABLE_ROW_WISE.value, TowerSharding.TABLE_COLUMN_WISE.value, TowerSharding.TABLE_WISE.value)
# Column shards average row-wise Adagrad's per-row state over their own columns only: under that
# optimizer (the default) a DMT model sharded so no longer trains like the flat one.
EXACT_UNDER_ROWWISE = (TowerSharding.TABLE_ROW_WISE.value, TowerSharding.TABLE_WISE.value)
# The cost model knows time, not quality: on 1M planted-group rows (benchmarks/sweep_tower_modules.py)
# towers compressed 8x lost 0.11-0.26 AUC against flat (0.839); at c <= 4 TP towers stayed within
# 0.08 of it, most within the flat model's own seed spread (0.786-0.839).
MAX_RECOMMENDED_COMPRESSION = 4.0
# DMT is chosen only when predicted at least this much faster than the best flat baseline: the
# calibrated model is within 15% on most measured configurations, so a smaller predicted gain may
# be none (and DMT changes the model, flat does not).
DMT_MARGIN = 1.15


@dataclasses.dataclass(frozen=True)
class Row:
    """One predicted configuration; ``speedup`` = best flat baseline at its codec / this step."""

    setup: Setup
    step_ms: float
    cross_bytes: float
    speedup: float


def _setups(model: ModelShape, topo: Cluster, intra: tuple[str, ...]) -> list[Setup]:
    towers = sorted({t for t in (topo.hosts, 2 * topo.hosts) if t <= model.num_tables})
    if not towers:
        raise DmtError(
            f"{topo.hosts} hosts need at least one tower each but the model has "
            f"{model.num_tables} tables; raise --num-tables or lower --hosts"
        )
    flat = [Setup(flat_sharding=f, codec=codec) for f in FLAT_BASELINES for codec in CODECS.values()]
    dmt = [
        Setup(num_towers=t, compression=c, codec=codec, intra_sharding=sh)
        for t in towers
        for sh in intra
        for c in COMPRESSIONS
        for codec in CODECS.values()
    ]
    return flat + dmt


def sweep(model: ModelShape, topo: Cluster, batch_size: int, intra: tuple[str, ...] = INTRA) -> list[Row]:
    """Every flat baseline x codec, then DMT (T in H, 2H) x intra sharding (of ``intra``) x c x codec."""
    preds = [predict_step(model, s, topo, batch_size) for s in _setups(model, topo, intra)]
    best = {}
    for p in preds:
        if not p.setup.is_dmt:
            best[p.setup.codec.name] = min(best.get(p.setup.codec.name, p.step_ms), p.step_ms)
    return [Row(p.setup, p.step_ms, p.cross_host_bytes_per_sample, best[p.setup.codec.name] / p.step_ms) for p in preds]


def best_flat(rows: list[Row], codec: str = "fp32") -> Row:
    """The fastest flat baseline at ``codec``."""
    return min((r for r in rows if not r.setup.is_dmt and r.setup.codec.name == codec), key=lambda r: r.step_ms)


def recommend(rows: list[Row], max_compression: float = MAX_RECOMMENDED_COMPRESSION) -> Row:
    """The fastest with c <= ``max_compression``; among those within 2% of it, the least
    compressed (fewer model changes), uncompressed exchange first."""
    allowed = [r for r in rows if r.setup.compression <= max_compression] or rows
    best = min(r.step_ms for r in allowed)
    close = [r for r in allowed if r.step_ms <= 1.02 * best]
    return min(close, key=lambda r: (r.setup.compression, r.setup.codec.forward != 1.0, r.step_ms))


@dataclasses.dataclass(frozen=True)
class LayoutChoice:
    """Flat or DMT for one job, as the cost model sees it.

    Args:
        kind: "flat" or "dmt".
        flat: the best flat baseline (at the job's codec).
        dmt: the best DMT configuration (c <= 4, at the job's codec).
        speedup: predicted flat step / DMT step.
        reason: one sentence for the user.
    """

    kind: str
    flat: Row
    dmt: Row
    speedup: float
    reason: str


def choose_layout(
    model: ModelShape,
    topo: Cluster,
    batch_size: int,
    *,
    codec: str = "fp32",
    rowwise_optimizer: bool = True,
    margin: float = DMT_MARGIN,
) -> LayoutChoice:
    """Flat or DMT on ``topo``: DMT when its best configuration is predicted ``margin`` x faster
    than the best flat baseline at the same codec, else flat (with why).

    ``rowwise_optimizer`` (row-wise Adagrad tables, the default): only the tower shardings that keep
    its maths (:data:`EXACT_UNDER_ROWWISE`) are candidates.

    Raises:
        DmtError: an unknown codec, or a cluster DMT cannot run on (one host, more hosts than tables).
    """
    if codec not in CODECS:
        raise DmtError(f"codec {codec!r} is not one of {sorted(CODECS)}")
    if topo.hosts < 2:
        raise DmtError(f"DMT needs at least 2 hosts; the cluster {topo.name} has {topo.hosts}: train flat")
    intra = EXACT_UNDER_ROWWISE if rowwise_optimizer else INTRA
    rows = [r for r in sweep(model, topo, batch_size, intra) if r.setup.codec.name == codec]
    flat = best_flat(rows, codec)
    dmt = recommend([r for r in rows if r.setup.is_dmt])
    speedup = flat.step_ms / dmt.step_ms
    where = f"{topo.name} ({topo.hosts} hosts x {topo.gpus_per_host} GPUs), batch {batch_size}/GPU, {codec}"
    if speedup >= margin:
        reason = (
            f"DMT: {dmt.setup.label()} is predicted {speedup:.2f}x faster than the best flat baseline "
            f"({flat.setup.label()}, {flat.step_ms:.1f} ms vs {dmt.step_ms:.1f} ms/step) on {where}"
        )
        return LayoutChoice("dmt", flat, dmt, speedup, reason)
    reason = (
        f"flat: the best DMT configuration ({dmt.setup.label()}, {dmt.step_ms:.1f} ms/step) is predicted "
        f"{speedup:.2f}x the speed of the best flat baseline ({flat.setup.label()}, {flat.step_ms:.1f} ms) on "
        f"{where}; DMT needs >= {margin:.2f}x to be worth its model change (the cost model's error is ~15%)"
    )
    return LayoutChoice("flat", flat, dmt, speedup, reason)


def projection(
    model: ModelShape,
    topo: Cluster,
    batch_size: int,
    gpu_counts: tuple[int, ...],
    *,
    codec: str = "fp32",
    rowwise_optimizer: bool = True,
) -> list[tuple[int, float | None, str]]:
    """Per GPU count (hosts = GPUs / GPUs per host): the best DMT configuration's speed-up over the
    best flat baseline at ``codec`` (:func:`choose_layout`'s candidates), and what each is; None
    where DMT cannot run."""
    out = []
    for gpus in gpu_counts:
        hosts = max(1, gpus // topo.gpus_per_host)
        if hosts < 2 or hosts > model.num_tables:
            out.append((gpus, None, "needs 2 <= hosts <= tables"))
            continue
        choice = choose_layout(
            model, topo.with_hosts(hosts), batch_size, codec=codec, rowwise_optimizer=rowwise_optimizer
        )
        out.append((gpus, choice.speedup, f"{choice.dmt.setup.label()} vs {choice.flat.setup.label()}"))
    return out


def cluster_for_job(*, hosts: int, ranks_per_host: int, link: str, cuda: bool) -> Cluster:
    """The calibrated preset closest to an emulated job on this project's machines (``dmt train
    --plan auto`` without ``--cluster``): the 4x H200 box's ``h200x4-2x<L>-<link>`` on GPUs (L of 1
    or 2; "default" = NVLink), the CPU box's loopback preset on CPU, with the job's hosts.

    Raises:
        DmtError: no preset was calibrated for such a job; name a cluster JSON instead.
    """
    if not cuda:
        topo = load_cluster("cpu-2x2-loopback")
        return dataclasses.replace(topo, hosts=hosts, gpus_per_host=ranks_per_host)
    kind = {"default": "nvlink", "nvlink": "nvlink", "sockets": "sockets", "hierarchical": "hierarchical"}.get(link)
    if kind is None or ranks_per_host not in (1, 2):
        raise DmtError(
            f"no calibrated cluster for {hosts} hosts x {ranks_per_host} GPUs over link {link!r}; describe yours "
            "in a cluster JSON (dmt/perf/clusters/*.json has the form) and pass it as --cluster"
        )
    if kind == "hierarchical" and ranks_per_host == 1:
        kind = "sockets"  # one GPU per host: everything between ranks crosses hosts
    return load_cluster(f"h200x4-2x{ranks_per_host}-{kind}").with_hosts(hosts)


def auto_plan(choice: LayoutChoice, features: tuple[str, ...], hosts: int):
    """The TowerPlan of ``choice``'s DMT configuration (contiguous towers, tower i on host i % H);
    None when the choice is flat. ``dmt partition`` makes learned towers; this is the fast default."""
    from dmt.plan import TowerPlan, contiguous_sizes

    if choice.kind == "flat":
        return None
    sizes = contiguous_sizes(len(features), choice.dmt.setup.num_towers)
    bounds = itertools.accumulate(sizes, initial=0)
    groups = [features[a:b] for a, b in itertools.pairwise(bounds)]
    return TowerPlan.from_groups(groups, num_hosts=hosts, method="contiguous", params={"chosen_by": "cost model"})
