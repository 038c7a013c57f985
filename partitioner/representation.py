"""What the partitioner clusters: one vector per feature and a feature-feature affinity.

A :class:`FeatureRepresentation` is the only input the clustering needs besides costs. Where it
comes from is pluggable through :class:`FeatureEmbedder` (one verb, ``embed``): the default learns
it from a briefly trained DLRM (``partitioner.learned``), tests and benchmarks build it directly.

Shapes: F = features, k = vector width.

Example:
    >>> import numpy as np
    >>> rep = FeatureRepresentation(names=("a", "b", "c"), vectors=np.eye(3))
    >>> g = rep.affinity_graph()
    >>> g.shape, bool((g != g.T).nnz == 0), float(g.diagonal().sum())
    ((3, 3), True, 0.0)
"""

from __future__ import annotations

import abc
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from partitioner.errors import PartitionError, PartitionErrorReason

if TYPE_CHECKING:
    from dmt.data import CriteoArrays

# Above this many features a dense affinity is cut to its k nearest neighbours per feature: the
# clustering and the refinement then cost O(F * k), not O(F^2).
DENSE_LIMIT = 2000
DEFAULT_NEIGHBORS = 16


@dataclass(frozen=True)
class FeatureRepresentation:
    """Per-feature vectors and pairwise affinity; at least one of the two must be given.

    Args:
        names: feature names (KJT keys), length F.
        vectors: (F, k) float, one vector per feature; features that interact alike are close.
        affinity: (F, F) symmetric, non-negative, dense array or scipy sparse matrix: how much the
            model gains from interacting features i and j. The diagonal is ignored.
        source: how the representation was made (goes into the plan's params).
        info: extra numbers the source reports (e.g. training loss), JSON types.
        affinity_samples: (B, F, F) resampled affinities (bootstrap replicates of ``affinity``):
            the partitioner re-partitions each to measure how stable its towers are
            (``partitioner.confidence``). None: no resamples, no stability.
    """

    names: tuple[str, ...]
    vectors: np.ndarray | None = None
    affinity: np.ndarray | sp.spmatrix | sp.sparray | None = None
    source: str = "given"
    info: dict[str, Any] = field(default_factory=dict)
    affinity_samples: np.ndarray | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(str(n) for n in self.names))
        num = len(self.names)
        if len(set(self.names)) != num:
            dup = sorted({n for n in self.names if self.names.count(n) > 1})
            raise PartitionError(f"duplicate feature names {dup[:5]}", PartitionErrorReason.INPUT)
        if self.vectors is None and self.affinity is None:
            raise PartitionError("a FeatureRepresentation needs vectors or affinity", PartitionErrorReason.INPUT)
        if self.vectors is not None:
            v = np.asarray(self.vectors, dtype=np.float64)
            if v.ndim != 2 or v.shape[0] != num:
                raise PartitionError(f"vectors have shape {v.shape}, expected ({num}, k)", PartitionErrorReason.INPUT)
            if not np.isfinite(v).all():
                raise PartitionError("vectors contain NaN or inf", PartitionErrorReason.INPUT)
            object.__setattr__(self, "vectors", v)
        if self.affinity is not None:
            a = self.affinity
            if a.shape != (num, num):
                raise PartitionError(
                    f"affinity has shape {a.shape}, expected ({num}, {num})", PartitionErrorReason.INPUT
                )
            values = a.data if sp.issparse(a) else np.asarray(a)
            if not np.isfinite(values).all() or (values < 0).any():
                raise PartitionError("affinity must be finite and >= 0", PartitionErrorReason.INPUT)
        if self.affinity_samples is not None:
            s = np.asarray(self.affinity_samples, dtype=np.float64)
            if s.ndim != 3 or s.shape[1:] != (num, num):
                raise PartitionError(
                    f"affinity_samples have shape {s.shape}, expected (B, {num}, {num})", PartitionErrorReason.INPUT
                )
            if not np.isfinite(s).all() or (s < 0).any():
                raise PartitionError("affinity_samples must be finite and >= 0", PartitionErrorReason.INPUT)
            object.__setattr__(self, "affinity_samples", s)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write an ``.npz`` (atomically) that :meth:`load` reads back; the affinity is stored dense."""
        from dmt import atomic_open

        meta = json.dumps({"source": self.source, "info": self.info})
        arrays = {"names": np.array(self.names), "meta": np.array(meta)}
        if self.vectors is not None:
            arrays["vectors"] = self.vectors
        if self.affinity is not None:
            arrays["affinity"] = self.dense_affinity()
        if self.affinity_samples is not None:
            arrays["affinity_samples"] = self.affinity_samples
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        with atomic_open(path, "wb") as f:
            f.write(buf.getvalue())

    @staticmethod
    def load(path: str | os.PathLike[str]) -> FeatureRepresentation:
        """Read a representation written by :meth:`save`."""
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                return FeatureRepresentation(
                    names=tuple(z["names"].tolist()),
                    vectors=z.get("vectors"),
                    affinity=z.get("affinity"),
                    source=meta["source"],
                    info=meta["info"],
                    affinity_samples=z.get("affinity_samples"),
                )
        except (OSError, ValueError, KeyError) as e:
            raise PartitionError(
                f"cannot read representation {os.fspath(path)!r}: {e}", PartitionErrorReason.INPUT
            ) from None

    @property
    def num_features(self) -> int:
        return len(self.names)

    def dense_affinity(self) -> np.ndarray:
        """(F, F) affinity as a dense array with a zero diagonal (small F only: reports, plots)."""
        g = self.affinity_graph(num_neighbors=None)
        return g.toarray()

    def affinity_graph(self, num_neighbors: int | None = DEFAULT_NEIGHBORS) -> sp.csr_array:
        """The affinity as a symmetric sparse graph with a zero diagonal.

        A given affinity is used as is up to ``DENSE_LIMIT`` features (or ``num_neighbors=None``);
        beyond that each feature keeps its ``num_neighbors`` strongest links. Without an affinity
        the graph is the kNN graph of the vectors with self-tuning Gaussian weights (Zelnik-Manor &
        Perona 2004): ``w_ij = exp(-d_ij^2 / (s_i s_j))`` with ``s_i`` the distance to the
        ``min(7, k)``-th neighbour, so dense and sparse regions of the vector space both connect.
        """
        num = self.num_features
        if self.affinity is not None:
            g = sp.csr_array(self.affinity, dtype=np.float64)
            if num_neighbors is not None and num > DENSE_LIMIT:
                g = _top_k_per_row(g, num_neighbors)
        else:
            g = _knn_graph(self.vectors, num_neighbors or DEFAULT_NEIGHBORS)
        g = g.maximum(g.T).tocsr()  # symmetric: an edge kept by either endpoint survives
        g.setdiag(0.0)
        g.eliminate_zeros()
        g.sort_indices()
        return sp.csr_array(g)


def _top_k_per_row(g: sp.csr_array, k: int) -> sp.csr_array:
    """Keep the k largest entries of every row (vectorised over rows via a padded matrix)."""
    g = sp.csr_array(g)
    g.setdiag(0.0)
    g.eliminate_zeros()
    rows, cols = g.nonzero()
    vals = g[rows, cols]
    order = np.lexsort((-vals, rows))  # by row, strongest first
    rows, cols, vals = rows[order], cols[order], vals[order]
    starts = np.searchsorted(rows, np.arange(g.shape[0]))
    rank = np.arange(len(rows)) - starts[rows]
    keep = rank < k
    return sp.csr_array((vals[keep], (rows[keep], cols[keep])), shape=g.shape)


def _knn_graph(vectors: np.ndarray, k: int) -> sp.csr_array:
    from sklearn.neighbors import NearestNeighbors  # import cost only when used

    num = len(vectors)
    k = min(k, num - 1)
    if k < 1:
        return sp.csr_array((num, num))
    dist, idx = NearestNeighbors(n_neighbors=k + 1).fit(vectors).kneighbors(vectors)
    dist, idx = dist[:, 1:], idx[:, 1:]  # drop self
    scale = np.maximum(dist[:, min(7, k) - 1], 1e-12)
    w = np.exp(-(dist**2) / (scale[:, None] * scale[idx]))
    w = np.maximum(w, 1e-12)  # keep the edge even when the kernel underflows: it is a real neighbour
    rows = np.repeat(np.arange(num), k)
    return sp.csr_array((w.ravel(), (rows, idx.ravel())), shape=(num, num))


class FeatureEmbedder(abc.ABC):
    """Turns data into a FeatureRepresentation. Implementations: ``partitioner.learned``."""

    @abc.abstractmethod
    def embed(self, data: CriteoArrays, names: Sequence[str] | None = None) -> FeatureRepresentation:
        """Return one vector per sparse feature of ``data`` and their pairwise affinity."""
