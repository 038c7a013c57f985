"""One-hot Criteo -> multi-hot inputs, the way torchrec's DLRM example builds MLPerf DLRM-DCNv2's.

MLPerf's DLRM-DCNv2 trains on Criteo 1TB with *multi-hot* categoricals: table ``t`` gets
``sizes[t]`` ids per sample (``MLPERF_MULTI_HOT_SIZES``, 1 to 100). torchrec_dlrm
(facebookresearch/dlrm, ``torchrec_dlrm/multi_hot.py``, class ``Multihot``) makes them from the
one-hot id ``i`` (already taken modulo the table size ``n``): a fixed lookup table per feature maps
``i`` to ``[i, r_1, ..., r_{s-1}]`` with the ``r`` drawn uniformly from ``[0, n)`` once
(``np.random.seed(0)``, tables in feature order). Every occurrence of ``i`` then becomes the same bag.

``method="table"`` builds exactly those tables (the same numbers as torchrec_dlrm's uniform
Multihot). They hold ``sum_t n_t * (s_t - 1)`` int32 per rank: 23 GB at MLPerf's 40M-row cap,
so ``method="hash"`` (the default) computes ``r_j`` on the fly as a 64-bit mix of (feature, i, j,
seed) modulo ``n``: the same construction (first id = the one-hot id, the others uniform and fixed
per id) with no tables. A missing categorical stays an empty bag.

Example:
    >>> from dmt.data.random_batches import random_batch
    >>> mh = MultiHot(sizes=(3,) * 26, num_embeddings=(100,) * 26)
    >>> b = mh.expand(random_batch(4, [100] * 26, seed=0))
    >>> b.sparse_features.lengths().view(26, 4)[0].tolist()
    [3, 3, 3, 3]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchrec.datasets.utils import Batch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from dmt.errors import DmtError

# MLPerf Training DLRM-DCNv2 (recommendation_v2), per Criteo feature cat_0 .. cat_25.
MLPERF_MULTI_HOT_SIZES = (3, 2, 1, 2, 6, 1, 1, 1, 1, 7, 3, 8, 1, 6, 9, 5, 1, 1, 1, 12, 100, 27, 10, 3, 1, 1)
METHODS = ("hash", "table")
_U = np.uint64


class MultiHot:
    """Expand one-hot batches into multi-hot ones.

    Args:
        sizes: ids per sample, one per feature (1 leaves a feature one-hot).
        num_embeddings: table sizes; the extra ids are in ``[0, n)``.
        method: "hash" (no memory) or "table" (torchrec_dlrm's exact tables; see module docstring).
        seed: seed of the extra ids ("table" always uses 0, as torchrec_dlrm does).
    """

    def __init__(
        self, *, sizes: Sequence[int], num_embeddings: Sequence[int], method: str = "hash", seed: int = 0
    ) -> None:
        self.sizes, self.num_embeddings = tuple(int(s) for s in sizes), tuple(int(n) for n in num_embeddings)
        if len(self.sizes) != len(self.num_embeddings):
            raise DmtError(
                f"{len(self.sizes)} multi-hot sizes for {len(self.num_embeddings)} tables; give one per table"
            )
        if min(self.sizes) < 1:
            raise DmtError(f"multi-hot sizes must be >= 1, got {list(self.sizes)}")
        if method not in METHODS:
            raise DmtError(f"multi-hot method {method!r} is not one of {METHODS}")
        self.method, self.seed = method, seed
        self._tables = _torchrec_dlrm_tables(self.sizes, self.num_embeddings) if method == "table" else None

    def expand(self, batch: Batch) -> Batch:
        """The same batch with feature ``t``'s present ids turned into ``sizes[t]`` ids each."""
        kjt = batch.sparse_features
        keys = kjt.keys()
        stride = kjt.stride()
        lengths = kjt.lengths().view(len(keys), stride)
        values = kjt.values().numpy()
        per_key = lengths.sum(dim=1).tolist()
        out, offset = [], 0
        for t, count in enumerate(per_key):
            ids = values[offset : offset + count]
            offset += count
            out.append(self._bag(t, ids).reshape(-1))
        new_lengths = lengths * torch.tensor(self.sizes, dtype=lengths.dtype).unsqueeze(1)
        return Batch(
            dense_features=batch.dense_features,
            sparse_features=KeyedJaggedTensor(
                keys=keys,
                values=torch.from_numpy(np.concatenate(out).astype(values.dtype, copy=False)),
                lengths=new_lengths.reshape(-1),
            ),
            labels=batch.labels,
        )

    def _bag(self, t: int, ids: np.ndarray) -> np.ndarray:
        """(n_ids, sizes[t]) ids: each id first, then its fixed extra ids."""
        size = self.sizes[t]
        if size == 1:
            return ids[:, None]
        if self._tables is not None:
            return self._tables[t][ids]
        j = np.arange(1, size, dtype=_U)
        x = ids.astype(_U)[:, None] * _U(0x9E3779B97F4A7C15) + (j + _U(t << 8)) * _U(0xD1B54A32D192ED03)
        x = _mix64(x + _U(self.seed))
        extra = (x % _U(self.num_embeddings[t])).astype(np.int64)
        return np.concatenate([ids.astype(np.int64)[:, None], extra], axis=1)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every input bit moves every output bit (uint64 wraps, as intended)."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> _U(30))) * _U(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> _U(27))) * _U(0x94D049BB133111EB)
    return x ^ (x >> _U(31))


def _torchrec_dlrm_tables(sizes: tuple[int, ...], num_embeddings: tuple[int, ...]) -> list[np.ndarray]:
    """torchrec_dlrm's uniform multi-hot tables: row i = [i, then sizes-1 draws from randint(0, n)].

    A RandomState seeded 0 draws what ``np.random.seed(0)`` then ``np.random.randint`` does, in the
    same order (one table after another), without touching numpy's global generator.
    """
    total = sum(n * (s - 1) for n, s in zip(num_embeddings, sizes)) * 4
    if total > 8 << 30:
        raise DmtError(
            f"multi-hot lookup tables would take {total / 2**30:.0f} GiB per rank; use method='hash' "
            "(the same construction without tables) or a smaller row cap"
        )
    rng = np.random.RandomState(0)
    tables = []
    for n, s in zip(num_embeddings, sizes):
        extra = rng.randint(0, n, size=(n, s - 1))
        tables.append(np.concatenate([np.arange(n)[:, None], extra], axis=1).astype(np.int32))
    return tables
