"""Optimizers the way torchrec wants them: embeddings updated inside backward, dense ones after.

Embedding tables get their optimizer through ``apply_optimizer_in_backward``. Unsharded, that runs
the torch optimizer in a backward hook; under DistributedModelParallel the sharder turns the same
spec into fbgemm's fused kernel (SGD -> EXACT_SGD, Adagrad -> EXACT_ADAGRAD, RowWiseAdagrad ->
EXACT_ROWWISE_ADAGRAD). One model definition therefore trains identically in one process and sharded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter
from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

from dmt.errors import DmtError

SPARSE_OPTIMIZERS = {"sgd": torch.optim.SGD, "adagrad": torch.optim.Adagrad, "rowwise_adagrad": RowWiseAdagrad}
DENSE_OPTIMIZERS = {"sgd": torch.optim.SGD, "adagrad": torch.optim.Adagrad, "adam": torch.optim.Adam}
# fbgemm's fused Adagrad kernels default to eps=1e-8; torch's to 1e-10. Pass one value to both.
_ADAGRAD_EPS = 1e-8


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    sparse: str = "rowwise_adagrad"  # DLRM's usual choice: one accumulator per row saves memory
    sparse_lr: float = 0.05
    dense: str = "adagrad"
    dense_lr: float = 0.05

    def __post_init__(self) -> None:
        if self.sparse not in SPARSE_OPTIMIZERS:
            raise DmtError(f"sparse optimizer {self.sparse!r} is not one of {sorted(SPARSE_OPTIMIZERS)}")
        if self.dense not in DENSE_OPTIMIZERS:
            raise DmtError(f"dense optimizer {self.dense!r} is not one of {sorted(DENSE_OPTIMIZERS)}")
        if self.sparse_lr <= 0 or self.dense_lr <= 0:
            raise DmtError(f"learning rates must be > 0, got sparse_lr={self.sparse_lr}, dense_lr={self.dense_lr}")


def _kwargs(name: str, lr: float) -> dict:
    return {"lr": lr, "eps": _ADAGRAD_EPS} if "adagrad" in name else {"lr": lr}


def apply_sparse_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> None:
    """Attach the in-backward optimizer to every EmbeddingBagCollection in ``model`` (before sharding)."""
    for module in model.modules():
        if isinstance(module, EmbeddingBagCollection):
            apply_optimizer_in_backward(
                SPARSE_OPTIMIZERS[cfg.sparse], module.parameters(), _kwargs(cfg.sparse, cfg.sparse_lr)
            )


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """The optimizer the training loop steps: dense parameters, plus the fused one when sharded."""
    dense = KeyedOptimizerWrapper(
        dict(in_backward_optimizer_filter(model.named_parameters())),
        lambda params: DENSE_OPTIMIZERS[cfg.dense](params, **_kwargs(cfg.dense, cfg.dense_lr)),
    )
    fused = getattr(model, "fused_optimizer", None)  # DistributedModelParallel only
    return CombinedOptimizer([fused, dense]) if fused is not None else dense
