"""The training loop shared by every model: flat or DMT, one process or many.

Sharded models run through torchrec's TrainPipelineSparseDist, which overlaps the next batch's
input all-to-all with the current forward/backward. Unsharded models in one process have nothing
to overlap and use a plain step with the same contract. Training proceeds in phases of
``eval_every`` steps; each phase drains the pipeline, then the model is evaluated on all ranks.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from collections.abc import Callable, Iterator
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
from dmt.train.metrics import binary_metrics


@dataclass(frozen=True, kw_only=True)
class LoopConfig:
    steps: int  # optimizer steps to run (each on one global batch)
    eval_every: int = 0  # steps between evaluations; 0 evaluates only at the end
    progress: bool = True  # tqdm bar on rank 0

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise DmtError(f"steps={self.steps} must be >= 1")
        if self.eval_every < 0:
            raise DmtError(f"eval_every={self.eval_every} must be >= 0")


@dataclass
class LoopResult:
    losses: list[float] = field(default_factory=list)  # mean loss over the global batch, per step
    evals: list[dict] = field(default_factory=list)  # {"step": s, "auc":..., "logloss":..., "ne":...}
    steps: int = 0
    train_seconds: float = 0.0


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


def _mean_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """Mean of a CPU tensor over ranks, returned on the CPU."""
    if _world() > 1:
        x = x.to(_comm_device(), copy=True)
        dist.all_reduce(x)
        x = x.cpu() / _world()
    return x


def _gather_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """Every rank's CPU tensor (same shape on all ranks), concatenated in rank order, on the CPU."""
    if _world() == 1:
        return x
    x = x.to(_comm_device())
    parts = [torch.empty_like(x) for _ in range(_world())]
    dist.all_gather(parts, x)
    return torch.cat(parts).cpu()


def _run_phase(pipeline, batches: Iterator[Batch]) -> list[tuple]:
    outputs = []
    while True:
        try:
            outputs.append(pipeline.progress(batches))
        except StopIteration:
            return outputs


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
) -> LoopResult:
    """Train until ``cfg.steps`` steps from ``train_batches``; evaluate on fresh ``eval_batches()``.

    ``history`` continues a resumed run (its ``steps`` must match where ``train_batches`` starts);
    ``on_checkpoint`` is called every ``checkpoint_every`` steps with the result so far.
    ``counter`` counts the training steps' collectives (evaluation and bookkeeping are labelled
    "eval" and "other", so they don't mix with the forward/backward bytes).
    """
    counting = counter if counter is not None else contextlib.nullcontext()
    other = (lambda name: counter.phase(name)) if counter is not None else (lambda name: contextlib.nullcontext())
    if isinstance(model, DistributedModelParallel):
        pipeline = TrainPipelineSparseDist(model, optimizer, device)
    else:
        pipeline = _PlainPipeline(model, optimizer)
    result = history or LoopResult()
    bar = tqdm(total=cfg.steps, initial=result.steps, desc="train", unit="step", disable=not (cfg.progress and is_main))
    model.train()
    while result.steps < cfg.steps:
        next_eval = _next_boundary(result.steps, cfg.eval_every, cfg.steps)
        next_ckpt = _next_boundary(result.steps, checkpoint_every, cfg.steps)
        n = min(next_eval, next_ckpt) - result.steps
        start = time.perf_counter()
        with counting:
            outputs = _run_phase(pipeline, itertools.islice(train_batches, n))
        result.train_seconds += time.perf_counter() - start
        if not outputs:
            break  # out of data
        # One collective per phase, not per step: per-step losses are all-reduced together.
        with counting, other("other"):
            losses = _mean_over_ranks(torch.stack([o[0].detach().float().cpu() for o in outputs])).tolist()
        for i, value in enumerate(losses):
            if not math.isfinite(value):
                raise DmtError(
                    f"loss became {value} at step {result.steps + i + 1}; lower the learning "
                    "rates (--lr / --dense-lr) or check the input data"
                )
        result.losses += losses
        result.steps += len(outputs)
        bar.update(len(outputs))
        out_of_data = len(outputs) < n
        if result.steps == next_eval or out_of_data:
            with counting, other("eval"):
                metrics = evaluate(pipeline, model, eval_batches())
            result.evals.append({"step": result.steps, **metrics})
            bar.set_postfix(loss=f"{result.losses[-1]:.4f}", auc=f"{metrics['auc']:.4f}")
        if on_checkpoint is not None and result.steps == next_ckpt and checkpoint_every:
            with counting, other("other"):
                on_checkpoint(result)
        if out_of_data:
            break
    bar.close()
    return result
