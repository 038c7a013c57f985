"""One training job, as every rank runs it: data -> model -> (shard) -> train -> metrics.json.

Run in one process it trains the unsharded model on the global batch. Run by torchrun on W ranks
it shards the model and each rank takes its slice of every global batch, so both see the same
samples per step.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING

import torch

from dmt.atomic import atomic_write_text
from dmt.data.batching import iter_batches, num_global_batches
from dmt.data.criteo import CriteoArrays, read_criteo
from dmt.distributed.qcomm import CommCompression, codec_stats, lossy_schedules
from dmt.errors import DmtError
from dmt.model.flat import ModelConfig
from dmt.train import checkpoint
from dmt.train.build import TowerSpec, build_model
from dmt.train.loop import LoopConfig, LoopResult, train
from dmt.train.optim import OptimConfig
from dmt.train.run_dir import (
    CLAIMED_ENV,
    claim_run_dir,
    config_dict,
    data_fingerprint,
    read_changed_settings,
    run_fingerprint,
)

if TYPE_CHECKING:
    from dmt.distributed.env import DistEnv


@dataclass(frozen=True, kw_only=True)
class JobConfig:
    data: str
    out: str
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval_fraction: float = 0.2  # the last rows of the data are held out for evaluation
    batch_size: int = 256  # per rank; the global batch is batch_size * world size
    epochs: int = 1
    max_steps: int = 0  # 0: run ``epochs`` full epochs
    eval_every: int = 0
    flat_sharding: str = "table_wise"  # the flat model's tables over all ranks (dmt.choices.FlatSharding)
    seed: int = 0
    towers: TowerSpec | None = None  # None: the flat model; else DMT over these towers
    comm: CommCompression | None = None  # compressed embedding comms (sharded runs only)
    checkpoint_every: int = 0  # steps; 0 disables checkpoints
    resume: bool = False  # continue from the newest complete checkpoint in <out>/checkpoints
    overwrite: bool = False  # replace the run already in <out> (dmt.train.run_dir)
    skip_bad_rows: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.eval_fraction < 1.0:
            raise DmtError(f"eval_fraction={self.eval_fraction} must be strictly between 0 and 1")
        if self.batch_size < 1 or self.epochs < 1 or self.max_steps < 0:
            raise DmtError(f"batch_size={self.batch_size} and epochs={self.epochs} must be >= 1, max_steps >= 0")
        if self.eval_every < 0 or self.checkpoint_every < 0 or self.seed < 0:
            raise DmtError(
                f"eval_every={self.eval_every}, checkpoint_every={self.checkpoint_every} and seed={self.seed} "
                "must be >= 0"
            )
        if not self.out:
            raise DmtError("out is empty; give an output directory")


# Set by `dmt train --max-restarts` for each relaunch: how many times the job was restarted.
RESTARTS_ENV = "DMT_RESTARTS"


def split_train_eval(arrays: CriteoArrays, eval_fraction: float) -> tuple[CriteoArrays, CriteoArrays]:
    """Hold out the last ``eval_fraction`` of rows (the data's own order: later rows are later in time)."""
    cut = round(len(arrays) * (1.0 - eval_fraction))
    return arrays.slice(0, cut), arrays.slice(cut, len(arrays))


def _epoch_batches(arrays: CriteoArrays, cfg: JobConfig, rank: int, world: int, start_step: int = 0):
    """This rank's batches from global step ``start_step`` on: the data order depends only on the seed."""
    per_epoch = num_global_batches(len(arrays), cfg.batch_size, world)
    for epoch in range(start_step // per_epoch, cfg.epochs):
        start = start_step - epoch * per_epoch if epoch == start_step // per_epoch else 0
        yield from iter_batches(
            arrays,
            batch_size=cfg.batch_size,
            num_embeddings=cfg.model.num_embeddings,
            rank=rank,
            world_size=world,
            shuffle=True,
            seed=cfg.seed,
            epoch=epoch,
            start=start,
        )


def run_job(cfg: JobConfig, *, distributed: bool) -> dict:
    """Train the flat or DMT model described by ``cfg``; rank 0 writes ``<out>/metrics.json``. Returns the metrics.

    The run directory is claimed first (locked, checked for another run: ``dmt.train.run_dir``),
    unless the launcher that started this rank holds it already.
    """
    place = _join(distributed)
    with _own_run_dir(cfg, place):
        data = _load_data(cfg, place)
        model, optimizer, counter = _build(cfg, place)
        checkpoints = _Checkpoints(
            os.path.join(cfg.out, "checkpoints"), model, optimizer, _fingerprint(cfg, place.world, data)
        )
        history = checkpoints.restore(cfg.resume, place.is_main)
        resumed_from = history.steps if history else 0  # ``train`` continues ``history`` in place
        start = time.perf_counter()
        result = _train(cfg, place, data, model, optimizer, counter, history, checkpoints)
        wall = time.perf_counter() - start
        metrics = _metrics(cfg, place, data, result, resumed_from, model, counter, wall)
        if place.is_main:
            atomic_write_text(os.path.join(cfg.out, "metrics.json"), json.dumps(metrics, indent=2) + "\n")
    _leave(place)
    return metrics


@contextlib.contextmanager
def _own_run_dir(cfg: JobConfig, place: _Place):
    """Hold ``cfg.out`` for the job: one process claims it, under torchrun rank 0 does (all ranks
    fail alike if it cannot), and ranks of ``dmt train --hosts`` skip it (their launcher holds it)."""
    if os.environ.get(CLAIMED_ENV) == os.path.abspath(cfg.out):
        yield
        return
    if place.env is None:
        with claim_run_dir(cfg, place.world, overwrite=cfg.overwrite):
            yield
        return
    lock, problem = None, None
    if place.is_main:
        try:
            lock = claim_run_dir(cfg, place.world, overwrite=cfg.overwrite)
        except DmtError as e:
            problem = str(e)
    problem = checkpoint.agree(problem)
    if problem:
        raise DmtError(problem)
    try:
        yield
    except BaseException:
        if lock is not None:
            lock.failed = True
        raise
    finally:
        if lock is not None:
            lock.release()


@dataclass(frozen=True)
class _Place:
    """Where this process trains: rank ``rank`` of ``world`` on ``device`` (``env`` None: one process, no group)."""

    rank: int
    world: int
    device: torch.device
    is_main: bool
    env: DistEnv | None


@dataclass(frozen=True)
class _Data:
    """The data split for this job, and how many global steps it trains (epochs, capped by max_steps)."""

    train: CriteoArrays
    eval: CriteoArrays
    steps: int
    bad_rows_skipped: int
    bad_row_examples: list[str]
    source: dict  # dmt.train.run_dir.data_fingerprint of the file


def _join(distributed: bool) -> _Place:
    """Join the torchrun process group (``distributed``), or stand alone as rank 0 of 1 on the CPU."""
    if not distributed:
        return _Place(rank=0, world=1, device=torch.device("cpu"), is_main=True, env=None)
    from dmt.distributed.env import init_distributed  # keeps 1-process start light

    env = init_distributed()
    return _Place(
        rank=env.topology.rank, world=env.topology.world_size, device=env.device, is_main=env.is_main, env=env
    )


def _load_data(cfg: JobConfig, place: _Place) -> _Data:
    """Read the data, hold out the eval rows and count the training steps; fail now (before any
    training) if no global batch fits or the evaluation split is empty."""
    arrays, report = read_criteo(cfg.data, skip_bad_rows=cfg.skip_bad_rows, progress=cfg.progress and place.is_main)
    train_arrays, eval_arrays = split_train_eval(arrays, cfg.eval_fraction)
    steps_per_epoch = num_global_batches(len(train_arrays), cfg.batch_size, place.world)
    if steps_per_epoch == 0:
        raise DmtError(
            f"{len(train_arrays)} training rows cannot fill one global batch of {cfg.batch_size * place.world} "
            f"({cfg.batch_size} per rank x {place.world} ranks); use more data or a smaller --batch-size"
        )
    if len(eval_arrays) == 0:
        raise DmtError(
            f"the evaluation split is empty: --eval-fraction {cfg.eval_fraction:g} of {len(arrays)} rows "
            "holds out no row; raise --eval-fraction or use more data"
        )
    if report.bad_rows_skipped and place.is_main:
        _print_skipped_rows(report.bad_rows_skipped, len(arrays), report.bad_row_examples)
    steps = cfg.epochs * steps_per_epoch
    steps = min(steps, cfg.max_steps) if cfg.max_steps else steps
    return _Data(
        train=train_arrays,
        eval=eval_arrays,
        steps=steps,
        bad_rows_skipped=report.bad_rows_skipped,
        bad_row_examples=list(report.bad_row_examples),
        source=data_fingerprint(cfg.data),
    )


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


def _build(cfg: JobConfig, place: _Place):
    """The model (sharded under torchrun), its optimizer and, under torchrun, the comm byte counter."""
    if cfg.comm is not None and place.env is None:
        raise DmtError(
            "--comm-compression compresses the collectives of a sharded run; "
            "add --hosts/--ranks-per-host (one process has no comms to compress)"
        )
    model, optimizer = build_model(
        cfg.model,
        cfg.optim,
        seed=cfg.seed,
        towers=cfg.towers,
        env=place.env,
        flat_sharding=cfg.flat_sharding,
        comm=cfg.comm,
    )
    counter = _comm_counter(model, place.env) if place.env is not None else None
    return model, optimizer, counter


def _fingerprint(cfg: JobConfig, world: int, data: _Data) -> dict:
    """What a checkpoint must share with this run to be resumed by it (as JSON reads it back)."""
    return {**run_fingerprint(cfg, world, data.source), "train_rows": len(data.train)}


class _Checkpoints:
    """This run's checkpoints under ``root``: restore the newest, save new ones, remember which steps were saved.

    Saves go through the module (``checkpoint.save_checkpoint``), not a name bound at import, so a
    wrapper set on ``dmt.train.checkpoint`` sees every save (tests/_fault_site kills a rank that way).
    """

    def __init__(self, root: str, model, optimizer, fingerprint: dict) -> None:
        self.root, self.model, self.optimizer, self.fingerprint = root, model, optimizer, fingerprint
        self.saved_at: list[int] = []

    def restore(self, resume: bool, is_main: bool) -> LoopResult | None:
        """Load the newest checkpoint if asked to resume; the progress it recorded, or None to start afresh."""
        # A torchrun restart (--max-restarts) is a resume: the previous attempt's checkpoints are ours.
        restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
        if not (resume or restarted):
            return None
        return _resume(self.root, self.model, self.optimizer, self.fingerprint, is_main)

    def save(self, progress: LoopResult) -> None:
        checkpoint.save_checkpoint(
            self.root,
            progress.steps,
            self.model,
            self.optimizer,
            {"fingerprint": self.fingerprint, "progress": asdict(progress)},
        )
        self.saved_at.append(progress.steps)


def _train(
    cfg: JobConfig,
    place: _Place,
    data: _Data,
    model,
    optimizer,
    counter,
    history: LoopResult | None,
    checkpoints: _Checkpoints,
) -> LoopResult:
    """Train from ``history`` (or step 0) to ``data.steps``, checkpointing every ``cfg.checkpoint_every`` steps."""

    def eval_batches():
        return iter_batches(
            data.eval,
            batch_size=cfg.batch_size,
            num_embeddings=cfg.model.num_embeddings,
            rank=place.rank,
            world_size=place.world,
            shuffle=False,
            pad_last=True,  # every row is scored; the padding is masked out (dmt.data.batching)
        )

    first_step = history.steps if history else 0
    if first_step >= data.steps:
        raise DmtError(
            f"the checkpoint at step {first_step} already reaches this run's last step {data.steps} "
            "(--epochs/--max-steps); raise them to train on, or use --overwrite to start over"
        )
    batches = _epoch_batches(data.train, cfg, place.rank, place.world, first_step)
    if cfg.comm is not None and cfg.comm.uses_lossy:
        batches = _driving_codec_schedule(batches, lossy_schedules(model), first_step)
    result = train(
        model,
        optimizer,
        batches,
        eval_batches,
        LoopConfig(steps=data.steps, eval_every=cfg.eval_every, progress=cfg.progress),
        device=place.device,
        is_main=place.is_main,
        history=history,
        checkpoint_every=cfg.checkpoint_every,
        on_checkpoint=checkpoints.save,
        counter=counter,
    )
    if cfg.checkpoint_every and result.steps not in checkpoints.saved_at:  # the data ran out between checkpoints
        checkpoints.save(result)
    return result


def _metrics(
    cfg: JobConfig,
    place: _Place,
    data: _Data,
    result: LoopResult,
    resumed_from: int,
    model,
    counter,
    wall: float,
) -> dict:
    """The content of metrics.json: the final evaluation, throughput, comm bytes, curves and the config.

    Throughput and bytes per sample cover the steps this process trained (``resumed_from`` to
    ``result.steps``): the counter and the clock start with it.
    """
    final = result.evals[-1]
    global_batch = cfg.batch_size * place.world
    return {
        "model": cfg.model.arch if cfg.towers is None else f"dmt({cfg.model.arch})",
        "auc": final["auc"],
        "logloss": final["logloss"],
        "ne": final["ne"],
        "steps": result.steps,
        "world_size": place.world,
        "global_batch": global_batch,
        "samples_per_s": result.steps * global_batch / max(result.train_seconds, 1e-9),
        "wall_seconds": wall,
        "train_rows": len(data.train),
        "eval_rows": final["num_samples"],
        "bad_rows_skipped": data.bad_rows_skipped,
        "bad_row_examples": data.bad_row_examples,
        "resumed_from_step": resumed_from,
        "restarts": int(os.environ.get(RESTARTS_ENV, "0")),
        **_comm_metrics(counter, result.steps - resumed_from, global_batch),
        **({"codecs_rank0": _codec_metrics(model)} if cfg.comm is not None else {}),
        "losses": result.losses,
        "evals": result.evals,
        "config": config_dict(cfg),
    }


def _leave(place: _Place) -> None:
    """Leave the process group together (no-op for one process)."""
    if place.env is None:
        return
    # Leave together and tear the groups down: a rank that exits with live gloo threads can
    # abort in C++ ("terminate called without an active exception", seen once in CI-like runs).
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def _driving_codec_schedule(batches, schedules, first_step: int):
    """Set the lossy codec's iteration before each batch is handed out.

    The pipeline pulls a batch a step or two ahead of the one it computes, so the schedule runs
    up to two steps early -- on every rank alike, which is what the codec needs (its width must
    agree across ranks); over a decay of thousands of steps the lead does not matter.
    """
    for step, batch in enumerate(batches, start=first_step):
        for schedule in schedules:
            schedule.iteration = step
        yield batch


def _codec_metrics(model) -> dict:
    """What each codec of this rank sent: bytes in/out, ratio and (if tracked) the error seen."""
    return {name: {**asdict(stats), "ratio": stats.ratio} for name, stats in codec_stats(model).items()}


def _comm_counter(model, env):
    """Count every collective of the training steps (DDP all-reduces included) for metrics.json."""
    from dmt.perf.comm_counter import CommCounter, register_ddp_counting_hooks

    counter = CommCounter(env.topology)
    register_ddp_counting_hooks(model, counter)
    return counter


def _comm_metrics(counter, steps: int, global_batch: int) -> dict:
    """Bytes per training sample, summed over ranks: cross-host and intra-host, by collective."""
    if counter is None or steps == 0:
        return {"cross_host_bytes_per_sample": 0.0, "intra_host_bytes_per_sample": 0.0}
    from dmt.perf.comm_counter import reduce_summary

    per_sample = reduce_summary(counter.summary()).per_sample(global_batch * steps)
    train = ("forward", "backward")
    total = per_sample.total(phase=train)
    by_op = {
        "/".join(k): {"cross_host": v.cross_host, "intra_host": v.intra_host}
        for k, v in per_sample.grouped("op", "group", "phase").items()
        if k[2] in train
    }
    return {
        "cross_host_bytes_per_sample": total.cross_host,
        "intra_host_bytes_per_sample": total.intra_host,
        "comm_bytes_per_sample": by_op,
    }


def _resume(root: str, model, optimizer, fingerprint: dict, is_main: bool) -> LoopResult | None:
    """Load the newest checkpoint after checking that this run wrote it (fingerprint) and that it is
    intact (checksums: ``checkpoint.load_checkpoint``); the progress it recorded."""
    path = checkpoint.latest_checkpoint(root)
    if path is None:
        if is_main:
            print(f"[dmt] --resume: no checkpoint in {root} yet, starting from step 0")
        return None
    # Check before loading: a different model would fail inside DCP with a far less clear message.
    meta = checkpoint.read_meta(path)
    diff = sorted(k for k in fingerprint if meta["fingerprint"].get(k) != fingerprint[k])
    if diff:
        raise DmtError(
            f"checkpoint {path} was written by a different run (differs in {diff}); resume with "
            "the same data, model, optimizers, seed and global batch, or use --overwrite or a new --out"
        )
    progress = _progress(meta, path)
    checkpoint.load_checkpoint(path, model, optimizer)
    if is_main:
        changed = read_changed_settings(os.path.dirname(root))
        note = f"; settings changed since the last run: {'; '.join(changed)}" if changed else ""
        print(f"[dmt] resumed from {path} at step {meta['step']}{note}", flush=True)
    return progress


def _progress(meta: dict, path) -> LoopResult:
    """The checkpoint's recorded progress as a LoopResult, or a one-line refusal if it is malformed."""
    p = meta["progress"]
    well_formed = (
        set(p) == {f.name for f in fields(LoopResult)}
        and p["steps"] == meta["step"]
        and isinstance(p["losses"], list)
        and isinstance(p["evals"], list)
        and isinstance(p["train_seconds"], int | float)
    )
    if not well_formed:
        raise checkpoint.CheckpointError(
            f"checkpoint {path}: meta.json's progress is malformed; delete {path} to resume from the "
            "previous checkpoint, or start over with --overwrite"
        )
    return LoopResult(**p)
