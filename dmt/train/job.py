"""One training job, as every rank runs it: data -> model -> (shard) -> train -> metrics.json.

Run in one process it trains the unsharded model on the global batch. Run by torchrun on W ranks
it shards the model and each rank takes its slice of every global batch, so both see the same
samples per step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING

import torch

from dmt.atomic import atomic_write_text
from dmt.data.criteo import CriteoArrays
from dmt.data.multi_hot import METHODS as MULTI_HOT_METHODS
from dmt.data.prefetch import Prefetcher
from dmt.distributed.qcomm import CommCompression, codec_stats, lossy_schedules
from dmt.errors import DmtError
from dmt.model.flat import ModelConfig
from dmt.train import checkpoint
from dmt.train.build import TowerSpec, build_model, resolve_table_init
from dmt.train.data import SPLIT_CHOICES, JobData, eval_batches, load_job_data, train_stream
from dmt.train.loop import LoopConfig, LoopResult, train
from dmt.train.optim import OptimConfig
from dmt.train.run_dir import (
    CLAIMED_ENV,
    claim_run_dir,
    config_dict,
    read_changed_settings,
    run_fingerprint,
)
from dmt.train.stage_clock import StageClock

if TYPE_CHECKING:
    from dmt.distributed.env import DistEnv


@dataclass(frozen=True, kw_only=True)
class JobConfig:
    data: str
    out: str
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval_fraction: float = 0.2  # split "tail": the last rows of the data are held out for evaluation
    eval_data: str | None = None  # evaluate on this input (file, day or directory) instead of a split
    split: str = "tail"  # how ``data`` is cut into train / evaluation: dmt.train.data.SPLIT_CHOICES
    multi_hot_method: str = "hash"  # models with multi_hot_sizes: dmt.data.MultiHot's method
    batch_size: int = 256  # per rank; the global batch is batch_size * world size
    epochs: int = 1
    max_steps: int = 0  # 0: run ``epochs`` full epochs
    eval_every: int = 0  # steps between evaluations, besides every epoch end and the last step
    early_stop: int = 0  # stop after this many evaluations without a better AUC; 0: never
    flat_sharding: str = "table_wise"  # the flat model's tables over all ranks (dmt.choices.FlatSharding)
    seed: int = 0
    towers: TowerSpec | None = None  # None: the flat model; else DMT over these towers
    comm: CommCompression | None = None  # compressed embedding comms (sharded runs only)
    checkpoint_every: int = 0  # steps; 0 disables checkpoints
    resume: bool = False  # continue from the newest complete checkpoint in <out>/checkpoints
    overwrite: bool = False  # replace the run already in <out> (dmt.train.run_dir)
    skip_bad_rows: bool = False
    progress: bool = True
    data_workers: int | str = "auto"  # threads building the next batches (Prefetcher); "auto": 1, more when behind
    prefetch: int = 4  # batches built ahead of the step
    table_init: str = "auto"  # a sharded model's first tables (dmt.train.build.TABLE_INITS)
    profile: str | None = None  # directory: torch.profiler of a few steady-state steps (loop.profile_window)

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
        if self.profile and os.path.exists(self.profile) and not os.path.isdir(self.profile):
            raise DmtError(f"--profile {self.profile} exists and is not a directory; name a directory")
        self._check_data_options()
        resolve_table_init(self.table_init, self.model)  # a bad choice fails here, before any rank starts

    def _check_data_options(self) -> None:
        if self.split not in SPLIT_CHOICES:
            raise DmtError(f"split={self.split!r} is not one of {list(SPLIT_CHOICES)}")
        if self.eval_data and self.split != "tail":
            raise DmtError(f"--eval-data and --split {self.split} both say what to evaluate on; give one of them")
        if self.multi_hot_method not in MULTI_HOT_METHODS:
            raise DmtError(f"multi_hot_method={self.multi_hot_method!r} is not one of {list(MULTI_HOT_METHODS)}")
        workers_ok = self.data_workers == "auto" or (isinstance(self.data_workers, int) and self.data_workers >= 1)
        if min(self.early_stop, self.prefetch - 1) < 0 or not workers_ok:
            raise DmtError(
                f"early_stop={self.early_stop} must be >= 0, data_workers={self.data_workers!r} 'auto' or >= 1 "
                f"and prefetch={self.prefetch} >= 1"
            )


# Set by `dmt train --max-restarts` for each relaunch: how many times the job was restarted.
RESTARTS_ENV = "DMT_RESTARTS"


def split_train_eval(arrays: CriteoArrays, eval_fraction: float) -> tuple[CriteoArrays, CriteoArrays]:
    """Hold out the last ``eval_fraction`` of rows (the data's own order: later rows are later in time)."""
    cut = round(len(arrays) * (1.0 - eval_fraction))
    return arrays.slice(0, cut), arrays.slice(cut, len(arrays))


def run_job(cfg: JobConfig, *, distributed: bool) -> dict:
    """Train the flat or DMT model described by ``cfg``; rank 0 writes ``<out>/metrics.json``. Returns the metrics.

    The run directory is claimed first (locked, checked for another run: ``dmt.train.run_dir``),
    unless the launcher that started this rank holds it already.
    """
    clock = StageClock()
    place = _join(distributed)
    with _own_run_dir(cfg, place):
        data = clock.stage("data", lambda: load_job_data(cfg, world=place.world, is_main=place.is_main))
        model, optimizer, counter = clock.stage("build", lambda: _build(cfg, place))
        checkpoints = _Checkpoints(
            os.path.join(cfg.out, "checkpoints"), model, optimizer, _fingerprint(cfg, place.world, data)
        )
        history = clock.stage("restore", lambda: checkpoints.restore(cfg.resume, place.is_main))
        # ``train`` continues ``history`` in place: keep what it held before for this run's own numbers.
        before = dataclasses.replace(history) if history else LoopResult()
        start = time.perf_counter()
        result, data_workers = _train(cfg, place, data, model, optimizer, counter, history, checkpoints)
        wall = time.perf_counter() - start
        metrics = _metrics(cfg, place, data, result, before, model, counter, wall)
        metrics["data_workers"] = data_workers  # rank 0's building threads at the end (grown under "auto")
        metrics["table_init"] = resolve_table_init(cfg.table_init, cfg.model)  # "auto" decided
        metrics["stage_seconds"] = clock.report(result, before=before)
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


def _join(distributed: bool) -> _Place:
    """Join the torchrun process group (``distributed``), or stand alone as rank 0 of 1 on the CPU."""
    if not distributed:
        return _Place(rank=0, world=1, device=torch.device("cpu"), is_main=True, env=None)
    from dmt.distributed.env import init_distributed  # keeps 1-process start light

    env = init_distributed()
    return _Place(
        rank=env.topology.rank, world=env.topology.world_size, device=env.device, is_main=env.is_main, env=env
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
        table_init=cfg.table_init,
    )
    counter = _comm_counter(model, place.env) if place.env is not None else None
    return model, optimizer, counter


def _fingerprint(cfg: JobConfig, world: int, data: JobData) -> dict:
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
    data: JobData,
    model,
    optimizer,
    counter,
    history: LoopResult | None,
    checkpoints: _Checkpoints,
) -> tuple[LoopResult, int]:
    """Train from ``history`` (or step 0) to ``data.steps``, checkpointing every ``cfg.checkpoint_every`` steps.

    Returns the result and how many threads were building the training batches at the end.
    """

    def evaluation():
        # Every row is scored: the last batch is padded and the padding masked out (PAD_LABEL).
        return iter(Prefetcher(eval_batches(data, cfg, rank=place.rank, world=place.world), **_prefetch(cfg)))

    first_step = history.steps if history else 0
    if first_step >= data.steps:
        raise DmtError(
            f"the checkpoint at step {first_step} already reaches this run's last step {data.steps} "
            "(--epochs/--max-steps); raise them to train on, or use --overwrite to start over"
        )
    stream = train_stream(data, cfg, rank=place.rank, world=place.world, start_step=first_step)
    loop = LoopConfig(
        steps=data.steps,
        eval_every=cfg.eval_every,
        steps_per_epoch=data.steps_per_epoch,
        early_stop=cfg.early_stop,
        progress=cfg.progress,
    )
    with Prefetcher(stream, **_prefetch(cfg)) as prefetched:
        batches = iter(prefetched)
        if cfg.comm is not None and cfg.comm.uses_lossy:
            batches = _driving_codec_schedule(batches, lossy_schedules(model), first_step)
        result = train(
            model,
            optimizer,
            batches,
            evaluation,
            loop,
            device=place.device,
            is_main=place.is_main,
            history=history,
            checkpoint_every=cfg.checkpoint_every,
            on_checkpoint=checkpoints.save,
            counter=counter,
            profile=cfg.profile,
        )
    if cfg.checkpoint_every and result.steps not in checkpoints.saved_at:  # the data ran out between checkpoints
        checkpoints.save(result)
    return result, prefetched.workers


