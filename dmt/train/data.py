"""The job's data stage: open the rows, cut the splits, and hand each rank its batches.

One path for every input. A small TSV is read into memory; a preprocessed directory or day file
(``dmt preprocess``) is memory-mapped, so a rank's RSS does not grow with the dataset. Either way
the rows become a ``dmt.data.RowSet`` and every rank builds only its slice of each global batch
(``dmt.data.RankBatches``), in an order that depends on the seed and epoch, never on the world size.

Shuffling: rows held in memory are shuffled uniformly (one window over the whole split, blocks
of one row: a full permutation, as the TSV path always did). Memory-mapped rows use the block +
window shuffle of ``dmt.data.npy_source`` (what it costs in AUC: benchmarks/results/data_scale).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass

from torchrec.datasets.utils import Batch

from dmt.data.multi_hot import MultiHot
from dmt.data.npy_layout import open_preprocessed
from dmt.data.npy_source import RankBatches, RowSet, Shuffle, num_rank_batches
from dmt.data.splits import is_preprocessed, kaggle_split, named_split, open_rows, tail_split
from dmt.errors import DmtError
from dmt.train.run_dir import data_fingerprint

SPLIT_CHOICES = ("tail", "kaggle", "terabyte")


@dataclass(frozen=True)
class JobData:
    """The rows this job trains and evaluates on, and how many global steps it trains.

    Attributes:
        train: the training rows.
        eval: the rows every evaluation scores (all of them, the last batch padded).
        steps: global steps of the run (epochs x steps per epoch, capped by max_steps).
        steps_per_epoch: whole global batches in one pass over ``train``.
        in_memory: the rows were read from TSV (full shuffle) rather than memory-mapped.
        bad_rows_skipped / bad_row_examples: what ``--skip-bad-rows`` dropped (TSV input).
        source: the fingerprint a resumed run must match (``dmt.train.run_dir.data_fingerprint``).
    """

    train: RowSet
    eval: RowSet
    steps: int
    steps_per_epoch: int
    in_memory: bool
    bad_rows_skipped: int
    bad_row_examples: list[str]
    source: dict


def load_job_data(cfg, *, world: int, is_main: bool) -> JobData:
    """Open ``cfg.data`` (and ``cfg.eval_data``), cut the split and count the steps.

    Fails now, before any model is built, if no global batch fits or the evaluation set is empty.
    """
    rows, skipped, examples = _open(cfg.data, cfg, is_main)
    if cfg.eval_data:
        eval_rows, eval_skipped, eval_examples = _open(cfg.eval_data, cfg, is_main)
        train_rows, skipped, examples = rows, skipped + eval_skipped, examples + eval_examples
    else:
        train_rows, eval_rows = _split(cfg, rows)
    per_epoch = num_rank_batches(len(train_rows), cfg.batch_size, world)
    if per_epoch == 0:
        raise DmtError(
            f"{len(train_rows)} training rows ({train_rows.name}) cannot fill one global batch of "
            f"{cfg.batch_size * world} ({cfg.batch_size} per rank x {world} ranks); use more data or a "
            "smaller --batch-size"
        )
    if len(eval_rows) == 0:
        raise DmtError(
            f"the evaluation split is empty ({eval_rows.name} of {len(rows)} rows); raise --eval-fraction, "
            "use more data or give --eval-data"
        )
    if skipped and is_main:
        _print_skipped_rows(skipped, len(rows), examples)
    steps = cfg.epochs * per_epoch
    return JobData(
        train=train_rows,
        eval=eval_rows,
        steps=min(steps, cfg.max_steps) if cfg.max_steps else steps,
        steps_per_epoch=per_epoch,
        in_memory=not is_preprocessed(cfg.data),
        bad_rows_skipped=skipped,
        bad_row_examples=examples,
        source=_fingerprint(cfg),
    )


def _open(path: str, cfg, is_main: bool) -> tuple[RowSet, int, list[str]]:
    if not os.path.exists(path):
        raise DmtError(f"{path}: no such file or directory; give a Criteo TSV or a `dmt preprocess` output")
    rows, report = open_rows(path, skip_bad_rows=cfg.skip_bad_rows, progress=cfg.progress and is_main)
    if report is None:
        return rows, 0, []
    return rows, report.bad_rows_skipped, list(report.bad_row_examples)


def _split(cfg, rows: RowSet) -> tuple[RowSet, RowSet]:
    """Train and evaluation rows of one input by ``cfg.split`` (the validation half for the named ones).

    Preprocessed days go through ``dmt.data.named_split``, the one place that knows both conventions
    (the kaggle split leaves out the unlabelled "test" day torchrec's tools write); a TSV can only
    be cut the Kaggle way, by rows.
    """
    if cfg.split == "tail":
        s = tail_split(rows, cfg.eval_fraction)
    elif is_preprocessed(cfg.data):
        s = named_split(open_preprocessed(cfg.data), cfg.split)
    elif cfg.split == "terabyte":
        raise DmtError("--split terabyte needs preprocessed days (day_0 .. day_23): run `dmt preprocess` first")
    else:
        s = kaggle_split(rows)
    return s.train, s.val


def train_stream(data: JobData, cfg, *, rank: int, world: int, start_step: int = 0) -> _EpochStream:
    """This rank's training batches from global step ``start_step`` to ``data.steps``, over epochs."""
    return _EpochStream(data, cfg, rank=rank, world=world, start_step=start_step)


def eval_batches(data: JobData, cfg, *, rank: int, world: int) -> RankBatches:
    """This rank's share of the whole evaluation set, in order, the last batch padded."""
    return RankBatches(
        data.eval,
        batch_size=cfg.batch_size,
        num_embeddings=cfg.model.num_embeddings,
        rank=rank,
        world_size=world,
        pad_last=True,
        transform=_transform(cfg),
    )


class _EpochStream:
    """Global steps ``[start_step, data.steps)`` of this rank across epochs, buildable in any order.

    ``build(step)`` and ``steps`` let ``dmt.data.Prefetcher`` build several steps at once on
    threads; each epoch's ``RankBatches`` (its shuffled order) is made once, when first needed.
    """

    def __init__(self, data: JobData, cfg, *, rank: int, world: int, start_step: int) -> None:
        self._data, self._cfg, self._rank, self._world = data, cfg, rank, world
        self.steps = range(start_step, data.steps)
        self._epochs: dict[int, RankBatches] = {}
        rows = len(data.train)
        self._shuffle = (
            Shuffle(seed=cfg.seed, block_rows=1, window_rows=max(rows, 1)) if data.in_memory else Shuffle(seed=cfg.seed)
        )

    def __iter__(self) -> Iterator[Batch]:
        for step in self.steps:
            yield self.build(step)

    def build(self, step: int) -> Batch:
        epoch, within = divmod(step, self._data.steps_per_epoch)
        batches = self._epochs.get(epoch)
        if batches is None:
            batches = RankBatches(
                self._data.train,
                batch_size=self._cfg.batch_size,
                num_embeddings=self._cfg.model.num_embeddings,
                rank=self._rank,
                world_size=self._world,
                shuffle=self._shuffle,
                epoch=epoch,
                transform=_transform(self._cfg),
            )
            # Builders run at most a few steps apart: keep this epoch and the one before.
            self._epochs = {e: b for e, b in self._epochs.items() if e >= epoch - 1} | {epoch: batches}
        return batches.build(within)


def _transform(cfg):
    """MLPerf's multi-hot inputs for models that ask for them (``ModelConfig.multi_hot_sizes``)."""
    sizes = cfg.model.multi_hot_sizes
    if not sizes:
        return None
    return MultiHot(sizes=sizes, num_embeddings=cfg.model.num_embeddings, method=cfg.multi_hot_method).expand


def _fingerprint(cfg) -> dict:
    """The data a checkpoint was trained on: the training input and, if given, the evaluation input."""
    source = data_fingerprint(cfg.data)
    if cfg.eval_data:
        other = data_fingerprint(cfg.eval_data)
        source = {**source, "sample_sha256": source["sample_sha256"] + ":" + other["sample_sha256"]}
    return source


def _print_skipped_rows(skipped: int, kept: int, examples: list[str]) -> None:
    """Say how many rows --skip-bad-rows dropped, and a few of them: a third of the data gone is news."""
    share = skipped / (skipped + kept)
    shown = "; ".join(examples[:3])
    print(
        f"[dmt] --skip-bad-rows: skipped {skipped:,} malformed rows of {skipped + kept:,} ({share:.1%})"
        + (f", e.g. {shown}" if shown else ""),
        file=sys.stderr,
        flush=True,
    )
