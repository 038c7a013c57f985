"""Optimizers for embedding tables and dense parameters, sharded or not.

Sharded models: embedding tables get their optimizer through ``apply_optimizer_in_backward`` before
DistributedModelParallel, whose sharder turns the spec into fbgemm's fused kernel (SGD -> EXACT_SGD,
Adagrad -> EXACT_ADAGRAD, RowWiseAdagrad -> EXACT_ROWWISE_ADAGRAD); the loop steps the fused optimizer
(a no-op: the update happened in backward) and the dense one. Unsharded models in one process use the
same torch optimizer classes as ordinary optimizers, so their state checkpoints like any other.
The flat parity tests check that both paths train identically.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

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
    # Tower modules (DMT): their own, smaller rate. Adagrad/Adam steps are scale-free: every entry
    # of a projection that starts as the (near-)isometry moves by ~lr in the first steps. At the
    # dense rate (0.05) that scrambles the tower output before the tables have learned anything
    # (demo data, 1 epoch, TP c=4: AUC 0.685 over 3 seeds, flat 0.793). 0.02 is the measured best
    # with tables starting at +-0.1 (8 seeds: dot towers 0.799 vs flat 0.795; at 0.005 the in-tower
    # dots of the dot tower, which start at weight 0, come in too late: 0.765 over 3 seeds);
    # benchmarks/results/learning/README.md.
    tower_lr: float = 0.02

    @classmethod
    def for_preset(cls, preset: str, **overrides: Any) -> OptimConfig:
        """The rates a model preset trains with (:data:`PRESET_RATES`), then ``overrides``; a None
        override keeps the preset's value (an unset CLI flag)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        return cls(**{**PRESET_RATES.get(preset, {}), **given})

    def __post_init__(self) -> None:
        if self.sparse not in SPARSE_OPTIMIZERS:
            raise DmtError(f"sparse optimizer {self.sparse!r} is not one of {sorted(SPARSE_OPTIMIZERS)}")
        if self.dense not in DENSE_OPTIMIZERS:
            raise DmtError(f"dense optimizer {self.dense!r} is not one of {sorted(DENSE_OPTIMIZERS)}")
        if min(self.sparse_lr, self.dense_lr, self.tower_lr) <= 0:
            raise DmtError(
                f"learning rates must be > 0, got sparse_lr={self.sparse_lr}, dense_lr={self.dense_lr}, "
                f"tower_lr={self.tower_lr}"
            )


# The wide presets' dense and tower rates. An Adagrad step moves every weight by about lr whatever
# its gradient, so a unit's first change grows with its fan-in and compounds through wide layers:
# the "criteo" MLPs (bottom 512-256-D, top 512-256-1) at dense lr 0.05 reach a loss of 2,000-5,000
# at step 1, their ReLUs die and an epoch learns nothing (AUC 0.54-0.56 on 20M generated rows on
# the GPU; 0.539 on the demo's data) while 0.005 reaches 0.819 there (0.015: 0.684). The small
# preset learns best at 0.05 (at 0.005: 0.769 vs 0.793). A tower projection's fan-in is F x D,
# 13x wider at D=128 than the demo's, so its rate drops the same way.
# "mlperf_dcnv2" also trains its tables as MLPerf's reference does (per-coordinate Adagrad at 0.005,
# with torchrec's table init): with row-wise Adagrad at 0.05 one epoch of 10M generated rows scored
# 0.557 flat / 0.530 DMT, with the reference's 0.857 / 0.867 (one H200, 2 emulated hosts).
# benchmarks/results/learning/README.md ("Wide models"), benchmarks/results/gpu_h200x1_quality/.
#
# "small" (the default, the demo's) trains its tables with per-coordinate Adagrad. Row-wise Adagrad's
# first step points every looked-up row along the dense vector (one step size per row), and from
# that collapse some runs of either model sit at AUC ~0.57 for an epoch; per-coordinate steps spread
# the rows out (benchmarks/results/learning/README.md, "The mechanism"). Demo data, `dmt train`,
# 1 epoch, 12 seeds: flat 0.794 -> 0.816, DMT TP dot c=4 0.780 -> 0.815; runs below 0.75: 1 and 2
# of 12 -> none ("Stalls"). It keeps one state value per table entry instead of one per row
# (tables' memory x2): cheap at this preset's 50k-row tables; "criteo" keeps row-wise Adagrad.
PRESET_RATES: dict[str, dict[str, float | str]] = {
    "small": {"sparse": "adagrad"},
    "criteo": {"dense_lr": 0.005, "tower_lr": 0.002},
    "mlperf_dcnv2": {"sparse": "adagrad", "sparse_lr": 0.005, "dense_lr": 0.005, "tower_lr": 0.002},
}


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


# Tower-module parameters: ``tower_arch.towers.<t>.interaction.*`` unsharded,
# ``tower_arch.interactions.<t>.*`` in dmt.distributed.tower_sharding's ShardedTowerCollection.
_TOWER_MODULE = re.compile(r"(^|\.)tower_arch\.(towers\.\d+\.interaction|interactions)\.")


def is_tower_module_parameter(name: str) -> bool:
    return _TOWER_MODULE.search(name) is not None


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> CombinedOptimizer:
    """The keyed optimizer the training loop steps and checkpoints.

    Sharded (DistributedModelParallel): the fused embedding optimizer + the dense ones. Unsharded:
    the embedding optimizer over the tables + the dense ones over everything else. Tower-module
    parameters get the dense optimizer at ``cfg.tower_lr`` (see :class:`OptimConfig`).
    """

    def dense_factory(lr: float):
        return lambda params: DENSE_OPTIMIZERS[cfg.dense](params, **_kwargs(cfg.dense, lr))

    fused = getattr(model, "fused_optimizer", None)  # DistributedModelParallel only
    if fused is not None:
        sparse, rest = fused, dict(in_backward_optimizer_filter(model.named_parameters()))
    else:
        tables = _embedding_parameter_names(model)
        params = dict(model.named_parameters())
        sparse = KeyedOptimizerWrapper(
            {n: p for n, p in params.items() if n in tables},
            lambda ps: SPARSE_OPTIMIZERS[cfg.sparse](ps, **_kwargs(cfg.sparse, cfg.sparse_lr)),
        )
        rest = {n: p for n, p in params.items() if n not in tables}
    towers = {n: p for n, p in rest.items() if is_tower_module_parameter(n)}
    parts = [
        ("sparse", sparse),
        (
            "dense",
            KeyedOptimizerWrapper({n: p for n, p in rest.items() if n not in towers}, dense_factory(cfg.dense_lr)),
        ),
    ]
    if towers:  # flat models have none; an empty optimizer would still be a checkpoint key
        parts.append(("towers", KeyedOptimizerWrapper(towers, dense_factory(cfg.tower_lr))))
    return CombinedOptimizer(parts)
