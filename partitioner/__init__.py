"""TP, the Tower Partitioner: group sparse features into towers that interact, balanced in cost.

Pipeline: data -> :class:`FeatureRepresentation` (``partitioner.learned`` learns it from a briefly
trained DLRM) + :class:`FeatureCosts` (``measure_costs``) -> :class:`TowerPartitioner` ->
``plan_`` (a :class:`dmt.plan.TowerPlan`). The baselines share the estimator API. The balance
limit is relative to the best achievable balance (``partitioner.balance``); the plan records how
far to trust it (``partitioner.confidence``).

This package may use scikit-learn and networkx; ``dmt`` and ``towers`` never import it. It has no
torch.distributed code; only ``partitioner.learned`` imports torch, and only when used.
"""

from partitioner.balance import BalanceBound, best_balance
from partitioner.confidence import Confidence
from partitioner.costs import FeatureCosts, measure_costs
from partitioner.errors import PartitionError, PartitionErrorReason
from partitioner.estimators import (
    METHODS,
    GreedyPartitioner,
    RandomPartitioner,
    RoundRobinPartitioner,
    TowerPartitioner,
)
from partitioner.representation import FeatureEmbedder, FeatureRepresentation

__all__ = [
    "METHODS",
    "BalanceBound",
    "Confidence",
    "FeatureCosts",
    "FeatureEmbedder",
    "FeatureRepresentation",
    "GreedyPartitioner",
    "PartitionError",
    "PartitionErrorReason",
    "RandomPartitioner",
    "RoundRobinPartitioner",
    "TowerPartitioner",
    "best_balance",
    "measure_costs",
]
