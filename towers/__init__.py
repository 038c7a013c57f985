"""Tower modules (TM) and global interactions: plain single-process ``nn.Module``s for DMT.

A tower module turns one tower's pooled embeddings into k_t vectors of dim D (compressing by
c ~ F_t / k_t) before the cross-host exchange; a global interaction then combines the dense
vector with all towers' outputs. Nothing here uses process groups; the distributed wrappers
live elsewhere and call these.
"""

from towers.builder import (
    TowerReport,
    build_tower_module,
    build_tower_modules,
    format_tower_report,
    tower_reports,
)
from towers.config import (
    GLOBAL_KINDS,
    TOWER_KINDS,
    GlobalInteractionConfig,
    TowerConfigError,
    TowerModuleConfig,
    num_tower_outputs,
)
from towers.group import TowerGroup
from towers.interaction import (
    GlobalConcatInteraction,
    GlobalDCNInteraction,
    GlobalDotInteraction,
    GlobalInteraction,
    build_global_interaction,
    feature_order_permutation,
)
from towers.modules import DCNTower, DotTower, IdentityTower, ProjectionTower, TowerModule
from towers.projection import Projection, group_isometry

__all__ = [
    "GLOBAL_KINDS",
    "TOWER_KINDS",
    "DCNTower",
    "DotTower",
    "GlobalConcatInteraction",
    "GlobalDCNInteraction",
    "GlobalDotInteraction",
    "GlobalInteraction",
    "GlobalInteractionConfig",
    "IdentityTower",
    "Projection",
    "ProjectionTower",
    "TowerConfigError",
    "TowerGroup",
    "TowerModule",
    "TowerModuleConfig",
    "TowerReport",
    "build_global_interaction",
    "build_tower_module",
    "build_tower_modules",
    "feature_order_permutation",
    "format_tower_report",
    "group_isometry",
    "num_tower_outputs",
    "tower_reports",
]
