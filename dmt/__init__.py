"""DMT: Disaggregated Multi-Tower training for recommendation models on PyTorch + TorchRec."""

from dmt.plan import PlanError, Tower, TowerPlan

__all__ = ["PlanError", "Tower", "TowerPlan"]
__version__ = "0.1.0"
