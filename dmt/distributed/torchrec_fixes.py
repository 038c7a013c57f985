"""Every workaround DMT needs around torchrec, in one place, with the versions it was verified on.

Each fix is the smallest change that makes torchrec's own path work (a subclass, a swap limited
to one constructor call, environment variables pinned while torchrec reads them); none forks a
torchrec module. All are verified on torchrec 1.8.0 (CPU, gloo) by the tests named below. On
torchrec 1.6.1 (H200, NCCL) they were verified before they moved here; since the move, `dmt bench`
ran every flat and DMT variant there, but the NCCL parity test 2x1 failed
(benchmarks/results/gpu_h200x4_hier/README.md): rerun `benchmarks/gpu_suite.sh parity` first.

| fix | torchrec problem | test |
|---|---|---|
| :class:`CpuRowWiseEBCSharder` | the EBC sharder offers row-wise types only on CUDA | test_flat_training |
| :func:`exact_resume_ddp_kwargs` | DDP re-buckets after step 1: a resumed run rounds apart | test_checkpoint |
| :func:`pin_torchrec_pod_size` | host groups are LOCAL_WORLD_SIZE x pod size (1.8) / domain multiple (1.6) | - |
| :func:`torchrec_host_size` | the same, pinned to a topology while torchrec builds its groups | test_tower_sharding |
| :func:`tower_process_groups` | the intra-/cross-host groups are cached for the process | test_tower_sharding |
| :func:`safe_tower_sharding` | intra-host DDP and ShardingEnv of the tower sharder (below) | test_tower_sharding |

``safe_tower_sharding``: torchrec's tower sharder wraps each tower module in intra-host DDP, which
rejects CPU ``device_ids`` and modules without parameters, and builds its intra-host ShardingEnv
with a world-wide DeviceMesh on hosts with towers only (a hang on 1.6.1).

The tower sharding's remaining traps (output order, plan mutated in place, state dict load,
cached batch size) are fixed in :mod:`dmt.distributed.tower_sharding` and
:mod:`dmt.distributed.state_dict`, where the classes they change live.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
import torchrec.distributed.embedding_tower_sharding as _ets
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torchrec.distributed.comm import intra_and_cross_node_pg
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.model_parallel import DefaultDataParallelWrapper
from torchrec.distributed.types import ShardingEnv, ShardingType

from dmt.distributed.topology import Topology
from dmt.errors import TopologyError

# torchrec counts hosts per pod in these variables; a DMT host is its own pod.
_POD_SIZE_VARIABLES = ("TORCHREC_RESOLVED_POD_SIZE", "TOPOLOGY_DOMAIN_MULTIPLE")  # 1.8, 1.6


def pin_torchrec_pod_size() -> None:
    """Make torchrec's host groups one host (``pod size x LOCAL_WORLD_SIZE`` ranks, pod size 1).

    Also silences the fallback warning torchrec prints on every call when the variable is unset.
    A value the user set is kept.
    """
    for name in _POD_SIZE_VARIABLES:
        os.environ.setdefault(name, "1")


class CpuRowWiseEBCSharder(EmbeddingBagCollectionSharder):
    """EBC sharder that also offers row-wise types on CPU.

    torchrec's sharder lists ROW_WISE and TABLE_ROW_WISE only for CUDA, so its planner refuses them
    on CPU, yet the CPU kernels and gloo collectives run them correctly (tested against an unsharded
    model). Only the advertised list changes.
    """

    def sharding_types(self, compute_device_type: str) -> list[str]:
        types = super().sharding_types(compute_device_type)
        extra = [ShardingType.ROW_WISE.value, ShardingType.TABLE_ROW_WISE.value]
        return types + [t for t in extra if t not in types]


def exact_resume_ddp_kwargs() -> dict:
    """DDP arguments that make a resumed run reduce gradients bit-identically to an uninterrupted one.

    DDP buckets the parameters in definition order for its first iteration and rebuilds the
    buckets in backward order after it. Gloo's (and NCCL's) ring all-reduce adds each element in an
    order set by its offset in the bucket, so a freshly started (resumed) process would average the
    first step's gradients with different rounding (measured: ~1e-8 drift after one step). One
    bucket per parameter, before and after the rebuild, keeps every tensor at offset 0. The dense
    part of a DLRM has few parameters, so on CPU/gloo the extra all-reduce calls cost little.

    On NCCL they do not: a launch per parameter made DMT's step 9.21 ms vs 6.65 ms for torchrec's
    stock tower path (2x H200, NVLink, 26 x 200k x 128, B=8192). GPU jobs (NCCL) therefore keep
    DDP's default buckets: they resume equal up to float rounding, not bit for bit.
    """
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return {}
    if "bucket_cap_mb_list" in inspect.signature(DistributedDataParallel.__init__).parameters:
        # A 1-byte cap (not 0: torch 2.11 rejects a zero cap) puts every parameter in its own bucket.
        return {"bucket_cap_mb_list": [1 / 2**20]}
    # Older torch: no rebuild at all (one fixed bucket), at the price of an unused-parameter scan.
    return {"static_graph": False, "find_unused_parameters": True}


def exact_resume_ddp_wrapper() -> DefaultDataParallelWrapper:
    """torchrec's DMP data-parallel wrapper with :func:`exact_resume_ddp_kwargs`."""
    kwargs = exact_resume_ddp_kwargs()
    return DefaultDataParallelWrapper(
        static_graph=kwargs.pop("static_graph", True),
        find_unused_parameters=kwargs.pop("find_unused_parameters", False),
        ddp_kwargs=kwargs,
    )


