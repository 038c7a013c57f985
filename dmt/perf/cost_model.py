"""Cost model: predicted step time of flat and DMT training on a cluster.

A step on one rank is modelled as::

    step = overhead + compute + codec + comm - overlap * min(step overhead + compute, comm) (+ pipeline)
    compute = embedding bytes / memory bandwidth + dense FLOPs / effective FLOP rate
    comm    = sum over collectives of  calls * alpha + max(cross bytes / inter bw, intra bytes / intra bw)

The overlap credit covers the step overhead too: that fixed cost is the host's (Python, kernel
launches, the dense optimizer) and runs while the GPU waits on collectives already queued, so a
long exchange over a slow link hides part of it (the 2x2 hierarchical runs: flat table-wise at 2048
per GPU, 12 ms of sockets, ran 2-3 ms under overhead + exchange). Pipelined steps have their own
constant for the same credit.

Bytes per collective come from :mod:`dmt.perf.comm_model` (the same numbers ``dmt bench`` counts and
checks), so the model never disagrees with the byte counters; only the conversion of bytes and
FLOPs into time has free constants. Those belong to the cluster (:mod:`dmt.perf.cluster`: a
:class:`Machine` class and two :class:`Link` classes in a :class:`Cluster`, presets in
``dmt/perf/clusters/*.json``); ``dmt.perf.calibration`` fits them from measured ``dmt bench`` JSONs.

Assumptions (also in ``dmt plan-cluster``'s report): lookups and tower modules are balanced over
ranks (towers spread evenly; a flat table-wise model with fewer tables than ranks is *not*
penalised for its idle ranks, which favours flat); each rank's cross-host bytes leave through its
own share of the host's inter-host bandwidth, full duplex, over a non-blocking fabric; all-reduce
cross-host bytes are the direct-exchange count of :mod:`dmt.perf.comm_sizers` (an upper bound for NCCL's
hierarchical rings); dense FLOPs are 3x the forward (forward + 2x backward).

Notation: B batch per rank, F tables (one feature each), D embedding dim, p ids per (sample,
feature), H hosts, L GPUs (ranks) per host, W = H*L, T towers, k_t vectors a tower emits.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from dmt.choices import TowerSharding
from dmt.errors import DmtError
from dmt.perf.cluster import (
    CLUSTER_DIR,
    Cluster,
    ClusterFileError,
    Link,
    Machine,
    cluster_from_dict,
    cluster_to_dict,
    load_cluster,
    preset_names,
)
from dmt.plan import contiguous_sizes
from towers.config import num_tower_outputs

__all__ = [
    "CLUSTER_DIR",
    "CODECS",
    "DDP_BUCKET_BYTES",
    "ELEMENT_BYTES",
    "FLAT_BASELINES",
    "KJT_INT_CALLS",
    "MODELLED_TOWER_KINDS",
    "Cluster",
    "ClusterFileError",
    "Codec",
    "CollectiveTime",
    "Dense",
    "Link",
    "Machine",
    "ModelShape",
    "Setup",
    "StepPrediction",
    "cluster_from_dict",
    "cluster_to_dict",
    "collective_times",
    "comm_summary",
    "dense_sizes",
    "load_cluster",
    "lossy_bytes_factor",
    "predict_step",
    "preset_names",
]

MODELLED_TOWER_KINDS = ("linear", "identity")  # tower modules whose FLOPs and outputs are modelled
DDP_BUCKET_BYTES = 25 * 2**20  # torch DDP's default bucket_cap_mb: one all-reduce per bucket
KJT_INT_CALLS = 3  # a KJT all-to-all: split sizes, lengths, values (three collectives)
ELEMENT_BYTES = 4  # fp32 tables, activations and gradients


# ------------------------------------------------------------------------------------- inputs
@dataclass(frozen=True, kw_only=True)
class ModelShape:
    """The sizes of a DLRM that set its step time (``dmt bench``'s Criteo-shaped model by default).

    Args:
        num_tables: F sparse features, one table each.
        num_embeddings: rows per table (lookup time does not depend on it; 2D's replica sync does).
        embedding_dim: D.
        pooling: p ids per (sample, feature).
        num_dense: dense input features.
        dense_arch: bottom MLP widths; None: ``dmt bench``'s (512, 256, D).
        over_arch: top MLP widths, ending in 1.
    """

    num_tables: int = 26
    num_embeddings: int = 100_000
    embedding_dim: int = 64
    pooling: float = 1.0
    num_dense: int = 13
    dense_arch: tuple[int, ...] | None = None
    over_arch: tuple[int, ...] = (512, 256, 1)

    def __post_init__(self) -> None:
        for name in ("num_tables", "num_embeddings", "embedding_dim", "num_dense"):
            if getattr(self, name) < 1:
                raise DmtError(f"{name}={getattr(self, name)} must be >= 1")
        if self.pooling <= 0:
            raise DmtError(f"pooling={self.pooling} must be > 0")
        if self.dense_arch is None:
            object.__setattr__(self, "dense_arch", (512, 256, self.embedding_dim))


@dataclass(frozen=True, kw_only=True)
class Codec:
    """Bytes factor of the compressed embedding exchange, forward and backward (fp32 = 1)."""

    name: str
    forward: float
    backward: float

    @property
    def compressed(self) -> bool:
        return self.forward != 1.0 or self.backward != 1.0


def lossy_bytes_factor(width: int, block: int = 32) -> float:
    """``dmt.distributed.qcomm``'s lossy block: 9 header bytes + ``block*width/8`` codes, per ``block`` fp32 values.

    Example:
        >>> lossy_bytes_factor(8)  # 41 bytes per 128
        0.3203125
    """
    return (9 + block * width / 8) / (block * ELEMENT_BYTES)


# lossy8: the error-bounded codec at 8 bits forward (eb ~ 0.01) with fp16 gradients, as measured.
CODECS = {
    "fp32": Codec(name="fp32", forward=1.0, backward=1.0),
    "fp16": Codec(name="fp16", forward=0.5, backward=0.5),
    "lossy8": Codec(name="lossy8", forward=lossy_bytes_factor(8), backward=0.5),
}


@dataclass(frozen=True, kw_only=True)
class Setup:
    """What runs: flat (``num_towers=0``) or DMT with T towers of ``compression`` c, and its codec.

    Args:
        num_towers: 0 for flat; else T towers of contiguous features, tower i on host i % H.
        compression: c of every tower module (``towers.config.num_tower_outputs``).
        tower_module: "linear" (a Linear F_t*D -> k_t*D) or "identity" (c must be 1).
        codec: the embedding exchange's codec (cross-host for DMT, the world all-to-all for flat).
        tower_features: F_t per tower; None: contiguous split of the tables, sizes within one.
        pipeline: torchrec's TrainPipelineSparseDist (input all-to-alls off the critical path).
        intra_sharding: the tower tables inside a host: "table_row_wise" (TWRW: a
            reduce-scatter of partial sums, L-1 pooled vectors per sample), "table_column_wise" (TWCW:
            an all-to-all of D/L columns) or "table_wise" (TW: whole tables, (L-1)/L of a vector).
        flat_sharding: the flat model's layout (``num_towers=0``): "table_wise", "table_row_wise",
            "row_wise" or "2d" (torchrec's DMPCollection). torchrec's planner is not modelled as such:
            its plans here were one of these types for every table (``dmt bench`` records them),
            and :data:`FLAT_BASELINES` 's fastest stands in for it.
        sync_every: "2d" only: steps between two replica syncs.
    """

    num_towers: int = 0
    compression: float = 1.0
    tower_module: str = "linear"
    codec: Codec = CODECS["fp32"]
    tower_features: tuple[int, ...] | None = None
    pipeline: bool = False
    intra_sharding: str = TowerSharding.TABLE_ROW_WISE.value
    flat_sharding: str = "table_wise"
    sync_every: int = 1

    def __post_init__(self) -> None:
        if self.flat_sharding not in FLAT_BASELINES:
            raise DmtError(f"flat_sharding={self.flat_sharding!r}: the cost model knows {list(FLAT_BASELINES)}")
        if self.intra_sharding not in _INTRA_LABELS:
            raise DmtError(f"intra_sharding={self.intra_sharding!r}: the cost model knows {list(_INTRA_LABELS)}")
        if self.sync_every < 1:
            raise DmtError(f"sync_every={self.sync_every} must be >= 1")

    @property
    def is_dmt(self) -> bool:
        return self.num_towers > 0

    def label(self) -> str:
        """E.g. "flat fp32" (table-wise), "flat rw fp16", "dmt T=2 c=4 fp32" (row-wise inside a host),
        "dmt T=2 c=4 tw fp16" (whole tables inside a host)."""
        if self.is_dmt:
            base = f"dmt T={self.num_towers} c={self.compression:g}{_INTRA_LABELS[self.intra_sharding]}"
        else:
            base = "flat" + _FLAT_LABELS[self.flat_sharding]
        return f"{base} {self.codec.name}" + (" pipelined" if self.pipeline else "")


# Flat layouts the cost model predicts, and their labels (table-wise unlabelled: the old default).
FLAT_BASELINES = ("table_wise", "table_row_wise", "row_wise", "2d")
_FLAT_LABELS = {"table_wise": "", "table_row_wise": " twrw", "row_wise": " rw", "2d": " 2d"}
_INTRA_LABELS = {
    TowerSharding.TABLE_ROW_WISE.value: "",
    TowerSharding.TABLE_COLUMN_WISE.value: " cw",
    TowerSharding.TABLE_WISE.value: " tw",
}


# ------------------------------------------------------------------------------------ the model
def _mlp_params(widths: Sequence[int]) -> int:
    return sum(a * b + b for a, b in itertools.pairwise(widths))


@dataclass(frozen=True)
class Dense:
    """Parameter and FLOP counts of one variant (per sample, forward)."""

    dense_params: int  # replicated over the world (world DDP)
    tower_params: int  # all towers' modules together (each host all-reduces its own)
    tower_features: tuple[int, ...] = ()
    tower_outputs: tuple[int, ...] = ()  # floats per sample per tower
    interaction_flops: float = 0.0

    @property
    def flops_per_sample(self) -> float:
        """Forward: 2 per weight of every MLP and tower, plus the interaction's dots."""
        return 2.0 * (self.dense_params + self.tower_params) + self.interaction_flops


def dense_sizes(model: ModelShape, setup: Setup) -> Dense:
    """Parameters and forward FLOPs of the flat DLRM or its DMT transform (dot interactions).

    Flat: the over arch reads D + n(n-1)/2 for n = F+1 vectors. DMT: K = sum k_t tower vectors and
    the dense one, D + K + K(K-1)/2 (``towers`` GlobalDotInteraction without self-dots).

    Example:
        >>> m = ModelShape(embedding_dim=128)   # dmt bench's GPU shape: its JSON says 548737 / 379777
        >>> dense_sizes(m, Setup()).dense_params, dense_sizes(m, Setup(num_towers=2, compression=4)).dense_params
        (548737, 379777)
    """
    D, F = model.embedding_dim, model.num_tables
    bottom = _mlp_params((model.num_dense, *model.dense_arch))
    if not setup.is_dmt:
        n = F + 1
        over = _mlp_params((D + n * (n - 1) // 2, *model.over_arch))
        return Dense(bottom + over, 0, interaction_flops=2.0 * n * n * D)
    if setup.tower_module not in MODELLED_TOWER_KINDS:
        raise DmtError(f"tower_module={setup.tower_module!r}: the cost model knows {list(MODELLED_TOWER_KINDS)}")
    if setup.tower_module == "identity" and setup.compression != 1:
        raise DmtError(f"an identity tower cannot compress (compression={setup.compression})")
    if setup.compression < 1:
        raise DmtError(f"compression={setup.compression} must be >= 1")
    feats = setup.tower_features or contiguous_sizes(F, setup.num_towers)
    if sum(feats) != F:
        raise DmtError(f"towers hold {sum(feats)} features but the model has {F} tables")
    ks = [f if setup.tower_module == "identity" else num_tower_outputs(f, setup.compression) for f in feats]
    tower_params = 0 if setup.tower_module == "identity" else sum(f * D * k * D + k * D for f, k in zip(feats, ks))
    K = sum(ks)
    over = _mlp_params((D + K + K * (K - 1) // 2, *model.over_arch))
    return Dense(
        bottom + over, tower_params, tuple(feats), tuple(k * D for k in ks), interaction_flops=2.0 * (K + 1) ** 2 * D
    )


def comm_summary(model: ModelShape, setup: Setup, hosts: int, ranks_per_host: int, batch_size: int):
    """Bytes per global sample of every collective (``dmt.perf.comm_model``), the codec applied.

    The codec compresses the float all-to-alls it would in ``dmt bench``: DMT's cross-host tower
    exchange, or flat's world embedding all-to-all (never DDP's all-reduce).
    """
    from dmt.perf.comm_model import CommShape, analytic_dmt, analytic_flat, analytic_flat_2d  # torch only here
    from dmt.perf.comm_summary import CommSummary

    shape = CommShape(
        num_features=model.num_tables,
        embedding_dim=model.embedding_dim,
        num_hosts=hosts,
        ranks_per_host=ranks_per_host,
        batch_size=batch_size,
        pooling_factor=model.pooling,
    )
    dense = dense_sizes(model, setup)
    if setup.is_dmt:
        summary = analytic_dmt(
            shape,
            dense.tower_features,
            dense.tower_outputs,
            intra_sharding=setup.intra_sharding,
            dense_params=dense.dense_params,
            tower_params=dense.tower_params,
        )
    elif setup.flat_sharding == "2d":
        # every table and its row-wise Adagrad state (one value per row)
        elements = model.num_tables * model.num_embeddings * (model.embedding_dim + 1)
        summary = analytic_flat_2d(
            shape, table_elements=elements, sync_every=setup.sync_every, dense_params=dense.dense_params
        )
    else:
        summary = analytic_flat(shape, setup.flat_sharding, dense_params=dense.dense_params)
    factor = {"forward": setup.codec.forward, "backward": setup.codec.backward}
    stats = {
        k: s.scaled(factor[k.phase]) if _is_coded(k.op, k.payload, _group_kind(k.group), setup.is_dmt) else s
        for k, s in summary.stats.items()
    }
    return CommSummary(stats)


_CODED_OPS = ("all_to_all_single", "reduce_scatter", "all_gather")  # torchrec's pooled-embedding comms


def _is_coded(op: str, payload: str, group_kind: str, dmt: bool = True) -> bool:
    """The codec's collectives. DMT: float all-to-alls that leave the host (with H hosts of one rank
    the peers *are* the world, so DMT's exchange is labelled "world" there; intra-host ones are not
    coded). Flat: every pooled-embedding collective, the row-wise reduce-scatter (and its
    all-gather backward) too, as torchrec applies the codecs; not the 2D replica sync nor DDP."""
    if payload != "float" or op not in _CODED_OPS:
        return False
    return group_kind != "intra_host" if dmt else True


def _group_kind(label: str) -> str:
    """``dmt.perf.comm_sizers.group_label`` names start with world / intra_host / cross_host."""
    return next(g for g in ("world", "intra_host", "cross_host", "mixed") if label.startswith(g))


@dataclass(frozen=True)
class CollectiveTime:
    """One modelled collective (a CommKey of the analytic summary) and its time on one rank."""

    op: str
    group: str
    phase: str
    payload: str
    calls: int
    cross_bytes: float  # this rank sends, per step
    intra_bytes: float
    ms: float


def collective_times(model: ModelShape, setup: Setup, topo: Cluster, batch_size: int) -> list[CollectiveTime]:
    """alpha-beta time of every collective of a step on one rank.

    ``calls * alpha + max(cross / inter bw, intra / intra bw)``: a rank's cross- and intra-host
    bytes travel on different links at once (their sum, when the cluster's ``shared_medium``).
    alpha is the inter-host link's when the group spans hosts, plus ``latency_per_peer_us`` per remote
    peer for all-to-alls.
    """
    H, L = topo.hosts, topo.gpus_per_host
    summary = comm_summary(model, setup, H, L, batch_size)
    intra_load = tw_intra_imbalance(model, setup, topo)
    out = []
    for key, stats in sorted(summary.stats.items()):
        kind = _group_kind(key.group)
        link = topo.intra_host if kind == "intra_host" or H == 1 else topo.inter_host
        members = {"world": H * L, "cross_host": H, "intra_host": L}.get(kind, H * L)
        ring = key.op in _RING_OPS
        inter_bw, intra_bw = topo.inter_host.rank_bytes_per_s(L, ring), topo.intra_host.rank_bytes_per_s(L, ring)
        cross, intra = stats.cross_host * batch_size, stats.intra_host * batch_size  # per rank per step
        if kind == "intra_host" and key.op.startswith("all_to_all"):
            intra *= intra_load  # the busiest rank's share of a host's whole-table lookups
        calls = _calls(key.op, key.payload, cross + intra)
        peers = (members - 1) if key.op.startswith("all_to_all") else 0
        alpha_s = calls * (link.latency_us + link.latency_per_peer_us * peers) * 1e-6
        beta_s = (
            (cross / inter_bw + intra / intra_bw) if topo.shared_medium else max(cross / inter_bw, intra / intra_bw)
        )
        out.append(CollectiveTime(key.op, kind, key.phase, key.payload, calls, cross, intra, (alpha_s + beta_s) * 1e3))
    return out


_RING_OPS = ("reduce_scatter", "all_gather", "all_reduce", "ddp_allreduce")  # NCCL's ring collectives


def tw_intra_imbalance(model: ModelShape, setup: Setup, topo: Cluster) -> float:
    """The busiest GPU's share of its host's lookups over the mean, for DMT's whole tables per GPU (1 otherwise).

    A host of F_h tables of equal width on L GPUs gives ceil(F_h/L) tables to its busiest GPU; its
    lookup time and its intra-host exchange scale with that, not with the mean F_h/L. (Flat
    table-wise over the world keeps the balanced assumption of the module docstring.)

    Example:
        >>> topo = load_cluster("h100-nvlink-400g")  # 8 hosts x 8 GPUs; 26 tables: 4 on the busiest host
        >>> tw_intra_imbalance(ModelShape(), Setup(num_towers=8, intra_sharding="table_wise"), topo)
        2.0
    """
    if not setup.is_dmt or setup.intra_sharding != TowerSharding.TABLE_WISE or topo.gpus_per_host == 1:
        return 1.0
    feats = setup.tower_features or contiguous_sizes(model.num_tables, setup.num_towers)
    per_host = [0] * topo.hosts
    for t, f in enumerate(feats):  # towers round-robin on hosts, as Setup says
        per_host[t % topo.hosts] += f
    busiest = max(per_host)
    L = topo.gpus_per_host
    return math.ceil(busiest / L) / (busiest / L)


def _calls(op: str, payload: str, rank_bytes: float) -> int:
    """Collective launches behind one analytic entry (the bytes model sums them)."""
    if op == "ddp_allreduce":  # one all-reduce per bucket; the rank sends 2S(n-1)/n of S
        return max(1, math.ceil(rank_bytes / 2 / DDP_BUCKET_BYTES))
    return KJT_INT_CALLS if payload == "int" else 1


@dataclass(frozen=True)
class StepPrediction:
    """Predicted step time of one rank and its parts, milliseconds; bytes per global sample."""

    setup: Setup
    step_ms: float
    compute_ms: float
    embedding_ms: float
    dense_ms: float
    comm_ms: float
    codec_ms: float
    overhead_ms: float
    hidden_ms: float  # overlap credit subtracted
    cross_host_bytes_per_sample: float
    intra_host_bytes_per_sample: float
    collectives: tuple[CollectiveTime, ...] = field(default=(), repr=False)


def predict_step(model: ModelShape, setup: Setup, topo: Cluster, batch_size: int) -> StepPrediction:
    """Predicted step time of ``setup`` on ``topo`` with ``batch_size`` samples per rank.

    Example:
        >>> topo = load_cluster("h100-nvlink-400g")
        >>> flat = predict_step(ModelShape(embedding_dim=128), Setup(), topo, 8192)
        >>> dmt = predict_step(ModelShape(embedding_dim=128), Setup(num_towers=8, compression=4), topo, 8192)
        >>> dmt.cross_host_bytes_per_sample < flat.cross_host_bytes_per_sample
        True
    """
    if batch_size < 1:
        raise DmtError(f"batch_size={batch_size} must be >= 1")
    if setup.is_dmt and setup.num_towers < topo.hosts:
        raise DmtError(f"{setup.num_towers} towers cannot cover {topo.hosts} hosts (DMT needs one per host)")
    m = topo.machine
    dense = dense_sizes(model, setup)
    # Forward reads each looked-up row; the fused backward reads and writes it again (rowwise
    # Adagrad's one state value per row is negligible). Balanced: B*F*p rows per rank either way.
    emb_bytes = 3.0 * batch_size * model.num_tables * model.pooling * model.embedding_dim * ELEMENT_BYTES
    embedding_ms = emb_bytes / (m.memory_gbytes_per_s * 1e9) * 1e3 * tw_intra_imbalance(model, setup, topo)
    dense_ms = 3.0 * batch_size * dense.flops_per_sample / (m.effective_tflops * 1e12) * 1e3
    compute = embedding_ms + dense_ms
    colls = collective_times(model, setup, topo, batch_size)
    # Pipelined: the next batch's input all-to-alls (ids) run under this batch's compute.
    comm = sum(c.ms for c in colls if not (setup.pipeline and c.payload == "int"))
    coded = sum(1 for c in colls if setup.codec.compressed and _is_coded(c.op, c.payload, c.group, setup.is_dmt))
    codec_ms = coded * m.codec_ms
    # The host's fixed cost and the compute both run while queued collectives are in flight.
    overlap = m.pipeline_overlap if setup.pipeline else m.overlap
    hidden = overlap * min(m.step_overhead_ms + compute, comm)
    overhead = m.step_overhead_ms + (m.pipeline_ms if setup.pipeline else 0.0)
    if setup.is_dmt:
        overhead += m.tower_path_ms + m.tower_ms * setup.num_towers / topo.hosts
        overhead += m.intra_lookup_ms if topo.gpus_per_host > 1 else 0.0
    total = overhead + compute + codec_ms + comm - hidden
    # Per rank per step over B is per global sample summed over ranks (comm_model's unit).
    cross = sum(c.cross_bytes for c in colls) / batch_size
    intra = sum(c.intra_bytes for c in colls) / batch_size
    return StepPrediction(
        setup=setup,
        step_ms=total,
        compute_ms=compute,
        embedding_ms=embedding_ms,
        dense_ms=dense_ms,
        comm_ms=comm,
        codec_ms=codec_ms,
        overhead_ms=overhead,
        hidden_ms=hidden,
        cross_host_bytes_per_sample=cross,
        intra_host_bytes_per_sample=intra,
        collectives=tuple(colls),
    )
