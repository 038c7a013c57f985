"""Hosts and ranks: the topology a job runs on, read from torchrun's environment.

torchrun sets WORLD_SIZE, RANK and LOCAL_WORLD_SIZE. Ranks are contiguous per host: host h owns
ranks ``h*L .. h*L+L-1`` (torchrun's static rendezvous numbers them that way, and torchrec's
``intra_and_cross_node_pg`` assumes it). A rank's *peers* are the ranks with the same local rank on
the other hosts: the only ranks DMT exchanges data with across hosts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from dmt.errors import TopologyError


@dataclass(frozen=True)
class Topology:
    """``world_size`` ranks on ``world_size // local_world_size`` hosts; ``rank`` is this process.

    Example:
        >>> t = Topology(world_size=4, local_world_size=2, rank=3)
        >>> t.num_hosts, t.host, t.local_rank, t.peers
        (2, 1, 1, (1, 3))
    """

    world_size: int
    local_world_size: int
    rank: int = 0

    def __post_init__(self) -> None:
        if self.world_size < 1 or self.local_world_size < 1:
            raise TopologyError(
                f"world_size={self.world_size} and local_world_size={self.local_world_size} must be >= 1"
            )
        if self.world_size % self.local_world_size:
            raise TopologyError(
                f"WORLD_SIZE={self.world_size} is not a multiple of LOCAL_WORLD_SIZE="
                f"{self.local_world_size}: every host must run the same number of ranks "
                "(launch torchrun with the same --nproc-per-node on every host)"
            )
        if not 0 <= self.rank < self.world_size:
            raise TopologyError(f"rank={self.rank} is outside world_size={self.world_size}")

    @property
    def num_hosts(self) -> int:
        return self.world_size // self.local_world_size

    @property
    def host(self) -> int:
        return self.rank // self.local_world_size

    @property
    def local_rank(self) -> int:
        return self.rank % self.local_world_size

    @property
    def peers(self) -> tuple[int, ...]:
        """Ranks with this rank's local rank on every host, in host order (self included)."""
        return tuple(h * self.local_world_size + self.local_rank for h in range(self.num_hosts))

    def host_ranks(self, host: int) -> tuple[int, ...]:
        return tuple(range(host * self.local_world_size, (host + 1) * self.local_world_size))

    def same_host(self, a: int, b: int) -> bool:
        return a // self.local_world_size == b // self.local_world_size

    @staticmethod
    def from_env(env: Mapping[str, str] | None = None) -> Topology:
        """Topology of this process from torchrun's variables (a single process when unset)."""
        env = os.environ if env is None else env
        try:
            world = int(env.get("WORLD_SIZE", "1"))
            local = int(env.get("LOCAL_WORLD_SIZE", str(world)))
            rank = int(env.get("RANK", "0"))
        except ValueError as e:
            raise TopologyError(f"WORLD_SIZE/LOCAL_WORLD_SIZE/RANK must be integers ({e})") from None
        return Topology(world_size=world, local_world_size=local, rank=rank)
