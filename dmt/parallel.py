"""Process groups and flat (non-tower) sharding with torchrec's DistributedModelParallel.

The flat baseline uses torchrec unchanged: its planner picks shard placement under a sharding-type
constraint, DMP shards the EmbeddingBagCollection and wraps the dense part in DDP.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
import inspect

from torch.nn.parallel import DistributedDataParallel
from torchrec.distributed.model_parallel import DefaultDataParallelWrapper, DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner
from torchrec.distributed.planner import Topology as PlannerTopology
from torchrec.distributed.planner.types import ParameterConstraints
from torchrec.distributed.types import ShardingEnv, ShardingType

from dmt.errors import DmtError
from dmt.models import ModelConfig, table_name
from dmt.qcomm import CommCompression, comm_codecs_registry, largest_table_rows
from dmt.topology import Topology

FLAT_SHARDINGS = ("table_wise", "row_wise", "column_wise", "table_row_wise", "data_parallel")


@dataclass(frozen=True)
class DistEnv:
    """What a rank needs to know about the distributed job it is part of."""

    topology: Topology
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.topology.rank == 0


def init_distributed(backend: str | None = None) -> DistEnv:
    """Join the job torchrun started (default process group) and pick this rank's device.

    CUDA ranks use NCCL on ``cuda:<local rank>``; CPU ranks use gloo.
    """
    topology = Topology.from_env()
    cuda = torch.cuda.is_available()
    backend = backend or ("nccl" if cuda else "gloo")
    if cuda:
        # With CUDA_VISIBLE_DEVICES set per rank each process sees one GPU at index 0.
        device = torch.device("cuda", topology.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    # torchrec's host groups are pod_size x LOCAL_WORLD_SIZE ranks; a pod of one host keeps them to
    # one host (and silences the fallback warning it prints on every call).
    os.environ.setdefault("TORCHREC_RESOLVED_POD_SIZE", "1")
    os.environ.setdefault("TOPOLOGY_DOMAIN_MULTIPLE", "1")  # torchrec 1.6's name for the same
    return DistEnv(topology=topology, device=device, backend=backend)


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


def shard_flat(
    model: torch.nn.Module,
    cfg: ModelConfig,
    env: DistEnv,
    sharding: str = "table_wise",
    *,
    qcomm_codecs_registry: dict | None = None,
    comm_compression: CommCompression | None = None,
) -> DistributedModelParallel:
    """Shard the flat model's tables with one sharding type; the planner places the shards.

    ``qcomm_codecs_registry`` (torchrec's) or ``comm_compression`` (built with
    :func:`dmt.qcomm.comm_codecs_registry`) compresses the embedding comms, all of them: a flat
    model's all-to-alls mix intra- and cross-host destinations.
    """
    if sharding not in FLAT_SHARDINGS:
        raise DmtError(f"sharding={sharding!r} is not one of {FLAT_SHARDINGS}")
    if comm_compression is not None:
        if qcomm_codecs_registry is not None:
            raise DmtError("pass qcomm_codecs_registry or comm_compression to shard_flat, not both")
        qcomm_codecs_registry = comm_codecs_registry(
            comm_compression, device=env.device, rows=largest_table_rows(model)
        )
    topo = env.topology
    constraints = {
        table_name(f): ParameterConstraints(sharding_types=[sharding]) for f in cfg.sparse_features
    }
    sharders = [CpuRowWiseEBCSharder(qcomm_codecs_registry=qcomm_codecs_registry)]
    planner = EmbeddingShardingPlanner(
        topology=PlannerTopology(
            world_size=topo.world_size,
            compute_device=env.device.type,
            local_world_size=topo.local_world_size,
        ),
        constraints=constraints,
    )
    # plan() on every rank rather than collective_plan(): the planner is deterministic, and a
    # planning error on rank 0 would otherwise leave the other ranks hanging in the broadcast.
    plan = planner.plan(model, sharders)
    return DistributedModelParallel(
        module=model,
        env=ShardingEnv.from_process_group(dist.group.WORLD),
        device=env.device,
        plan=plan,
        sharders=sharders,
        data_parallel_wrapper=exact_resume_ddp_wrapper(),
    )
