"""Towers -> hosts: the same number of towers on every host (+-1), cost spread evenly.

Example:
    >>> assign_hosts([5.0, 4.0, 3.0, 3.0], [0, 0, 0, 0], num_hosts=2).tolist()
    [0, 1, 1, 0]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from partitioner.errors import PartitionError, PartitionErrorReason
from partitioner.refine import least_loaded


def towers_per_host(num_towers: int, num_hosts: int) -> int:
    """The most towers any host runs (hosts take turns, so counts differ by at most one)."""
    return math.ceil(num_towers / num_hosts)


def assign_hosts(
    tower_cost: Sequence[float],
    tower_memory: Sequence[float],
    num_hosts: int,
    host_memory_bytes: float | None = None,
) -> np.ndarray:
    """LPT over towers: costliest first, to the least-loaded host that still has a free slot and room.

    Args:
        tower_cost: (K,) lookup cost per tower.
        tower_memory: (K,) bytes per tower.
        num_hosts: H.
        host_memory_bytes: memory of one host (None: unlimited).

    Returns:
        (K,) host of every tower.

    Raises:
        PartitionError: MEMORY if the towers do not fit the hosts.
    """
    cost = np.asarray(tower_cost, dtype=np.float64)
    mem = np.asarray(tower_memory, dtype=np.float64)
    cap = math.inf if host_memory_bytes is None else float(host_memory_bytes)

    def no_fit(t: int, _used: np.ndarray) -> PartitionError:
        return PartitionError(
            f"tower {t} ({mem[t]:,.0f} bytes) fits on no host with a free slot "
            f"(host memory {cap:,.0f} bytes); add hosts or host memory",
            PartitionErrorReason.MEMORY,
        )

    order = np.argsort(-cost, kind="stable")
    slots = towers_per_host(len(cost), num_hosts)
    return least_loaded(cost, mem, num_hosts, order, max_memory=cap, max_count=slots, no_fit=no_fit)
