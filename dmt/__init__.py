"""DMT: Disaggregated Multi-Tower training for recommendation models on PyTorch + TorchRec.

The data path: ``partitioner`` -> :class:`TowerPlan` -> :func:`transform` -> :func:`shard` -> train.
``transform`` and ``shard`` import torchrec; they load on first use so that plan handling and the
CLI start fast.
"""

from dmt.plan import PlanError, Tower, TowerPlan

__all__ = ["PlanError", "Tower", "TowerPlan", "shard", "transform"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "transform":
        from dmt.sptt import transform

        return transform
    if name == "shard":
        from dmt.sharding import shard

        return shard
    raise AttributeError(f"module 'dmt' has no attribute {name!r}")
