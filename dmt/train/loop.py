"""The training loop shared by every model: flat or DMT, one process or many.

Sharded models run through torchrec's TrainPipelineSparseDist, which overlaps the next batch's
input all-to-all with the current forward/backward. Unsharded models in one process have nothing
to overlap and use a plain step with the same contract. Training proceeds in phases that end at
an evaluation (every ``eval_every`` steps, every epoch end, the last step) or a checkpoint; each
phase drains the pipeline. Only the loss of each training step is kept (no logits), so a phase of
a whole epoch costs no memory per step beyond one scalar.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torchrec.datasets.utils import Batch
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from tqdm import tqdm

from dmt.data.batching import PAD_LABEL
from dmt.errors import DmtError
from dmt.perf.comm_counter import CommCounter
from dmt.perf.profiling import PROFILE_STEPS, profiled
from dmt.train.metrics import binary_metrics


@dataclass(frozen=True, kw_only=True)
class LoopConfig:
    steps: int  # optimizer steps to run (each on one global batch)
    eval_every: int = 0  # steps between evaluations; 0: only at epoch ends and the end
    steps_per_epoch: int = 0  # also evaluate at the end of every epoch; 0: no epochs to mark
    early_stop: int = 0  # stop after this many evaluations without a better AUC; 0: never
    progress: bool = True  # tqdm bar on rank 0

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise DmtError(f"steps={self.steps} must be >= 1")
        if min(self.eval_every, self.steps_per_epoch, self.early_stop) < 0:
            raise DmtError(
                f"eval_every={self.eval_every}, steps_per_epoch={self.steps_per_epoch} and "
                f"early_stop={self.early_stop} must be >= 0"
            )

    def next_eval(self, step: int) -> int:
        """The first step after ``step`` that ends with an evaluation."""
        return min(
            _next_boundary(step, self.eval_every, self.steps), _next_boundary(step, self.steps_per_epoch, self.steps)
        )


@dataclass
class LoopResult:
    losses: list[float] = field(default_factory=list)  # mean loss over the global batch, per step
    evals: list[dict] = field(default_factory=list)  # {"step": s, "auc":..., "logloss":..., "ne":...}
    steps: int = 0
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    counted_steps: int = 0  # training steps whose collectives the counter saw (count_window)
    profiled_steps: int = 0  # training steps run under the profiler (profile_window): in profile_seconds
    profile_seconds: float = 0.0
    stopped_early: bool = False  # early stop: the evaluation AUC stopped improving

    def best_eval(self) -> dict | None:
        """The evaluation with the highest AUC (the earliest of equals)."""
        return max(self.evals, key=lambda e: e["auc"], default=None)

    def stalled(self, patience: int) -> bool:
        """The last ``patience`` evaluations did not beat the best one before them."""
        if not patience or len(self.evals) <= patience:
            return False
        before = max(e["auc"] for e in self.evals[:-patience])
        return max(e["auc"] for e in self.evals[-patience:]) <= before


class _PlainPipeline:
    """One process, no sharding: forward, backward, step (TrainPipelineSparseDist's contract)."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self._model, self._optimizer = model, optimizer

    def progress(self, batches: Iterator[Batch]) -> tuple:
        batch = next(batches)  # StopIteration ends the phase, as in torchrec's pipelines
        if self._model.training:
            self._optimizer.zero_grad()
        loss, output = self._model(batch)
        if self._model.training:
            loss.backward()
            self._optimizer.step()
        return output


def _world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def _comm_device() -> torch.device:
    """Where the bookkeeping collectives' tensors must live: NCCL only moves CUDA tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _gather_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """Every rank's CPU tensor (same shape on all ranks), concatenated in rank order, on the CPU."""
    if _world() == 1:
        return x
    x = x.to(_comm_device())
    parts = [torch.empty_like(x) for _ in range(_world())]
    dist.all_gather(parts, x)
    return torch.cat(parts).cpu()


def _run_phase(pipeline, batches: Iterator[Batch], keep: Callable[[tuple], object] = lambda o: o) -> list:
    """Step until ``batches`` ends; ``keep(output)`` of every step (training keeps the loss only,
    so a phase of a whole epoch holds no logits)."""
    kept = []
    while True:
        try:
            kept.append(keep(pipeline.progress(batches)))
        except StopIteration:
            return kept


def evaluate(pipeline, model: torch.nn.Module, batches: Iterator[Batch]) -> dict:
    """AUC / log loss / NE over every rank's evaluation batches, padding rows (``PAD_LABEL``) left out."""
    model.eval()
    with torch.no_grad():
        outputs = _run_phase(pipeline, batches)
    model.train()
    if not outputs:
        raise DmtError("no evaluation batches: the evaluation split is empty; raise --eval-fraction")
    logits = _gather_over_ranks(torch.cat([o[1].reshape(-1) for o in outputs]).float().cpu())
    labels = _gather_over_ranks(torch.cat([o[2].reshape(-1) for o in outputs]).float().cpu())
    scored = labels != PAD_LABEL  # the padding of the last batch (iter_batches(pad_last=True))
    return binary_metrics(logits[scored], labels[scored])


# Bytes are counted on a window of steps, not on every step: counting patches torch.distributed's
# Python collectives for its duration (dmt.perf.comm_counter), work the hot path need not do once
# the shapes are known. Steady state starts after the pipeline filled and caches warmed.
COUNT_AFTER, COUNT_STEPS = 5, 20


def count_window(first_step: int, last_step: int) -> range:
    """The training steps whose collectives are counted: 20 steps after 5 of warm-up, or all of a short run."""
    if last_step - first_step <= COUNT_AFTER + COUNT_STEPS:
        return range(first_step, last_step)
    return range(first_step + COUNT_AFTER, first_step + COUNT_AFTER + COUNT_STEPS)


def profile_window(first_step: int, last_step: int) -> range:
    """The training steps ``--profile`` records: PROFILE_STEPS right after the count window, or the
    last ones of a short run."""
    start = min(first_step + COUNT_AFTER + COUNT_STEPS, max(first_step, last_step - PROFILE_STEPS))
    return range(start, min(start + PROFILE_STEPS, last_step))


def _phase_contexts(counter: CommCounter | None, profile: str | None, device: torch.device) -> ExitStack:
    """What a phase runs under: the byte counter, the profiler (writing into ``profile``), both or neither."""
    stack = ExitStack()
    if counter is not None:
        stack.enter_context(counter)
    if profile:
        rank = dist.get_rank() if dist.is_initialized() else 0
        stack.enter_context(profiled(profile, f"train_rank{rank}", device))
    return stack


def _record_losses(result: LoopResult, step_losses: list[torch.Tensor]) -> None:
    """Append the phase's per-step losses, averaged over ranks in one collective (not one per step)."""
    # Gathered and summed here in rank order, not all-reduced: an all-reduce's summation order
    # depends on the vector's length (gloo cuts it into chunks), so a phase of another length
    # (a resumed run's) would report a loss 1 ulp apart for the same step.
    local = torch.stack(step_losses).float().cpu()
    losses = _gather_over_ranks(local).reshape(_world(), -1).mean(dim=0).tolist()
    for i, value in enumerate(losses):
        if not math.isfinite(value):
            raise DmtError(
                f"loss became {value} at step {result.steps + i + 1}; lower the learning "
                "rates (--lr / --dense-lr) or check the input data"
            )
    result.losses += losses
    result.steps += len(losses)


def _next_boundary(step: int, every: int, last: int) -> int:
    return min(last, (step // every + 1) * every) if every else last


def train(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    train_batches: Iterator[Batch],
    eval_batches: Callable[[], Iterator[Batch]],
    cfg: LoopConfig,
    *,
    device: torch.device = torch.device("cpu"),
    is_main: bool = True,
    history: LoopResult | None = None,
    checkpoint_every: int = 0,
    on_checkpoint: Callable[[LoopResult], None] | None = None,
    counter: CommCounter | None = None,
    profile: str | None = None,
) -> LoopResult:
    """Train until ``cfg.steps`` steps from ``train_batches``; evaluate on fresh ``eval_batches()``.

    ``history`` continues a resumed run (its ``steps`` must match where ``train_batches`` starts);
    ``on_checkpoint`` is called every ``checkpoint_every`` steps with the result so far.
    ``counter`` counts the collectives of the training steps in ``count_window`` (and
    ``result.counted_steps`` says how many), not of evaluations or bookkeeping. ``profile`` (a
    directory) records the steps of ``profile_window`` with torch.profiler; their time is left out
    of ``train_seconds`` (``result.profiled_steps`` says how many).
    """
    if isinstance(model, DistributedModelParallel):
        pipeline = TrainPipelineSparseDist(model, optimizer, device)
    else:
        pipeline = _PlainPipeline(model, optimizer)
    result = history or LoopResult()
    window = count_window(result.steps, cfg.steps) if counter is not None else range(0)
    pwindow = profile_window(result.steps, cfg.steps) if profile else range(0)
    bar = tqdm(total=cfg.steps, initial=result.steps, desc="train", unit="step", disable=not (cfg.progress and is_main))
    model.train()
    while result.steps < cfg.steps:
        next_eval = cfg.next_eval(result.steps)
        next_ckpt = _next_boundary(result.steps, checkpoint_every, cfg.steps)
        bounds = (window.start, window.stop, pwindow.start, pwindow.stop)
        stop = min(next_eval, next_ckpt, *(b for b in bounds if b > result.steps))
        n = stop - result.steps
        # One profile per run: the phase that starts the window (an evaluation inside it ends it early).
        profiling = len(pwindow) > 0 and result.steps == pwindow.start
        start = time.perf_counter()
        counting = counter if result.steps in window else None
        with _phase_contexts(counting, profile if profiling else None, device):
            step_losses = _run_phase(pipeline, itertools.islice(train_batches, n), keep=lambda o: o[0].detach())
        if profiling:
            result.profiled_steps += len(step_losses)
            result.profile_seconds += time.perf_counter() - start
        else:
            result.train_seconds += time.perf_counter() - start
        if not step_losses:
            break  # out of data
        if result.steps in window:
            result.counted_steps += len(step_losses)
        _record_losses(result, step_losses)
        bar.update(len(step_losses))
        out_of_data = len(step_losses) < n
        if result.steps == next_eval or out_of_data:
            start = time.perf_counter()
            metrics = evaluate(pipeline, model, eval_batches())
            result.eval_seconds += time.perf_counter() - start
            result.evals.append({"step": result.steps, **metrics})
            bar.set_postfix(loss=f"{result.losses[-1]:.4f}", auc=f"{metrics['auc']:.4f}")
            result.stopped_early = result.stalled(cfg.early_stop)
        if on_checkpoint is not None and checkpoint_every and result.steps == next_ckpt:
            on_checkpoint(result)
        if out_of_data or result.stopped_early:
            break
    bar.close()
    return result
