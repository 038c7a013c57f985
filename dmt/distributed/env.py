"""The distributed job a rank is part of: join torchrun's process group, pick the device."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from dmt.distributed.topology import Topology
from dmt.distributed.torchrec_fixes import pin_torchrec_pod_size


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
    pin_torchrec_pod_size()
    return DistEnv(topology=topology, device=device, backend=backend)
