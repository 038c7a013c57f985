"""Criteo arrays -> fixed-size torchrec Batches, split across ranks.

Every rank walks the same deterministic order of *global* batches (``batch_size * world_size``
rows) and takes its own contiguous slice, so a run on W ranks sees exactly the samples a
single-process run with the global batch sees, step for step. The last partial global batch is
dropped: torchrec's tower sharding caches the batch size at the first call and the row-wise
backward needs equal per-rank sizes, so every step must have the same shape.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torchrec.datasets.utils import Batch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from dmt.data.criteo import SPARSE_NAMES, CriteoArrays
from dmt.errors import DmtError


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
    """
    sparse = torch.from_numpy(np.ascontiguousarray(arrays.sparse[rows].T))  # (F, B), key-major
    present = sparse >= 0
    sizes = torch.tensor(num_embeddings, dtype=torch.int64).unsqueeze(1)
    ids = torch.remainder(sparse, sizes)
    if max(num_embeddings) < 2**31:
        ids = ids.to(torch.int32)
    return Batch(
        dense_features=torch.from_numpy(np.ascontiguousarray(arrays.dense[rows])),
        sparse_features=KeyedJaggedTensor(
            keys=list(keys),
            values=ids[present],
            lengths=present.reshape(-1).to(torch.int32),
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
) -> Iterator[Batch]:
    """Yield this rank's per-step Batches of ``batch_size`` rows.

    Args:
        batch_size: rows per rank per step; the global batch is ``batch_size * world_size``.
        shuffle: permute rows with a generator seeded by (seed, epoch), identical on all ranks.
        start: index of the first global batch to yield (resuming mid-epoch).
    """
    global_batch = batch_size * world_size
    n = num_global_batches(len(arrays), batch_size, world_size)
    if n == 0:
        raise DmtError(
            f"{len(arrays)} rows cannot fill one global batch of {global_batch} "
            f"({batch_size} per rank x {world_size} ranks); use more data or a smaller --batch-size"
        )
    order = np.random.default_rng([seed, epoch]).permutation(len(arrays)) if shuffle else np.arange(len(arrays))
    for b in range(start, n):
        lo = b * global_batch + rank * batch_size
        yield to_batch(arrays, order[lo : lo + batch_size], num_embeddings)
