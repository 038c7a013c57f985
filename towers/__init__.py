"""Tower modules (TM) and global interactions: plain single-process ``nn.Module``s for DMT.

A tower module turns one tower's pooled embeddings into k_t vectors of dim D (compressing by
c ~ F_t / k_t) before the cross-host exchange; a global interaction then combines the dense
vector with all towers' outputs. Nothing here uses process groups; the distributed wrappers
live elsewhere and call these.

The configs (``towers.config``) are plain data; the modules import torch and torchrec, so they
load on first use and ``import towers.config`` (the cost model's) stays free of torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from towers.config import (
    GLOBAL_KINDS,
    TOWER_KINDS,
    GlobalInteractionConfig,
    TowerConfigError,
    TowerModuleConfig,
    num_tower_outputs,
)

# Public name -> the module that defines it (imported on first use: it imports torch).
_LAZY = {
    "TowerReport": "towers.builder",
    "build_tower_module": "towers.builder",
    "build_tower_modules": "towers.builder",
    "format_tower_report": "towers.builder",
    "tower_reports": "towers.builder",
    "TowerGroup": "towers.group",
    "GlobalConcatInteraction": "towers.interaction",
    "GlobalDCNInteraction": "towers.interaction",
    "GlobalDotInteraction": "towers.interaction",
    "GlobalInteraction": "towers.interaction",
    "build_global_interaction": "towers.interaction",
    "feature_order_permutation": "towers.interaction",
    "DCNTower": "towers.modules",
    "DotTower": "towers.modules",
    "IdentityTower": "towers.modules",
    "ProjectionTower": "towers.modules",
    "TowerModule": "towers.modules",
    "Projection": "towers.projection",
    "group_isometry": "towers.projection",
}

__all__ = [
    "GLOBAL_KINDS",
    "TOWER_KINDS",
    "GlobalInteractionConfig",
    "TowerConfigError",
    "TowerModuleConfig",
    "num_tower_outputs",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'towers' has no attribute {name!r}")
