"""Criteo-format data: a vectorised TSV reader, a synthetic generator with planted groups, random
batches (benchmarks, tests), and the preprocessed (per-day ``.npy``) path: ``preprocess_criteo``,
memory-mapped batches per rank (``iter_rank_batches``), the field's splits and MLPerf's multi-hot."""

from dmt.data.batching import iter_batches, num_global_batches
from dmt.data.criteo import (
    DENSE_NAMES,
    NUM_DENSE,
    NUM_SPARSE,
    SPARSE_NAMES,
    CriteoArrays,
    ReadReport,
    iter_criteo_chunks,
    read_criteo,
)
from dmt.data.multi_hot import MLPERF_MULTI_HOT_SIZES, MultiHot
from dmt.data.npy_layout import Preprocessed, open_preprocessed
from dmt.data.npy_source import RankBatches, RowSet, Shuffle, iter_rank_batches, num_rank_batches
from dmt.data.prefetch import Prefetcher
from dmt.data.preprocess import PreprocessConfig, PreprocessReport, preprocess_criteo
from dmt.data.random_batches import random_batch
from dmt.data.splits import (
    SPLITS,
    Splits,
    check_tsv_size,
    kaggle_split,
    named_split,
    open_rows,
    tail_split,
    terabyte_split,
)
from dmt.data.synthetic import SyntheticSpec, generate_criteo

__all__ = [
    "DENSE_NAMES",
    "MLPERF_MULTI_HOT_SIZES",
    "NUM_DENSE",
    "NUM_SPARSE",
    "SPARSE_NAMES",
    "SPLITS",
    "CriteoArrays",
    "MultiHot",
    "Prefetcher",
    "PreprocessConfig",
    "PreprocessReport",
    "Preprocessed",
    "RankBatches",
    "ReadReport",
    "RowSet",
    "Shuffle",
    "Splits",
    "SyntheticSpec",
    "check_tsv_size",
    "generate_criteo",
    "iter_batches",
    "iter_criteo_chunks",
    "iter_rank_batches",
    "kaggle_split",
    "named_split",
    "num_global_batches",
    "num_rank_batches",
    "open_preprocessed",
    "open_rows",
    "preprocess_criteo",
    "random_batch",
    "read_criteo",
    "tail_split",
    "terabyte_split",
]
