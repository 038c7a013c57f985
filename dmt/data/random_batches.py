"""Random Criteo-shaped batches: uniform ids, a set pooling factor, a function of (seed, rank, step).

What benchmarks time and tests compare on when the values do not matter, only the shapes: every
caller that needs made-up torchrec ``Batch``es draws them here, so two runs with the same seed see
the same samples. Real rows go through :mod:`dmt.data.batching` instead.

Example:
    >>> b = random_batch(4, 100, features=("a", "b"), pooling=2, seed=0, rank=1, step=3)
    >>> b.dense_features.shape, b.sparse_features.lengths().tolist(), b.labels.dtype
    (torch.Size([4, 13]), [2, 2, 2, 2, 2, 2, 2, 2], torch.float32)
    >>> bool(torch.equal(b.sparse_features.values(), random_batch(4, 100, features=("a", "b"), pooling=2,
    ...                                                           seed=0, rank=1, step=3).sparse_features.values()))
    True
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchrec.datasets.utils import Batch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from dmt.data.criteo import NUM_DENSE, SPARSE_NAMES

# Spread the ranks and the steps of one seed far apart, so no two of them share a generator seed
# in practice; (seed, rank 0, step 0) is seeded with ``seed`` itself.
_RANK_STRIDE = 7919
_STEP_STRIDE = 1_000_003


def generator_seed(seed: int, rank: int = 0, step: int = 0) -> int:
    """The torch generator seed of batch ``step`` of ``rank`` in a run seeded ``seed``.

    Example:
        >>> generator_seed(5), generator_seed(5, rank=1, step=2)
        (5, 2007930)
    """
    return seed + rank * _RANK_STRIDE + step * _STEP_STRIDE


def random_batch(
    batch_size: int,
    num_embeddings: int | Sequence[int],
    *,
    features: Sequence[str] = SPARSE_NAMES,
    num_dense: int = NUM_DENSE,
    pooling: int | range = 1,
    seed: int = 0,
    rank: int = 0,
    step: int = 0,
    samples: slice | None = None,
) -> Batch:
    """A random torchrec ``Batch`` (on CPU) of ``batch_size`` samples.

    Dense features are uniform in [0, 1), labels 0.0 or 1.0 (float32, as read from Criteo files),
    ids uniform over each feature's table.

    Args:
        batch_size: samples drawn.
        num_embeddings: rows of every table, or one per feature.
        features: KJT keys (default: Criteo's 26 categorical features).
        num_dense: dense features per sample.
        pooling: ids per (sample, feature): exactly this many, or for a ``range`` one of its values
            drawn per bag (``range(0, 4)``: 0 to 3 ids, empty bags included).
        seed, rank, step: the batch depends on these only (see :func:`generator_seed`).
        samples: keep only these samples of the drawn batch: every rank draws the same global batch
            (same ``seed``, ``rank=0``) and keeps its share, so the ranks together see exactly the
            samples an unsharded run does.
    """
    rows = [num_embeddings] * len(features) if isinstance(num_embeddings, int) else list(num_embeddings)
    if len(rows) != len(features):
        raise ValueError(f"{len(rows)} table sizes for {len(features)} features")
    if isinstance(pooling, range) and pooling.step != 1:
        raise ValueError(f"pooling={pooling}: give a range of step 1")
    keep = slice(*(samples or slice(None)).indices(batch_size)[:2])
    g = torch.Generator().manual_seed(generator_seed(seed, rank, step))
    if isinstance(pooling, range):
        lengths = torch.randint(pooling.start, pooling.stop, (len(features), batch_size), generator=g)
    else:
        lengths = torch.full((len(features), batch_size), pooling, dtype=torch.long)
    values = []
    for f, n in enumerate(rows):
        ids = torch.randint(0, n, (int(lengths[f].sum()),), generator=g)
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths[f].cumsum(0)])
        values.append(ids[offsets[keep.start] : offsets[keep.stop]])
    dense = torch.rand(batch_size, num_dense, generator=g)
    labels = torch.randint(0, 2, (batch_size,), generator=g).float()
    return Batch(
        dense_features=dense[keep],
        sparse_features=KeyedJaggedTensor(
            keys=list(features), values=torch.cat(values), lengths=lengths[:, keep].reshape(-1).to(torch.int32)
        ),
        labels=labels[keep],
    )
