"""Criteo-format data: a vectorised TSV reader, a synthetic generator with planted groups, and
random batches (benchmarks, tests)."""

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
from dmt.data.random_batches import random_batch
from dmt.data.synthetic import SyntheticSpec, generate_criteo

__all__ = [
    "DENSE_NAMES",
    "NUM_DENSE",
    "NUM_SPARSE",
    "SPARSE_NAMES",
    "CriteoArrays",
    "ReadReport",
    "SyntheticSpec",
    "generate_criteo",
    "iter_batches",
    "iter_criteo_chunks",
    "num_global_batches",
    "random_batch",
    "read_criteo",
]
