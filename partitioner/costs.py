"""Per-feature cost model: what a feature costs the tower (and host) it is placed on.

Three numbers per feature, all per training step of ``batch_size`` samples:

* **lookup cost** = pooling factor x embedding dim x batch size: embedding rows read and pooled,
  and the bytes the tower's intra-host lookup moves. This is the load the partitioner balances.
* **output width** = embedding dim: floats per sample the feature adds to the tower's input.
* **memory** = table rows x dim x bytes per parameter + optimizer state. Row-wise Adagrad keeps one
  float per row, Adagrad one per parameter, SGD none.

The pooling factor (mean non-missing ids per sample) and the cardinality (distinct ids after the
model's hashing, i.e. capped by the table size) are measured from data.

Example:
    >>> import numpy as np
    >>> ids = np.array([[3, -1], [5, 7], [3, 9], [-1, 7]])  # 4 samples, 2 features, -1 = missing
    >>> c = measure_costs(ids, ["a", "b"], embedding_dim=4, batch_size=10, num_embeddings=[100, 3])
    >>> c.pooling_factor.tolist(), c.table_rows.tolist(), c.lookup_cost.tolist()
    ([0.75, 0.75], [2, 2], [30.0, 30.0])
    >>> c.memory_bytes.tolist()  # 2 rows x 4 dims x 4 bytes + 2 rows x 4 bytes of row-wise Adagrad
    [40, 40]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from partitioner.errors import PartitionError, PartitionErrorReason

# Optimizer state, in floats per table row (the value ``dim`` means one per parameter).
_STATE_PER_ROW = {"sgd": 0, "rowwise_adagrad": 1, "adagrad": "dim"}


@dataclass(frozen=True)
class FeatureCosts:
    """Costs of F features; arrays are aligned with ``names``.

    Args:
        names: feature names, length F.
        lookup_cost: (F,) float >= 0, the balanced load (pooling x dim x batch).
        memory_bytes: (F,) int >= 0, table + optimizer state bytes.
        output_width: (F,) int, floats per sample the feature feeds its tower.
        pooling_factor: (F,) mean ids per sample (0 for an always-missing feature).
        table_rows: (F,) rows the table needs.
    """

    names: tuple[str, ...]
    lookup_cost: np.ndarray
    memory_bytes: np.ndarray
    output_width: np.ndarray
    pooling_factor: np.ndarray
    table_rows: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(self.names))
        num = len(self.names)
        for name in ("lookup_cost", "memory_bytes", "output_width", "pooling_factor", "table_rows"):
            a = np.asarray(getattr(self, name))
            if a.shape != (num,):
                raise PartitionError(f"costs.{name} has shape {a.shape}, expected ({num},)", PartitionErrorReason.INPUT)
            if not np.isfinite(a).all() or (a < 0).any():
                raise PartitionError(f"costs.{name} must be finite and >= 0", PartitionErrorReason.INPUT)
            object.__setattr__(self, name, a)

    @staticmethod
    def uniform(names: Sequence[str], cost: float = 1.0, memory_bytes: int = 0) -> FeatureCosts:
        """Every feature costs the same: balance then means equal feature counts."""
        num = len(names)
        return FeatureCosts(
            names=tuple(names),
            lookup_cost=np.full(num, float(cost)),
            memory_bytes=np.full(num, int(memory_bytes), dtype=np.int64),
            output_width=np.ones(num, dtype=np.int64),
            pooling_factor=np.ones(num),
            table_rows=np.ones(num, dtype=np.int64),
        )

    @staticmethod
    def from_lookup_cost(names: Sequence[str], lookup_cost: np.ndarray) -> FeatureCosts:
        """Costs given only as a load per feature (no memory): synthetic benchmarks and tests."""
        c = FeatureCosts.uniform(names)
        return FeatureCosts(
            c.names,
            np.asarray(lookup_cost, dtype=np.float64),
            c.memory_bytes,
            c.output_width,
            c.pooling_factor,
            c.table_rows,
        )

    def subset(self, index: np.ndarray) -> FeatureCosts:
        """The costs of features ``index`` (positions), in that order."""
        return FeatureCosts(
            names=tuple(self.names[i] for i in index),
            lookup_cost=self.lookup_cost[index],
            memory_bytes=self.memory_bytes[index],
            output_width=self.output_width[index],
            pooling_factor=self.pooling_factor[index],
            table_rows=self.table_rows[index],
        )


def measure_costs(
    ids: np.ndarray,
    names: Sequence[str],
    *,
    embedding_dim: int,
    batch_size: int,
    num_embeddings: Sequence[int] | None = None,
    optimizer: str = "rowwise_adagrad",
    bytes_per_param: int = 4,
) -> FeatureCosts:
    """Measure pooling factors and cardinalities from a sample of single-id features.

    Args:
        ids: (N, F) int, one raw id per sample and feature, ``-1`` = missing (Criteo's layout).
        names: the F feature names.
        embedding_dim: D of every table.
        batch_size: samples per step, the scale of the lookup cost.
        num_embeddings: table size per feature; ids are hashed modulo it as the model does, so the
            cardinality never exceeds it. ``None``: tables sized to the distinct ids.
        optimizer: sparse optimizer, for its state ("sgd", "adagrad", "rowwise_adagrad").
        bytes_per_param: 4 for fp32 tables, 2 for fp16.

    Returns:
        The FeatureCosts; ``table_rows`` is the cardinality (at least 1 row).
    """
    ids = np.asarray(ids)
    if ids.ndim != 2 or ids.shape[1] != len(names):
        raise PartitionError(f"ids have shape {ids.shape}, expected (N, {len(names)})", PartitionErrorReason.INPUT)
    if optimizer not in _STATE_PER_ROW:
        raise PartitionError(
            f"optimizer {optimizer!r} is not one of {sorted(_STATE_PER_ROW)}", PartitionErrorReason.INPUT
        )
    if embedding_dim < 1 or batch_size < 1 or bytes_per_param < 1:
        raise PartitionError(
            f"embedding_dim={embedding_dim}, batch_size={batch_size} and "
            f"bytes_per_param={bytes_per_param} must be >= 1",
            PartitionErrorReason.INPUT,
        )
    num = len(names)
    present = ids >= 0
    pooling = present.mean(axis=0) if len(ids) else np.zeros(num)
    rows = np.empty(num, dtype=np.int64)
    for j in range(num):  # one np.unique per feature (26 for Criteo), not per sample
        col = ids[present[:, j], j]
        if num_embeddings is not None:
            col = col % int(num_embeddings[j])
        rows[j] = max(1, len(np.unique(col)))
    state = _STATE_PER_ROW[optimizer]
    state_floats = embedding_dim if state == "dim" else int(state)
    memory = rows * (embedding_dim * bytes_per_param + state_floats * 4)
    return FeatureCosts(
        names=tuple(names),
        lookup_cost=pooling * embedding_dim * batch_size,
        memory_bytes=memory.astype(np.int64),
        output_width=np.full(num, embedding_dim, dtype=np.int64),
        pooling_factor=pooling,
        table_rows=rows,
    )
