"""Optimizers for embedding tables and dense parameters, sharded or not.

Sharded models: embedding tables get their optimizer through ``apply_optimizer_in_backward`` before
DistributedModelParallel, whose sharder turns the spec into fbgemm's fused kernel (SGD -> EXACT_SGD,
Adagrad -> EXACT_ADAGRAD, RowWiseAdagrad -> EXACT_ROWWISE_ADAGRAD); the loop steps the fused optimizer
(a no-op: the update happened in backward) and the dense one. Unsharded models in one process use the
same torch optimizer classes as ordinary optimizers, so their state checkpoints like any other.
The flat parity tests check that both paths train identically.
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


def _embedding_parameter_names(model: torch.nn.Module) -> set[str]:
    names = set()
    for prefix, module in model.named_modules():
        if isinstance(module, EmbeddingBagCollection):
            names |= {f"{prefix}.{n}" if prefix else n for n, _ in module.named_parameters()}
    return names


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> CombinedOptimizer:
    """The keyed optimizer the training loop steps and checkpoints.

    Sharded (DistributedModelParallel): the fused embedding optimizer + the dense one. Unsharded:
    the embedding optimizer over the tables + the dense one over everything else.
    """
    dense_factory = lambda params: DENSE_OPTIMIZERS[cfg.dense](params, **_kwargs(cfg.dense, cfg.dense_lr))  # noqa: E731
    fused = getattr(model, "fused_optimizer", None)  # DistributedModelParallel only
    if fused is not None:
        dense = KeyedOptimizerWrapper(dict(in_backward_optimizer_filter(model.named_parameters())), dense_factory)
        return CombinedOptimizer([("sparse", fused), ("dense", dense)])
    tables = _embedding_parameter_names(model)
    params = dict(model.named_parameters())
    sparse = KeyedOptimizerWrapper(
        {n: p for n, p in params.items() if n in tables},
        lambda ps: SPARSE_OPTIMIZERS[cfg.sparse](ps, **_kwargs(cfg.sparse, cfg.sparse_lr)),
    )
    dense = KeyedOptimizerWrapper({n: p for n, p in params.items() if n not in tables}, dense_factory)
    return CombinedOptimizer([("sparse", sparse), ("dense", dense)])
