"""DMT: Disaggregated Multi-Tower training for recommendation models on PyTorch + TorchRec.

The data path: ``partitioner`` -> :class:`TowerPlan` -> :func:`transform` -> :func:`shard` -> train.
This module is the public API; ``dmt.data`` (readers, generator, batches) is public too. Names
that import torchrec load on first use, so that plan handling and the CLI start fast.

Subpackages, by role: ``data`` (Criteo rows -> batches), ``model`` (flat DLRM, DMT model,
transform), ``distributed`` (topology, flat and tower sharding, torchrec fixes, comm codecs,
launch), ``train`` (build, loop, checkpoints, report), ``perf`` (byte counter, comm and cost
models, bench), ``cli`` (the ``dmt`` command).
"""

from importlib import import_module
from typing import Any

from dmt.atomic import atomic_open, atomic_write_text
from dmt.errors import DataFormatError, DmtError, TopologyError
from dmt.plan import PlanError, Tower, TowerPlan

__version__ = "0.1.0"

# Public name -> the module that defines it (imported on first use).
_LAZY = {
    "ModelConfig": "dmt.model.flat",
    "build_flat_model": "dmt.model.flat",
    "transform": "dmt.model.transform",
    "DMTTrain": "dmt.model.dmt",
    "Topology": "dmt.distributed.topology",
    "DistEnv": "dmt.distributed.env",
    "init_distributed": "dmt.distributed.env",
    "shard": "dmt.distributed.tower_sharding",
    "shard_flat": "dmt.distributed.flat",
    "CommCompression": "dmt.distributed.qcomm",
    "OptimConfig": "dmt.train.optim",
    "apply_sparse_optimizer": "dmt.train.optim",
    "build_optimizer": "dmt.train.optim",
    "TowerSpec": "dmt.train.build",
    "build_model": "dmt.train.build",
}

__all__ = [
    "DataFormatError",
    "DmtError",
    "PlanError",
    "TopologyError",
    "Tower",
    "TowerPlan",
    "atomic_open",
    "atomic_write_text",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dmt' has no attribute {name!r}")
