"""Train / validation / test splits of Criteo the way the field cuts them, and opening ``--data`` paths.

- ``terabyte``: Criteo 1TB, as torchrec_dlrm and MLPerf DLRM-DCNv2 use it: days 0-22 train; day 23
  is cut in two halves, the first ``ceil(n/2)`` rows validation, the rest test (torchrec's
  ``InMemoryBinaryCriteoIterDataPipe`` stages "val" / "test").
- ``kaggle``: Criteo Kaggle ``train.txt`` (45,840,617 rows, no labelled test set) in 7 "days" of
  ``N // 7`` rows (the last takes the remainder): days 0-5 train (39,291,954 rows), day 6 halved
  into validation and test as above. torchrec's own tools write ``train.txt`` as one file; this
  7-day cut is how torchrec-based Kaggle pipelines (ColossalAI's torchrec recsys example,
  ``KAGGLE_TOTAL_TRAINING_SAMPLES = 39291954``) and facebookresearch/dlrm's Kaggle loader split it.
- ``tail``: the last fraction of the rows (``--eval-fraction``; what ``dmt train`` did so far).
- an evaluation path (``--eval-data``): another preprocessed directory, day file or TSV.

Example:
    >>> import tempfile
    >>> import numpy as np
    >>> from dmt.data.npy_layout import write_day, open_preprocessed
    >>> d = tempfile.mkdtemp()
    >>> write_day(d, "day_0", np.zeros((70, 13)), np.zeros((70, 26)), np.zeros((70, 1)))
    >>> s = named_split(open_preprocessed(d), "kaggle")
    >>> len(s.train), len(s.val), len(s.test)
    (60, 5, 5)
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

from dmt.data.criteo import ReadReport, read_criteo
from dmt.data.npy_layout import Preprocessed, open_preprocessed
from dmt.data.npy_source import RowSet
from dmt.errors import DataFormatError, DmtError

SPLITS = ("kaggle", "terabyte")
KAGGLE_DAYS = 7
TERABYTE_LAST_DAY = 23
# Past this much TSV text, reading it whole on every rank costs more than preprocessing it once
# (measured: ~450 B of RAM per row per rank, 407k rows/s): 1 GiB is ~4.6M rows, ~2 GB per rank.
MAX_TSV_BYTES = 1 << 30


@dataclass(frozen=True)
class Splits:
    """The rows to train on, to evaluate on during training, and (when the convention has one) to test on."""

    train: RowSet
    val: RowSet
    test: RowSet | None = None


def named_split(data: Preprocessed, name: str) -> Splits:
    """The ``kaggle`` or ``terabyte`` split of a preprocessed dataset.

    Raises:
        DmtError: an unknown name, or data that does not fit the convention (no day 23 for
            ``terabyte``; fewer than 7 rows for ``kaggle``).
    """
    if name == "terabyte":
        return terabyte_split(data)
    if name == "kaggle":
        # torchrec's Kaggle tools also write Kaggle's unlabelled test.txt as "test": not ours to train on.
        labelled = tuple(d for d in data.days if d.name != "test")
        return kaggle_split(RowSet.from_data(Preprocessed(data.root, labelled, data.manifest), "train.txt"))
    raise DmtError(f"unknown split {name!r}; choose one of {SPLITS}, or give --eval-data")


def _halves(rows: RowSet, name: str) -> tuple[RowSet, RowSet]:
    """First ``ceil(n/2)`` rows (validation) and the rest (test), as torchrec cuts the last day."""
    half = (len(rows) + 1) // 2
    return rows.slice(0, half, f"{name} (validation half)"), rows.slice(half, len(rows), f"{name} (test half)")


def terabyte_split(data: Preprocessed) -> Splits:
    """Days 0-22 train; day 23's first half validates, its second half tests (see the module docstring)."""
    by_number = {d.number: d for d in data.days if d.number is not None}
    last = by_number.get(TERABYTE_LAST_DAY)
    if last is None:
        raise DmtError(
            f"the terabyte split needs day_{TERABYTE_LAST_DAY} (validation and test); {data.root} holds "
            f"{[d.name for d in data.days]}; preprocess day_{TERABYTE_LAST_DAY} too, or give --eval-data"
        )
    train_days = [d for d in data.days if d is not last]
    if not train_days:
        raise DmtError(f"the terabyte split trains on days 0-22; {data.root} holds only day_{TERABYTE_LAST_DAY}")
    missing = sorted(set(range(TERABYTE_LAST_DAY)) - set(by_number))
    if missing:
        warnings.warn(
            f"terabyte split: days {missing} are not in {data.root}; training on the other {len(train_days)} days",
            stacklevel=2,
        )
    train = RowSet(RowSet.from_data(Preprocessed(data.root, tuple(train_days), data.manifest)).segments, "days 0-22")
    val, test = _halves(RowSet.from_data(Preprocessed(data.root, (last,), data.manifest)), f"day_{TERABYTE_LAST_DAY}")
    return Splits(train=train, val=val, test=test)


