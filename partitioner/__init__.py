"""TP, the Tower Partitioner: group sparse features into towers that interact, balanced in cost.

Pipeline: data -> :class:`FeatureRepresentation` (``partitioner.learned`` learns it from a briefly
trained DLRM) + :class:`FeatureCosts` (``measure_costs``) -> :class:`TowerPartitioner` ->
``plan_`` (a :class:`dmt.plan.TowerPlan`). The baselines share the estimator API.

This package may use scikit-learn and networkx; ``dmt`` and ``towers`` never import it. It has no
torch.distributed code; only ``partitioner.learned`` imports torch, and only when used.
"""

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
    "FeatureCosts",
    "FeatureEmbedder",
    "FeatureRepresentation",
    "GreedyPartitioner",
    "PartitionError",
    "PartitionErrorReason",
    "RandomPartitioner",
    "RoundRobinPartitioner",
    "TowerPartitioner",
    "measure_costs",
]