def _metrics(
    cfg: JobConfig,
    place: _Place,
    data: JobData,
    result: LoopResult,
    before: LoopResult,
    model,
    counter,
    wall: float,
) -> dict:
    """The content of metrics.json: the final evaluation, throughput, comm bytes, curves and the config.

    Bytes per sample come from the steps this process counted (``dmt.train.loop.count_window``:
    20 steady-state steps, or all of a short run); throughput from all the run's training steps
    and their seconds (a resumed run carries the earlier ones in ``before``).
    """
    final, best = result.evals[-1], result.best_eval()
    global_batch = cfg.batch_size * place.world
    return {
        "model": cfg.model.arch if cfg.towers is None else f"dmt({cfg.model.arch})",
        "auc": final["auc"],
        "logloss": final["logloss"],
        "ne": final["ne"],
        "best": {k: best[k] for k in ("step", "auc", "logloss", "ne")},
        "stopped_early": result.stopped_early,
        "steps": result.steps,
        "steps_per_epoch": data.steps_per_epoch,
        "world_size": place.world,
        "global_batch": global_batch,
        "samples_per_s": (result.steps - result.profiled_steps) * global_batch / max(result.train_seconds, 1e-9),
        "wall_seconds": wall,
        "train_rows": len(data.train),
        "eval_rows": final["num_samples"],
        "data": {"train": data.train.name, "eval": data.eval.name, "memory_mapped": not data.in_memory},
        "bad_rows_skipped": data.bad_rows_skipped,
        "bad_row_examples": data.bad_row_examples,
        "resumed_from_step": before.steps,
        "comm_counted_steps": result.counted_steps - before.counted_steps,
        "profiled_steps": result.profiled_steps - before.profiled_steps,
        "restarts": int(os.environ.get(RESTARTS_ENV, "0")),
        **_comm_metrics(counter, result.counted_steps - before.counted_steps, global_batch),
        **({"codecs_rank0": _codec_metrics(model)} if cfg.comm is not None else {}),
        "losses": result.losses,
        "evals": result.evals,
        "config": config_dict(cfg),
    }


def _prefetch(cfg: JobConfig) -> dict:
    """How far ahead, and on how many threads, the next batches are built (``dmt.data.Prefetcher``).

    "auto" starts one thread per rank and adds threads while the step outruns them, up to 4 and
    the host's CPUs over its ranks (emulated hosts on one machine share them further): more
    threads than needed slow a launch-bound step (the GIL).
    """
    if cfg.data_workers != "auto":
        return {"depth": cfg.prefetch, "workers": cfg.data_workers}
    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    share = len(os.sched_getaffinity(0)) // max(ranks_here, 1)
    return {"depth": cfg.prefetch, "workers": 1, "max_workers": max(1, min(4, share))}


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
    # Checkpoints written before a field existed lack it; the field's default stands in.
    well_formed = (
        {"steps", "losses", "evals", "train_seconds"} <= set(p) <= {f.name for f in fields(LoopResult)}
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
