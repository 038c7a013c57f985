"""Training batches straight from memory-mapped days: each rank reads only its rows of each global batch.

Shapes: N = rows of a split, B = rows per rank per step, W = ranks, G = B * W (the global batch).

**Order.** Every rank computes the same order of the split's rows and global batch ``b`` is
positions ``[b*G, (b+1)*G)`` of it; rank ``r`` takes ``[b*G + r*B, b*G + (r+1)*B)`` and reads just
those rows from the mmaps (sorted, so a page is read once). The order depends on the seed and
the epoch only, never on W, so W ranks train on exactly the batches one process with batch G sees.

**Shuffling without the dataset in RAM** (``Shuffle``): a full permutation of 4.2B rows would be
34 GB per rank, and reading rows scattered over the whole dataset defeats the page cache. Instead
the rows are cut into blocks of ``block_rows`` consecutive rows, the blocks are put in a random
order (one int32 per block: 33 MB for Criteo 1TB at 512-row blocks), and this stream of blocks
is cut into windows of ``window_rows`` rows whose rows are shuffled uniformly. What it costs: a
global batch is a uniform sample of its window, and a window is ``window_rows / block_rows``
(512 by default) blocks drawn uniformly from the whole epoch, so a batch mixes every part of the
dataset, but rows of one block (neighbours in the input files, e.g. a few seconds of Criteo's
time-ordered log) land in the same window: a batch of G rows holds about
``G * block_rows / window_rows`` rows of each of its blocks (16 of 8192 by default) where a full
shuffle would hold ~0. Consecutive batches of a window draw from the same blocks. torchrec_dlrm's
mmap loader, for comparison, reads batches of consecutive rows (``--shuffle_batches`` only permutes
inside a batch) and relies on a 700 GB-RAM offline shuffle for the rest.

**Memory.** Pages a process touches through an mmap count in its RSS until the kernel reclaims
them, so each window's pages are released (``Day.release``) once the order leaves it: the RSS of
a rank holds about one window of rows (~70 MB at the defaults), whatever the size of the data.
Every rank still pages in its whole window (its rows are spread over all of it): the price of
batches that do not depend on W.

Example:
    >>> from dmt.data.criteo import CriteoArrays
    >>> rng = np.random.default_rng(0)
    >>> arrays = CriteoArrays(rng.integers(0, 2, 64).astype(np.float32), rng.random((64, 13), np.float32),
    ...                       rng.integers(-1, 1000, (64, 26)))
    >>> rows = RowSet.from_arrays(arrays)
    >>> batches = list(iter_rank_batches(rows, batch_size=8, num_embeddings=[100] * 26, rank=1, world_size=2))
    >>> len(batches), batches[0].dense_features.shape
    (4, torch.Size([8, 13]))
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from torchrec.datasets.utils import Batch

from dmt.data.batching import PAD_LABEL, to_batch
from dmt.data.criteo import CriteoArrays
from dmt.data.criteo_kernel import NUM_DENSE, NUM_SPARSE
from dmt.data.npy_layout import Day, Preprocessed
from dmt.errors import DmtError


@dataclass(frozen=True)
class Segment:
    """Rows ``[start, stop)`` of one day (memory-mapped) or of in-memory arrays (a small TSV)."""

    source: Day | CriteoArrays
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start

    def read(self, local: np.ndarray, out: CriteoArrays, at: np.ndarray) -> None:
        """Copy rows ``start + local`` (sorted) into ``out`` at positions ``at``."""
        idx = local + self.start
        src = self.source
        out.dense[at] = src.dense[idx]
        out.sparse[at] = src.sparse[idx]  # int32 (older torchrec files) widens to int64
        out.labels[at] = src.labels[idx].reshape(-1)  # (n, 1) int32 in .npy, (n,) float32 in memory


class RowSet:
    """An ordered selection of rows over days (a split), read row by row on demand.

    Args:
        segments: the pieces, in order; row ``i`` of the set is found by walking them.
        name: what the set is, for messages ("train", "day_23[0:89137319]").
    """

    def __init__(self, segments: Sequence[Segment], name: str = "rows") -> None:
        self.segments = tuple(s for s in segments if len(s))
        self.name = name
        self._starts = np.cumsum([0] + [len(s) for s in self.segments])

    @staticmethod
    def from_data(data: Preprocessed, name: str = "all days") -> RowSet:
        return RowSet([Segment(d, 0, len(d)) for d in data.days], name)

    @staticmethod
    def from_arrays(arrays: CriteoArrays, name: str = "in-memory rows") -> RowSet:
        return RowSet([Segment(arrays, 0, len(arrays))], name)

    def __len__(self) -> int:
        return int(self._starts[-1])

    def slice(self, lo: int, hi: int, name: str | None = None) -> RowSet:
        """Rows ``[lo, hi)`` of this set, as a set of its own."""
        lo, hi = max(0, lo), min(len(self), hi)
        pieces = []
        for seg, first in zip(self.segments, self._starts[:-1].tolist()):
            a, b = max(lo, first), min(hi, first + len(seg))
            if a < b:
                pieces.append(Segment(seg.source, seg.start + a - first, seg.start + b - first))
        return RowSet(pieces, name or f"{self.name}[{lo}:{hi}]")

    def gather(self, rows: np.ndarray) -> CriteoArrays:
        """Rows ``rows`` (any order, int64) of the set, as arrays in that order."""
        rows = np.asarray(rows, np.int64)
        n = len(rows)
        out = CriteoArrays(
            np.empty(n, np.float32), np.empty((n, NUM_DENSE), np.float32), np.empty((n, NUM_SPARSE), np.int64)
        )
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        seg_of = np.searchsorted(self._starts, ordered, side="right") - 1
        bounds = np.searchsorted(seg_of, np.arange(len(self.segments) + 1))
        for i, seg in enumerate(self.segments):
            lo, hi = bounds[i], bounds[i + 1]
            if lo < hi:
                seg.read(ordered[lo:hi] - self._starts[i], out, order[lo:hi])
        return out

    def release(self) -> None:
        """Drop the pages this process has mapped (see the module docstring, "Memory")."""
        for seg in self.segments:
            if isinstance(seg.source, Day):
                seg.source.release()


@dataclass(frozen=True, kw_only=True)
class Shuffle:
    """How training rows are shuffled (see the module docstring). The same on every rank.

    Args:
        seed: with the epoch, the whole order.
        block_rows: consecutive rows that move together.
        window_rows: rows shuffled uniformly together; about this many rows are resident per rank.
    """

    seed: int = 0
    block_rows: int = 512  # 512 x 264 B = 135 KB contiguous reads; 33 MB of block order for 4.2B rows
    window_rows: int = 1 << 18  # 262,144 rows = 69 MB of pages per rank; 512 blocks per window

    def __post_init__(self) -> None:
        if self.block_rows < 1 or self.window_rows < 1:
            raise DmtError(f"block_rows={self.block_rows} and window_rows={self.window_rows} must be >= 1")


class EpochOrder:
    """The order of one epoch: position ``p`` of the stream -> row of the set; no shuffle: identity."""

    def __init__(self, num_rows: int, shuffle: Shuffle | None, epoch: int = 0) -> None:
        self.n, self.shuffle, self.epoch = num_rows, shuffle, epoch
        self._windows: dict[int, np.ndarray] = {}  # the last two windows: builders may straddle one
        self._lock = threading.Lock()
        if shuffle is None:
            return
        k = shuffle.block_rows
        self._nblocks = -(-num_rows // k)
        dtype = np.int32 if self._nblocks < 2**31 else np.int64
        self._blocks = np.random.default_rng([shuffle.seed, epoch, 0]).permutation(self._nblocks).astype(dtype)
        # Only the data's last block may be short; where it landed shifts the blocks after it.
        self._short = num_rows - (self._nblocks - 1) * k
        self._short_at = int(np.flatnonzero(self._blocks == self._nblocks - 1)[0]) if self._nblocks else 0

    def window_of(self, pos: int) -> int:
        return pos // self.shuffle.window_rows if self.shuffle is not None else 0

    def rows(self, lo: int, hi: int) -> np.ndarray:
        """Rows of the set at stream positions ``[lo, hi)`` (int64)."""
        if self.shuffle is None:
            return np.arange(lo, hi, dtype=np.int64)
        s = self.shuffle.window_rows
        parts = []
        for w in range(lo // s, (hi - 1) // s + 1):
            mapped = self._window_rows(w)
            parts.append(mapped[max(lo - w * s, 0) : min(hi - w * s, len(mapped))])
        return np.concatenate(parts)

    def _window_rows(self, w: int) -> np.ndarray:
        """Rows of window ``w`` in shuffled order (cached: a window serves many batches)."""
        with self._lock:
            mapped = self._windows.get(w)
        if mapped is not None:
            return mapped
        s = self.shuffle.window_rows
        lo, hi = w * s, min((w + 1) * s, self.n)
        positions = lo + np.random.default_rng([self.shuffle.seed, self.epoch, 1, w]).permutation(hi - lo)
        mapped = self._block_stream_to_rows(positions)
        with self._lock:
            self._windows = {k: v for k, v in self._windows.items() if k >= w - 1}
            self._windows[w] = mapped
        return mapped

    def _block_stream_to_rows(self, pos: np.ndarray) -> np.ndarray:
        """Positions in the stream of permuted blocks -> rows of the set."""
        k, j, short = self.shuffle.block_rows, self._short_at, self._short
        before = pos < j * k
        after = pos >= j * k + short
        q = pos - (j * k + short)
        slot = np.where(before, pos // k, np.where(after, j + 1 + q // k, j))
        offset = np.where(before, pos % k, np.where(after, q % k, pos - j * k))
        return self._blocks[slot].astype(np.int64) * k + offset


def num_rank_batches(num_rows: int, batch_size: int, world_size: int = 1, *, pad_last: bool = False) -> int:
    """Steps an epoch of ``num_rows`` rows gives: whole global batches, plus a padded last one if asked."""
    global_batch = batch_size * world_size
    return -(-num_rows // global_batch) if pad_last else num_rows // global_batch


class RankBatches:
    """This rank's Batches of one epoch (what ``dmt.data.batching.to_batch`` makes), in step order.

    Iterating builds them one after another; ``build(step)`` builds any step on its own, so
    ``dmt.data.Prefetcher(..., workers=k)`` can build k steps at once on threads.

    Args:
        rows: the split.
        batch_size: rows per rank per step (B); the global batch is ``batch_size * world_size``.
        num_embeddings: table sizes; ids are hashed ``% num_embeddings``.
        shuffle: None keeps the set's order (evaluation).
        epoch: with ``shuffle.seed``, the order.
        start: first global batch to yield (resuming mid-epoch).
        pad_last: also yield the last, partial global batch, padded to ``batch_size`` rows per rank
            with copies of real rows labelled ``PAD_LABEL``, as ``dmt.data.iter_batches`` does
            (evaluation over every row; ``dmt.train.loop.evaluate`` leaves the padding out).
            Without it the partial batch is dropped, as every step must have the same shape.
        transform: applied to every Batch (e.g. ``MultiHot(...).expand``).

    Raises:
        DmtError: the set cannot fill one global batch (and ``pad_last`` is off).
    """

    def __init__(
        self,
        rows: RowSet,
        *,
        batch_size: int,
        num_embeddings: Sequence[int],
        rank: int = 0,
        world_size: int = 1,
        shuffle: Shuffle | None = None,
        epoch: int = 0,
        start: int = 0,
        pad_last: bool = False,
        transform: Callable[[Batch], Batch] | None = None,
    ) -> None:
        if not 0 <= rank < world_size or batch_size < 1:
            raise DmtError(f"rank={rank} of world_size={world_size} with batch_size={batch_size} is not a valid layout")
        self.rows, self.batch_size, self.num_embeddings = rows, batch_size, list(num_embeddings)
        self.rank, self.world_size, self.transform = rank, world_size, transform
        self.num_steps = num_rank_batches(len(rows), batch_size, world_size, pad_last=pad_last)
        if self.num_steps == 0:
            raise DmtError(
                f"{len(rows)} rows of {rows.name} cannot fill one global batch of {batch_size * world_size} "
                f"({batch_size} per rank x {world_size} ranks); use more data or a smaller --batch-size"
            )
        self.steps = range(start, self.num_steps)
        self.order = EpochOrder(len(rows), shuffle, epoch)
        self._released_window = -1
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.steps)

    def __iter__(self) -> Iterator[Batch]:
        for b in self.steps:
            yield self.build(b)
        self.rows.release()

    def build(self, step: int) -> Batch:
        """The Batch of global step ``step`` for this rank."""
        lo = step * self.batch_size * self.world_size + self.rank * self.batch_size
        hi = min(lo + self.batch_size, len(self.rows))
        self._release_before(self.order.window_of(min(lo, len(self.rows) - 1)))
        positions = self.order.rows(lo, hi) if lo < hi else np.zeros(0, np.int64)
        arrays = self.rows.gather(_padded(positions, self.batch_size))
        arrays.labels[max(hi - lo, 0) :] = PAD_LABEL
        batch = to_batch(arrays, slice(None), self.num_embeddings)
        return self.transform(batch) if self.transform is not None else batch

    def _release_before(self, window: int) -> None:
        """Drop the mapped pages once the order moves to a new window (see "Memory" above)."""
        with self._lock:
            if window <= self._released_window:
                return
            self._released_window = window
        self.rows.release()


def iter_rank_batches(rows: RowSet, **kwargs) -> RankBatches:
    """``RankBatches(rows, **kwargs)``: this rank's batches of one epoch (see there)."""
    return RankBatches(rows, **kwargs)


def _padded(rows: np.ndarray, size: int) -> np.ndarray:
    """``rows`` filled up to ``size`` by repeating them (row 0 of the set if there are none)."""
    if len(rows) == size:
        return rows
    fill = rows if len(rows) else np.zeros(1, np.int64)
    return np.concatenate([rows, np.resize(fill, size - len(rows))])
