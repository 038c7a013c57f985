"""Criteo arrays -> fixed-size torchrec Batches, split across ranks.

Every rank walks the same deterministic order of *global* batches (``batch_size * world_size``
rows) and takes its own contiguous slice, so a run on W ranks sees exactly the samples a
single-process run with the global batch sees, step for step. Every step must have the same shape
(torchrec's tower sharding caches the batch size at the first call, see
``ShardedTowerCollection.input_dist``, and the row-wise backward needs equal per-rank sizes), so the
last partial global batch is dropped in training, and in evaluation (``pad_last``) filled up with
padding rows whose label is ``PAD_LABEL``: the evaluation drops them again after gathering the
outputs (``dmt.train.loop.evaluate``), so every held-out row is scored exactly once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torchrec.datasets.utils import Batch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from dmt.data.criteo import SPARSE_NAMES, CriteoArrays
from dmt.errors import DmtError

# The label of a padding row (real labels are 0 or 1). The model still computes a loss on it,
# which evaluation never uses: it keeps only the logits and labels of rows whose label is not this.
PAD_LABEL = -1.0


def to_batch(
    arrays: CriteoArrays,
    rows: np.ndarray | slice,
    num_embeddings: Sequence[int],
    keys: Sequence[str] = SPARSE_NAMES,
) -> Batch:
    """One Batch from ``rows`` of ``arrays``; ids are hashed into tables by ``% num_embeddings``.

    A missing categorical becomes an empty bag (length 0), so its pooled embedding is zero.
    Ids travel as int32 when every table has fewer than 2**31 rows (fbgemm's kernels and
    torchrec's KJT all-to-all take either): half the id bytes of every input all-to-all, which
    after tower compression are most of what crosses hosts forward (144 of 194 B/sample, 1M rows, 2x1).

    The ids are hashed in numpy, not torch: batches are built on a producer thread
    (``dmt.data.Prefetcher``) while the model trains, and torch ops there share the intra-op
    thread pool with the training step; on a busy 2-core machine that made 8192 rows take
    60-130 ms instead of the ~1 ms numpy takes.
    """
    sparse = arrays.sparse[rows].T  # (F, B), key-major
    present = sparse >= 0
    ids = np.remainder(sparse, np.asarray(num_embeddings, dtype=np.int64)[:, None])[present]
    if max(num_embeddings) < 2**31:
        ids = ids.astype(np.int32)
    return Batch(
        dense_features=torch.from_numpy(np.ascontiguousarray(arrays.dense[rows])),
        sparse_features=KeyedJaggedTensor(
            keys=list(keys),
            values=torch.from_numpy(ids),
            lengths=torch.from_numpy(present.reshape(-1).astype(np.int32)),
        ),
        labels=torch.from_numpy(np.ascontiguousarray(arrays.labels[rows])),
    )


def num_global_batches(num_rows: int, batch_size: int, world_size: int = 1) -> int:
    return num_rows // (batch_size * world_size)


def iter_batches(
    arrays: CriteoArrays,
    *,
    batch_size: int,
    num_embeddings: Sequence[int],
    rank: int = 0,
    world_size: int = 1,
    shuffle: bool = True,
    seed: int = 0,
    epoch: int = 0,
    start: int = 0,
    pad_last: bool = False,
) -> Iterator[Batch]:
    """Yield this rank's per-step Batches of ``batch_size`` rows.

    Args:
        batch_size: rows per rank per step; the global batch is ``batch_size * world_size``.
        shuffle: permute rows with a generator seeded by (seed, epoch), identical on all ranks.
        start: index of the first global batch to yield (resuming mid-epoch).
        pad_last: also yield the last partial global batch, filled up to full size with copies of
            its first row labelled ``PAD_LABEL`` (evaluation: every row once, equal shapes on all ranks).
    """
    global_batch = batch_size * world_size
    n = num_global_batches(len(arrays), batch_size, world_size)
    if pad_last and len(arrays) > 0:
        n = -(-len(arrays) // global_batch)  # ceil: the partial batch too
    if n == 0:
        raise DmtError(
            f"{len(arrays)} rows cannot fill one global batch of {global_batch} "
            f"({batch_size} per rank x {world_size} ranks); use more data or a smaller --batch-size"
        )
    order = np.random.default_rng([seed, epoch]).permutation(len(arrays)) if shuffle else np.arange(len(arrays))
    padding = n * global_batch - len(arrays)
    if padding > 0:  # only with pad_last: training drops the partial batch instead
        order = np.concatenate([order, np.full(padding, order[(n - 1) * global_batch])])
    for b in range(start, n):
        lo = b * global_batch + rank * batch_size
        batch = to_batch(arrays, order[lo : lo + batch_size], num_embeddings)
        pads = max(0, min(batch_size, lo + batch_size - len(arrays)))
        if pads:
            batch.labels[batch_size - pads :] = PAD_LABEL
        yield batch