def kaggle_split(rows: RowSet) -> Splits:
    """Rows in 7 days of ``N // 7``: days 0-5 train; day 6 halved into validation and test."""
    day = len(rows) // KAGGLE_DAYS
    if day == 0:
        raise DmtError(f"the kaggle split cuts the rows into {KAGGLE_DAYS} days; {len(rows)} rows are too few")
    cut = day * (KAGGLE_DAYS - 1)
    val, test = _halves(rows.slice(cut, len(rows)), f"day {KAGGLE_DAYS - 1}")
    return Splits(train=rows.slice(0, cut, f"days 0-{KAGGLE_DAYS - 2}"), val=val, test=test)


def tail_split(rows: RowSet, eval_fraction: float) -> Splits:
    """Hold out the last ``eval_fraction`` of the rows (later rows are later in time)."""
    if not 0.0 < eval_fraction < 1.0:
        raise DmtError(f"eval_fraction={eval_fraction} must be strictly between 0 and 1")
    cut = round(len(rows) * (1.0 - eval_fraction))
    return Splits(train=rows.slice(0, cut, "train"), val=rows.slice(cut, len(rows), "held-out tail"))


def is_preprocessed(path: str) -> bool:
    """A preprocessed directory or ``.npy`` day file (else: TSV)."""
    return os.path.isdir(path) or path.endswith(".npy")


def open_rows(
    path: str, *, skip_bad_rows: bool = False, max_tsv_bytes: int = MAX_TSV_BYTES, progress: bool = False
) -> tuple[RowSet, ReadReport | None]:
    """Rows of ``path``: a preprocessed directory or day file (memory-mapped), or a small TSV (read).

    Returns:
        The rows and, for a TSV, the read's report (malformed rows skipped, examples); None for
        preprocessed data (``dmt preprocess`` recorded its own in the manifest).

    Raises:
        DataFormatError: bad data (see ``open_preprocessed`` and ``read_criteo``).
        DmtError: a TSV larger than ``max_tsv_bytes``: it says to preprocess it first.
    """
    if is_preprocessed(path):
        data = open_preprocessed(path)
        return RowSet.from_data(data, os.path.basename(os.path.normpath(path))), None
    check_tsv_size(path, max_tsv_bytes)
    arrays, report = read_criteo(path, skip_bad_rows=skip_bad_rows, progress=progress)
    return RowSet.from_arrays(arrays, os.path.basename(path)), report


def check_tsv_size(path: str, max_tsv_bytes: int = MAX_TSV_BYTES) -> None:
    """Refuse a TSV too large to read whole on every rank, with the command that fixes it."""
    try:
        size = os.path.getsize(path)
    except OSError:
        raise DataFormatError(f"{path}: no such file") from None
    text = size * 4 if path.endswith(".gz") else size  # Criteo text gzips about 4:1
    if text > max_tsv_bytes:
        stem = os.path.splitext(path[:-3] if path.endswith(".gz") else path)[0]
        raise DmtError(
            f"{path} is {text / 1e9:.1f} GB of TSV: every rank would parse all of it and hold it in RAM; "
            f"preprocess it once with `dmt preprocess {path} --out {stem}_npy` and train with --data {stem}_npy"
        )