class CpuSafeDDP(DistributedDataParallel):
    """DDP that ignores ``device_ids`` made only of CPU devices (torch rejects them for CPU modules)."""

    def __init__(self, module: nn.Module, device_ids: list[Any] | None = None, *args: Any, **kwargs: Any) -> None:
        if device_ids is not None and all(torch.device(d).type == "cpu" for d in device_ids):
            device_ids = None
        super().__init__(module, device_ids, *args, **kwargs)


class ParameterFreeTower(nn.Module):
    """Stands in for intra-host DDP where it has nothing to do (see :func:`tower_ddp`).

    torchrec's collection only needs ``.module``.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)


def tower_ddp(module: nn.Module, device_ids: list[Any] | None = None, *args: Any, **kwargs: Any) -> nn.Module:
    """What torchrec's tower sharding gets when it asks for ``DistributedDataParallel(...)``.

    No DDP around a module without parameters (DDP refuses it) or on a host of one rank: there
    an all-reduce over one rank changes nothing and only costs launches and bucket copies.
    """
    group = kwargs.get("process_group")
    if not any(p.requires_grad for p in module.parameters()) or (group is not None and dist.get_world_size(group) == 1):
        return ParameterFreeTower(module)
    return CpuSafeDDP(module, device_ids, *args, **{**kwargs, **exact_resume_ddp_kwargs()})


class _MeshlessShardingEnv(ShardingEnv):
    """A ShardingEnv that builds no DeviceMesh, for the intra-host sharding of tower tables.

    ``ShardingEnv.__init__`` calls ``init_device_mesh`` (a world-wide ``new_group``), but torchrec
    builds the intra-host env only on ranks whose host holds towers. With an idle host the
    ranks' group creations then fall out of step and the next ``new_group`` hangs (seen with
    torchrec 1.6.1: a second ``shard`` never returns). The mesh is only read for DTensor outputs,
    which the tower path does not use (and it would span the wrong ranks on any host but 0).
    """

    def __init__(
        self, world_size: int, rank: int, pg: dist.ProcessGroup | None = None, output_dtensor: bool = False
    ) -> None:
        super().__init__(world_size, rank, None, output_dtensor)
        self.process_group = pg


@contextlib.contextmanager
def safe_tower_sharding() -> Iterator[None]:
    """While active, torchrec's tower sharding uses :func:`tower_ddp` and :class:`_MeshlessShardingEnv`.

    ``ShardedEmbeddingTowerCollection.__init__`` calls the module-level names
    ``DistributedDataParallel(module, device_ids=[device], ...)`` for every local tower module
    (which fails for CPU devices and for modules without parameters) and ``ShardingEnv(...)``
    for its intra-host env (see :class:`_MeshlessShardingEnv`), with no hook to change either;
    the alternative to this swap is forking its 150-line constructor. The swap is limited to
    that constructor call (sharding is single-threaded) and undone even when it raises.
    """
    originals = (_ets.DistributedDataParallel, _ets.ShardingEnv)
    _ets.DistributedDataParallel, _ets.ShardingEnv = tower_ddp, _MeshlessShardingEnv
    try:
        yield
    finally:
        _ets.DistributedDataParallel, _ets.ShardingEnv = originals


@contextlib.contextmanager
def torchrec_host_size(local_world_size: int) -> Iterator[None]:
    """Make torchrec's ``intra_and_cross_node_pg`` see hosts of ``local_world_size`` ranks.

    torchrec multiplies LOCAL_WORLD_SIZE by TORCHREC_RESOLVED_POD_SIZE (1.8) or
    TOPOLOGY_DOMAIN_MULTIPLE (1.6), both counted in *hosts* per pod; a DMT host is its own pod, so
    both are 1 here. The variables are restored afterwards: nothing reads them once the groups exist.
    """
    pinned = {"LOCAL_WORLD_SIZE": str(local_world_size), **dict.fromkeys(_POD_SIZE_VARIABLES, "1")}
    saved = {k: os.environ.get(k) for k in pinned}
    os.environ.update(pinned)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def tower_process_groups(topology: Topology, device: torch.device) -> tuple[dist.ProcessGroup, dist.ProcessGroup]:
    """torchrec's (cached) intra-host and cross-host process groups, checked against ``topology``.

    Collective: every rank must call it. Raises TopologyError when torchrec already created its
    groups for another host size in this process (it never re-creates them).
    """
    with torchrec_host_size(topology.local_world_size):
        intra, cross = intra_and_cross_node_pg(device)
    assert intra is not None and cross is not None  # only None on the meta device
    if dist.get_world_size(intra) != topology.local_world_size or dist.get_world_size(cross) != topology.num_hosts:
        raise TopologyError(
            f"torchrec's cached process groups have {dist.get_world_size(intra)} ranks per host and "
            f"{dist.get_world_size(cross)} hosts, but the topology has {topology.local_world_size} and "
            f"{topology.num_hosts}; something in this process sharded with another host size before "
            "(torchrec keeps its first groups): shard towers in a fresh process"
        )
    return intra, cross
