"""Analytic communication model: the bytes a training step *should* send, flat and DMT.

The counterpart of :mod:`dmt.perf.comm_counter`'s measurements, in the same :class:`~dmt.perf.comm_counter.CommSummary`
type, so benchmarks and tests print measured next to expected.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dmt.choices import TowerSharding
from dmt.distributed.topology import Topology
from dmt.perf.comm_sizers import group_label
from dmt.perf.comm_summary import PHASES, CommKey, CommStats, CommSummary

# ----------------------------------------------------------------------------------------------
# Analytic model. Everything is in bytes per sample of the global batch, summed over all ranks,
# for one training step, steady state (no lazy set-up). Notation:
#   F features, D embedding dim, p ids per (sample, feature), s bytes per float element,
#   i bytes per id, l bytes per length, H hosts, L ranks per host, W = H*L ranks, B per-rank batch.
# A sample lives on one rank; a destination rank is off-rank for W-1 of W sample ranks, another
# host for W-L of them (fraction (H-1)/H) and the same host for L-1 of them.
# Not modelled: the per-step all-to-all of split sizes ahead of each KJT all-to-all (a few int64
# per rank pair: ~k*8*(W-1)/B bytes per sample, k = 2 or 3), and weighted features' weights.

MODELLED_FLAT_SHARDINGS = ("table_wise", "row_wise", "table_row_wise")  # the flat shardings whose bytes are modelled
# How a host's lookup exchanges bytes for each tower sharding: the flat formulas' pattern over L ranks.
_INTRA_PATTERN = {
    TowerSharding.TABLE_ROW_WISE: "row_wise",
    TowerSharding.TABLE_COLUMN_WISE: "column_wise",
    TowerSharding.TABLE_WISE: "table_wise",
}


@dataclass(frozen=True, kw_only=True)
class CommShape:
    """Sizes that set the bytes of one training step.

    Args:
        num_features: sparse features F, one table each.
        embedding_dim: D, the width of every table.
        num_hosts, ranks_per_host: H and L.
        batch_size: B, samples per rank per step (only per-step costs such as DDP need it).
        pooling_factor: p, ids per (sample, feature).
        element_bytes: bytes of an embedding / gradient / tower-output element (fp32: 4).
        index_bytes: bytes of an id (torchrec KJT values are int64).
        length_bytes: bytes of a KJT length (int32 from DMT's batching).
    """

    num_features: int
    embedding_dim: int
    num_hosts: int
    ranks_per_host: int
    batch_size: int
    pooling_factor: float = 1.0
    element_bytes: int = 4
    index_bytes: int = 8
    length_bytes: int = 4

    def __post_init__(self) -> None:
        for name in ("num_features", "embedding_dim", "num_hosts", "ranks_per_host", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.pooling_factor < 0:
            raise ValueError(f"pooling_factor={self.pooling_factor} must be >= 0")

    @property
    def world_size(self) -> int:
        return self.num_hosts * self.ranks_per_host

    @property
    def topology(self) -> Topology:
        return Topology(world_size=self.world_size, local_world_size=self.ranks_per_host)


def _shape_group(kind: str, shape: CommShape) -> str:
    """Label of the world, a host's ranks, or a rank's peers, consistent with :func:`group_label`."""
    t = shape.topology
    ranks = {"world": range(t.world_size), "intra_host": t.host_ranks(0), "cross_host": t.peers}[kind]
    return group_label(list(ranks), t)


class _Terms:
    """Accumulates analytic entries into a CommSummary (calls are 0: not modelled)."""

    def __init__(self, shape: CommShape) -> None:
        self.shape = shape
        self.stats: dict[CommKey, CommStats] = {}

    def add(self, op: str, group: str, phase: str, payload: str, *, cross: float, intra: float) -> None:
        if cross == 0 and intra == 0:
            return
        key = CommKey(op, _shape_group(group, self.shape), phase, payload)
        self.stats[key] = self.stats.get(key, CommStats()) + CommStats(0, cross + intra, cross, intra)

    def lookup(self, group: str, sharding: str, *, features: float, out_bytes: float, n: int, remote: int) -> None:
        """An EBC of ``features`` features sharded ``sharding`` over a group of ``n`` ranks.

        ``out_bytes`` is what one sample's lookup returns (``F*D*s``); ``remote`` of the n-1 other
        ranks are on another host. Each entry below is the bytes one sample costs *per other rank*
        of the group, averaged over which rank the sample lives on.
        """
        sh = self.shape
        ids = features * (sh.length_bytes + sh.pooling_factor * sh.index_bytes)
        local = n - 1 - remote

        def add(op: str, phases: tuple[str, ...], payload: str, per_rank: float) -> None:
            for phase in phases:
                self.add(op, group, phase, payload, cross=per_rank * remote, intra=per_rank * local)

        a2a = "all_to_all_single"
        if sharding == "table_wise":  # a table on one rank: ids there, the pooled vector back
            add(a2a, ("forward",), "int", ids / n)
            add(a2a, PHASES, "float", out_bytes / n)
        elif sharding == "row_wise":  # lengths to every rank, each id to its row's owner
            add(a2a, ("forward",), "int", features * (sh.length_bytes + sh.pooling_factor * sh.index_bytes / n))
            add("reduce_scatter", ("forward",), "float", out_bytes)  # partial sums from every rank
            add("all_gather", ("backward",), "float", out_bytes)
        else:  # column_wise, n column shards: every shard owner needs all ids, returns D/n columns
            add(a2a, ("forward",), "int", ids)
            add(a2a, PHASES, "float", out_bytes / n)

    def table_row_wise(self, features: float, out_bytes: float) -> None:
        """A world EBC sharded TWRW: each table on one host g, its rows over g's L ranks.

        Ids: lengths to each of g's L ranks and each id to one of them, over the world all-to-all
        (another host with probability (H-1)/H). Output: g's L ranks each hold a partial sum for
        every sample; an intra-host reduce-scatter sums them (L-1 vectors per sample move), then a
        cross-host all-to-all over the peers brings each sum to its sample's host ((H-1)/H).
        Backward: the same all-to-all back, then an intra-host all-gather (L-1 vectors).
        """
        sh = self.shape
        H, L = sh.num_hosts, sh.ranks_per_host
        lengths, ids = features * sh.length_bytes, features * sh.pooling_factor * sh.index_bytes
        cross_ids = (H - 1) / H * (L * lengths + ids)
        intra_ids = ((L - 1) * lengths + (L - 1) / L * ids) / H
        self.add("all_to_all_single", "world", "forward", "int", cross=cross_ids, intra=intra_ids)
        self.add("reduce_scatter", "intra_host", "forward", "float", cross=0.0, intra=(L - 1) * out_bytes)
        self.add("all_gather", "intra_host", "backward", "float", cross=0.0, intra=(L - 1) * out_bytes)
        for phase in PHASES:
            self.add("all_to_all_single", "cross_host", phase, "float", cross=(H - 1) / H * out_bytes, intra=0.0)

    def allreduce(self, group: str, params: float) -> None:
        """DDP's ring all-reduce of ``params`` elements each step: ``2S/n`` to every other member.

        world: one DDP over all W ranks. intra_host: one DDP per host over its L ranks, each of
        its own tower parameters; ``params`` is the sum over hosts.
        """
        sh = self.shape
        W, L = sh.world_size, sh.ranks_per_host
        S = params * sh.element_bytes / (W * sh.batch_size)  # per global sample
        if group == "world":  # W ranks, each 2S/W to W-L remote and L-1 local ranks
            self.add("ddp_allreduce", group, "backward", "float", cross=2 * S * (W - L), intra=2 * S * (L - 1))
        else:  # per host: L ranks, each 2S_h/L to L-1 local ranks
            self.add("ddp_allreduce", group, "backward", "float", cross=0.0, intra=2 * S * (L - 1))

    def summary(self) -> CommSummary:
        return CommSummary(dict(self.stats))


def analytic_flat(shape: CommShape, sharding: str, *, dense_params: int = 0) -> CommSummary:
    """Bytes per global sample of a flat torchrec model: one EBC sharded ``sharding`` over the world.

    table_wise: each table lives on one rank; the sample's rank sends it the lengths and ids
    (all-to-all), and it returns the pooled vector (all-to-all); backward returns the gradient the
    same way. Per sample and feature that is ``l + p*i`` and ``D*s`` bytes to one rank, off-rank
    with probability (W-1)/W and on another host with probability (H-1)/H, whatever the placement.

    row_wise: each table is split by rows over all W ranks; the sample's rank sends the lengths of
    every feature to every rank and each id to the one rank owning its row (uniform ids: (W-1)/W
    off-rank); every rank returns a partial pooled sum for every sample (reduce-scatter: ``D*s`` to
    W-1 ranks), and the gradient comes back by all-gather (the same).

    table_row_wise: see :meth:`_Terms.table_row_wise`; per (sample, table) L-1 pooled vectors
    inside the owning host and one across hosts with probability (H-1)/H.

    Args:
        shape: the sizes.
        sharding: "table_wise", "row_wise" or "table_row_wise".
        dense_params: elements DMP's world DDP all-reduces each step (dense and over arch).

    Example:
        >>> sh = CommShape(num_features=2, embedding_dim=4, num_hosts=2, ranks_per_host=2, batch_size=8)
        >>> tw = analytic_flat(sh, "table_wise")
        >>> tw.total(phase="forward", payload="float").cross_host  # 2 * 4 * 4 B * (2-1)/2
        16.0
        >>> analytic_flat(sh, "row_wise").total(phase="forward", payload="float").cross_host  # x (W-L)
        64.0
    """
    if sharding not in MODELLED_FLAT_SHARDINGS:
        raise ValueError(f"sharding={sharding!r} is not one of {MODELLED_FLAT_SHARDINGS}")
    sh = shape
    W, L = sh.world_size, sh.ranks_per_host
    terms = _Terms(sh)
    out_bytes = sh.num_features * sh.embedding_dim * sh.element_bytes
    if sharding == "table_row_wise":
        terms.table_row_wise(sh.num_features, out_bytes)
    else:
        terms.lookup("world", sharding, features=sh.num_features, out_bytes=out_bytes, n=W, remote=W - L)
    if dense_params:
        terms.allreduce("world", dense_params)
    return terms.summary()


def analytic_flat_2d(
    shape: CommShape, *, table_elements: float, sync_every: int = 1, dense_params: int = 0
) -> CommSummary:
    """Bytes per global sample of torchrec's 2D sparse parallelism (``DMPCollection``), as ``dmt bench``
    runs it: tables sharded table-wise over a group of one rank per host (the H peers), replicated
    on the L ranks of each host, the replicas averaged every ``sync_every`` steps.

    The lookup is flat table-wise over the H peers (cross-host with probability (H-1)/H, as flat
    table-wise over the world); the sync is a ring all-reduce over a host's L ranks of the rank's
    share of the tables and their optimizer state (``table_elements / H`` elements): ``2(L-1)/L``
    of it per rank, once per ``sync_every`` steps.

    Args:
        shape: the sizes.
        table_elements: elements of every table plus its optimizer state (rows x (D + 1) under
            row-wise Adagrad).
        sync_every: steps between two syncs.
        dense_params: elements of the world DDP all-reduce.

    Example:
        >>> sh = CommShape(num_features=2, embedding_dim=4, num_hosts=2, ranks_per_host=2, batch_size=8)
        >>> s = analytic_flat_2d(sh, table_elements=2 * 10 * 5)  # 2 tables x 10 rows x (4 + 1)
        >>> s.total(op="all_reduce").intra_host  # 100 elements / 2 hosts x 4 B x 2(L-1)/L per rank per step / 8
        25.0
    """
    if sync_every < 1:
        raise ValueError(f"sync_every={sync_every} must be >= 1")
    sh = shape
    H, L = sh.num_hosts, sh.ranks_per_host
    terms = _Terms(sh)
    out_bytes = sh.num_features * sh.embedding_dim * sh.element_bytes
    terms.lookup("cross_host", "table_wise", features=sh.num_features, out_bytes=out_bytes, n=H, remote=H - 1)
    per_rank_step = 2 * (L - 1) / L * table_elements / H * sh.element_bytes / sync_every
    terms.add("all_reduce", "intra_host", "backward", "float", cross=0.0, intra=per_rank_step / sh.batch_size)
    if dense_params:
        terms.allreduce("world", dense_params)
    return terms.summary()


def analytic_dmt(
    shape: CommShape,
    tower_features: Sequence[int],
    tower_output_dims: Sequence[int],
    *,
    intra_sharding: str = TowerSharding.TABLE_ROW_WISE,
    dense_params: int = 0,
    tower_params: int = 0,
) -> CommSummary:
    """Bytes per global sample of a DMT model (SPTT): towers on hosts, tables sharded within a host.

    Per sample on rank (h, r) and tower t on host g (F_t features, output O_t elements per sample):

    1. cross-host input all-to-all over the peers: the sample's lengths and ids of tower t go to
       peer (g, r): ``F_t*(l + p*i)``, remote when g != h, i.e. with probability (H-1)/H;
    2. intra-host lookup on host g, ``intra_sharding`` over its L ranks, all same-host: the
       formulas of :func:`analytic_flat` with W -> L (table_row_wise: the row-wise formula;
       table_column_wise assumes L column shards per table; table_wise: whole tables);
    3. the tower module: no communication forward; its DDP all-reduce stays on the host;
    4. cross-host output all-to-all over the peers: ``O_t*s`` back to (h, r), remote with
       probability (H-1)/H; backward sends the output gradient the same way.

    Steps 1 and 4 are a table-wise lookup over the H peers whose "pooled vector" is the tower
    output. Totals do not depend on which host runs which tower. With identity towers
    (``O_t = F_t*D``) the cross-host bytes equal flat table-wise; towers of compression c divide
    the float part by c.

    Args:
        shape: the sizes; ``num_features`` must equal ``sum(tower_features)``.
        tower_features: F_t per tower.
        tower_output_dims: O_t per tower, elements per sample.
        intra_sharding: a :class:`dmt.choices.TowerSharding` other than auto: "table_row_wise",
            "table_column_wise" or "table_wise" (whole tables).
        dense_params: elements the world DDP all-reduces (dense arch, global interaction, over arch).
        tower_params: tower-module parameters summed over all towers (each host all-reduces its own).

    Example:
        >>> sh = CommShape(num_features=4, embedding_dim=4, num_hosts=2, ranks_per_host=2, batch_size=8)
        >>> flat = analytic_flat(sh, "table_wise").total(phase="forward", payload="float").cross_host
        >>> dmt = analytic_dmt(sh, [2, 2], [2, 2]).total(phase="forward", payload="float").cross_host
        >>> flat, dmt  # c = 4: each 2-feature tower outputs 2 floats instead of 8
        (32.0, 8.0)
    """
    if intra_sharding not in _INTRA_PATTERN:
        raise ValueError(f"intra_sharding={intra_sharding!r} is not one of {[s.value for s in _INTRA_PATTERN]}")
    if len(tower_features) != len(tower_output_dims):
        raise ValueError(f"{len(tower_features)} tower feature counts but {len(tower_output_dims)} output dims")
    sh = shape
    F, K = sum(tower_features), sum(tower_output_dims)
    if sh.num_features != F:
        raise ValueError(f"towers hold {F} features but num_features={sh.num_features}")
    H, L = sh.num_hosts, sh.ranks_per_host
    terms = _Terms(sh)
    terms.lookup("cross_host", "table_wise", features=F, out_bytes=K * sh.element_bytes, n=H, remote=H - 1)
    terms.lookup(
        "intra_host",
        _INTRA_PATTERN[intra_sharding],
        features=F,
        out_bytes=F * sh.embedding_dim * sh.element_bytes,
        n=L,
        remote=0,
    )
    if tower_params:
        terms.allreduce("intra_host", tower_params)
    if dense_params:
        terms.allreduce("world", dense_params)
    return terms.summary()
