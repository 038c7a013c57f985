"""Memory-mapped batches per rank: the TSV path's batches, W ranks = 1 process, shuffle, splits, memory."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from _dist import run_distributed

from dmt.data import (
    Prefetcher,
    PreprocessConfig,
    RowSet,
    Shuffle,
    iter_batches,
    iter_rank_batches,
    kaggle_split,
    named_split,
    open_preprocessed,
    open_rows,
    preprocess_criteo,
    read_criteo,
    tail_split,
)
from dmt.data.batching import PAD_LABEL
from dmt.data.criteo import CriteoArrays
from dmt.data.npy_layout import write_day
from dmt.data.npy_source import EpochOrder
from dmt.data.synthetic import generate_criteo
from dmt.errors import DataFormatError, DmtError

TABLES = [97, 1000, 5] + [50] * 23  # different sizes: hashing per table is checked too
ROWS = 5000


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    """A generated TSV and its preprocessed directory (two days, so batches cross a day boundary)."""
    root = tmp_path_factory.mktemp("npy")
    generate_criteo(root / "day_0", rows=ROWS // 2, seed=11)
    generate_criteo(root / "day_1", rows=ROWS - ROWS // 2, seed=12)
    (root / "all.tsv").write_bytes((root / "day_0").read_bytes() + (root / "day_1").read_bytes())
    preprocess_criteo(PreprocessConfig(inputs=(root / "day_0", root / "day_1"), out=root / "npy", workers=1))
    return root / "all.tsv", root / "npy"


def _flat(batch) -> tuple[np.ndarray, ...]:
    kjt = batch.sparse_features
    return (batch.dense_features.numpy(), batch.labels.numpy(), kjt.values().numpy(), kjt.lengths().numpy())


def _assert_same_batch(a, b) -> None:
    for x, y in zip(_flat(a), _flat(b)):
        np.testing.assert_array_equal(x, y)
    assert a.sparse_features.keys() == b.sparse_features.keys()


@pytest.mark.parametrize("world", [1, 3])
def test_unshuffled_batches_are_the_tsv_paths_batches(data, world):
    tsv, npy = data
    arrays, _ = read_criteo(tsv)
    rows = RowSet.from_data(open_preprocessed(npy))
    for rank in range(world):
        ours = list(iter_rank_batches(rows, batch_size=64, num_embeddings=TABLES, rank=rank, world_size=world))
        theirs = list(
            iter_batches(arrays, batch_size=64, num_embeddings=TABLES, rank=rank, world_size=world, shuffle=False)
        )
        assert len(ours) == len(theirs) == ROWS // (64 * world)
        for a, b in zip(ours, theirs):
            _assert_same_batch(a, b)


def test_shuffled_epoch_visits_every_row_once_in_blocks_and_windows():
    n, shuffle = 10_007, Shuffle(seed=5, block_rows=64, window_rows=1000)
    order = EpochOrder(n, shuffle, epoch=0).rows(0, n)
    np.testing.assert_array_equal(np.sort(order), np.arange(n))
    assert not np.array_equal(order, EpochOrder(n, shuffle, epoch=1).rows(0, n))
    np.testing.assert_array_equal(order, EpochOrder(n, shuffle, epoch=0).rows(0, n))
    # a window holds whole blocks (up to the cut at its edges): ~window/block of them, not ~window
    for w in range(n // 1000):
        blocks = np.unique(order[w * 1000 : (w + 1) * 1000] // 64)
        assert len(blocks) <= 1000 // 64 + 2
    # and a window's rows are shuffled among themselves, not left in block order
    assert not np.all(np.diff(order[:1000]) == 1)


def _rank_batches(rank: int, world_size: int, npy: str, global_batch: int) -> list[tuple]:
    rows = RowSet.from_data(open_preprocessed(npy))
    shuffle = Shuffle(seed=3, block_rows=32, window_rows=700)
    batches = iter_rank_batches(
        rows,
        batch_size=global_batch // world_size,
        num_embeddings=TABLES,
        rank=rank,
        world_size=world_size,
        shuffle=shuffle,
    )
    return [_flat(b) for b in Prefetcher(batches, depth=2, workers=2, pin_memory=False)]


def test_ranks_of_a_real_job_read_exactly_the_one_process_global_batches(data):
    _, npy = data
    one = _rank_batches(0, 1, str(npy), global_batch=256)
    per_rank = run_distributed(_rank_batches, world_size=4, local_world_size=2, npy=str(npy), global_batch=256)
    assert all(len(r) == len(one) == ROWS // 256 for r in per_rank)
    for step, whole in enumerate(one):
        dense = np.concatenate([r[step][0] for r in per_rank])
        labels = np.concatenate([r[step][1] for r in per_rank])
        np.testing.assert_array_equal(dense, whole[0])
        np.testing.assert_array_equal(labels, whole[1])
        # ids of the global batch = each rank's ids, table by table
        lengths = np.stack([r[step][3].reshape(26, -1) for r in per_rank], axis=1).reshape(26, -1)
        np.testing.assert_array_equal(lengths.reshape(-1), whole[3])
        per_key = [_ids_by_key(r[step][2], r[step][3]) for r in per_rank]
        merged = np.concatenate([np.concatenate([k[t] for k in per_key]) for t in range(26)])
        np.testing.assert_array_equal(merged, whole[2])


def _ids_by_key(values: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
    counts = lengths.reshape(26, -1).sum(axis=1)
    return np.split(values, np.cumsum(counts)[:-1])


def test_padded_evaluation_scores_every_row_once(data):
    _, npy = data
    rows = RowSet.from_data(open_preprocessed(npy)).slice(10, 4000)
    seen = []
    for rank in range(3):
        for b in iter_rank_batches(rows, batch_size=256, num_embeddings=TABLES, rank=rank, world_size=3, pad_last=True):
            assert b.dense_features.shape == (256, 13)
            keep = b.labels != PAD_LABEL
            seen.append(b.dense_features[keep].numpy())
    expected = rows.gather(np.arange(len(rows))).dense
    got = np.concatenate(seen)
    assert len(got) == len(rows)
    np.testing.assert_array_equal(got[np.lexsort(got.T)], expected[np.lexsort(expected.T)])


def test_a_set_smaller_than_one_global_batch_is_refused_with_the_fix(data):
    rows = RowSet.from_data(open_preprocessed(data[1])).slice(0, 100)
    with pytest.raises(DmtError, match=r"100 rows .* cannot fill one global batch of 128 .*smaller --batch-size"):
        iter_rank_batches(rows, batch_size=64, num_embeddings=TABLES, world_size=2)


def _rss_file_kb() -> int:
    """Resident file-backed pages of this process (mmaps), from /proc."""
    text = Path("/proc/self/status").read_text()
    return int(re.search(r"RssFile:\s+(\d+) kB", text).group(1))


def test_release_gives_back_the_pages_a_walk_through_the_days_mapped(tmp_path):
    rows = 200_000  # 53 MB of day files
    rng = np.random.default_rng(0)
    write_day(tmp_path, "day_0", rng.random((rows, 13)), rng.integers(0, 99, (rows, 26)), np.ones((rows, 1)))
    data = open_preprocessed(tmp_path)
    before = _rss_file_kb()
    touched = RowSet.from_data(data).gather(np.arange(rows))
    assert len(touched) == rows
    mapped = _rss_file_kb() - before
    assert mapped > 40_000  # the walk mapped the ~53 MB in
    data.days[0].release()
    assert _rss_file_kb() - before < mapped / 10


def test_prefetcher_keeps_order_and_hands_over_errors():
    class Steps:
        steps = range(20)

        def build(self, step):
            if step == 13:
                raise ValueError("bad step 13")
            return step

    with Prefetcher(Steps(), depth=2, workers=3, pin_memory=False) as items:
        got = [next(items) for _ in range(13)]
        with pytest.raises(ValueError, match="bad step 13"):
            next(items)
    assert got == list(range(13))


def test_terabyte_split_is_days_0_to_22_and_halves_of_day_23(tmp_path):
    for day in range(24):
        n = 10 + day
        write_day(tmp_path, f"day_{day}", np.full((n, 13), day), np.zeros((n, 26)), np.zeros((n, 1)))
    s = named_split(open_preprocessed(tmp_path), "terabyte")
    assert len(s.train) == sum(10 + d for d in range(23))
    assert (len(s.val), len(s.test)) == (17, 16)  # day 23 has 33 rows: ceil(33/2) validate, as torchrec cuts it
    assert set(np.unique(s.val.gather(np.arange(17)).dense)) == {23.0}
    (tmp_path / "day_23_dense.npy").unlink()
    with pytest.raises(DataFormatError, match=r"day_23_dense\.npy is missing"):
        open_preprocessed(tmp_path)
    for part in ("sparse", "labels"):
        (tmp_path / f"day_23_{part}.npy").unlink()
    with pytest.raises(DmtError, match="the terabyte split needs day_23"):
        named_split(open_preprocessed(tmp_path), "terabyte")


def test_terabyte_split_warns_about_missing_training_days(tmp_path):
    for day in (0, 23):
        write_day(tmp_path, f"day_{day}", np.zeros((4, 13)), np.zeros((4, 26)), np.zeros((4, 1)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = named_split(open_preprocessed(tmp_path), "terabyte")
    assert len(s.train) == 4 and "days [1, 2," in str(caught[0].message)


def test_kaggle_split_is_six_sevenths_and_halves_of_the_last_seventh():
    n = 45_840_617  # Criteo Kaggle train.txt, as zero-copy broadcast rows
    arrays = CriteoArrays(*(np.broadcast_to(np.zeros(1, t), (n, *s)) for t, s in _SHAPES))
    s = kaggle_split(RowSet.from_arrays(arrays))
    assert len(s.train) == 39_291_954  # torchrec-based Kaggle pipelines' KAGGLE_TOTAL_TRAINING_SAMPLES
    assert len(s.val) + len(s.test) == n - 39_291_954 and len(s.val) - len(s.test) in (0, 1)


_SHAPES = [(np.float32, ()), (np.float32, (13,)), (np.int64, (26,))]


def test_tail_split_and_eval_data_paths(data, tmp_path):
    tsv, npy = data
    rows, report = open_rows(str(npy))
    assert report is None  # preprocessed data: dmt preprocess recorded its bad rows
    s = tail_split(rows, 0.2)
    assert (len(s.train), len(s.val)) == (4000, 1000)
    tsv_rows, report = open_rows(str(tsv))
    assert len(tsv_rows) == ROWS and report.bad_rows_skipped == 0
    np.testing.assert_array_equal(tsv_rows.gather(np.arange(ROWS)).sparse, rows.gather(np.arange(ROWS)).sparse)
    day_rows, _ = open_rows(str(npy / "day_1_labels.npy"))
    assert len(day_rows) == ROWS - ROWS // 2
    with pytest.raises(DmtError, match=rf"preprocess it once with `dmt preprocess {tsv} --out "):
        open_rows(str(tsv), max_tsv_bytes=1000)


def test_batches_feed_a_training_step(data):
    from dmt.model.flat import ModelConfig, build_flat_model

    cfg = ModelConfig.preset("debug", num_embeddings=tuple(TABLES))
    model = build_flat_model(cfg)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rows = RowSet.from_data(open_preprocessed(data[1]))
    with Prefetcher(iter_rank_batches(rows, batch_size=128, num_embeddings=TABLES, shuffle=Shuffle()), depth=2) as it:
        for batch in it:
            loss, _ = model(batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert torch.isfinite(loss)
