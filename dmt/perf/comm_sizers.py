"""Bytes per destination of every ``torch.distributed`` collective, and the shape of its process group.

What is counted, from this rank's point of view: the bytes it *sends to other ranks* (never to
itself), by destination; :class:`GroupInfo` then splits the destinations into same-host and
other-host with :class:`~dmt.distributed.topology.Topology`.

- all-to-alls: exact, from the split sizes.
- reduce-scatter: chunk ``j`` of the input goes to member ``j``; all-gather: the input goes to every
  other member. Totals equal the ring algorithm's ``(n-1)/n * S`` (``S`` = the full tensor).
- all-reduce (and DDP's): the ring estimate ``2(n-1)/n * S``, as a reduce-scatter then an
  all-gather, i.e. ``2S/n`` to every other member.
- broadcast: the source sends ``S`` to every other member; the others send nothing.

These are *logical* bytes, independent of the backend's algorithm; the wire bytes of gloo or NCCL
(trees, rings, NVLS, protocol headers) differ. All-to-alls are point-to-point by nature, so their
split is what any backend must move. For all-reduce (and reduce-scatter / all-gather) the
same-host / other-host split is that of the direct exchange: a topology-aware algorithm moves
fewer bytes between hosts (a host-contiguous ring crosses hosts H times; a hierarchical one
``2(H-1)/H * S`` per host in all, vs. ``2(W-L)/W * S`` per rank here), so read DDP's cross-host
count as an upper bound.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from dmt.distributed.topology import Topology

# Each sizer takes the collective's bound arguments, the group's global ranks and this rank's index
# in it, and returns the bytes this rank sends to each member (by group index; its own entry is
# ignored) and the tensor whose dtype names the payload.
_Args = Mapping[str, Any]  # the collective's arguments by parameter name
_Sent = tuple[list[float], torch.Tensor]  # bytes to each group member, and the payload tensor
Sizer = Callable[[_Args, Sequence[int], int], _Sent]


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _even_chunks(total: float, n: int) -> list[float]:
    return [total / n] * n


def allreduce_sent(tensor: torch.Tensor, group_size: int) -> list[float]:
    """Bytes to each member of an all-reduce of ``tensor``: the ring estimate ``2(n-1)/n * S``.

    A reduce-scatter and an all-gather, ``S/n`` to each member in each.
    """
    return _even_chunks(2.0 * _nbytes(tensor), group_size)


def payload_kind(t: torch.Tensor) -> str:
    """The :class:`~dmt.perf.comm_summary.CommKey` payload of a collective on ``t``: "float" or "int"."""
    return "float" if (t.is_floating_point() or t.is_complex()) else "int"


def _sent_all_to_all_single(a: _Args, ranks: Sequence[int], me: int) -> _Sent:
    x: torch.Tensor = a["input"]
    splits = a.get("input_split_sizes")
    if splits is None or len(splits) == 0:  # equal split along dim 0
        return _even_chunks(_nbytes(x), len(ranks)), x
    rows = x.size(0) if x.dim() else 0
    row_bytes = _nbytes(x) / rows if rows else 0.0
    if len(splits) != len(ranks):
        raise ValueError(f"all_to_all_single got {len(splits)} input splits for a group of {len(ranks)}")
    return [int(s) * row_bytes for s in splits], x


def _sent_all_to_all(a: _Args, ranks: Sequence[int], me: int) -> _Sent:
    xs: list[torch.Tensor] = a["input_tensor_list"]
    return [float(_nbytes(t)) for t in xs], xs[me]


def _sent_reduce_scatter(a: _Args, ranks: Sequence[int], me: int) -> _Sent:
    xs: list[torch.Tensor] = a["input_list"]
    return [float(_nbytes(t)) for t in xs], xs[me]


def _sent_reduce_scatter_tensor(a: _Args, ranks: Sequence[int], me: int) -> _Sent:
    return _even_chunks(_nbytes(a["input"]), len(ranks)), a["input"]


def _sent_all_gather(a: _Args, ranks: Sequence[int], me: int) -> _Sent:
    return [float(_nbytes(a["tensor"]))] * len(ranks), a["tensor"]


def _sent_all_gather_into_tensor(a: _Args, ranks: Sequence[int], me: int) -> _Sent:
    return [float(_nbytes(a["input_tensor"]))] * len(ranks), a["input_tensor"]


def _sent_all_reduce(a: _Args, ranks: Sequence[int], me: int) -> _Sent:
    return allreduce_sent(a["tensor"], len(ranks)), a["tensor"]


def _sent_broadcast(a: _Args, ranks: Sequence[int], me: int) -> _Sent:
    src = ranks[a["group_src"]] if a.get("group_src") is not None else a["src"]
    sent = float(_nbytes(a["tensor"])) if ranks[me] == src else 0.0
    return [sent] * len(ranks), a["tensor"]


# torch.distributed function -> (collective kind, sizer). The deprecated underscore aliases are
# included so that older callers are counted too; names a torch version lacks are skipped.
SIZERS: dict[str, tuple[str, Sizer]] = {
    "all_to_all_single": ("all_to_all_single", _sent_all_to_all_single),
    "all_to_all": ("all_to_all", _sent_all_to_all),
    "reduce_scatter": ("reduce_scatter", _sent_reduce_scatter),
    "reduce_scatter_tensor": ("reduce_scatter", _sent_reduce_scatter_tensor),
    "_reduce_scatter_base": ("reduce_scatter", _sent_reduce_scatter_tensor),
    "all_gather": ("all_gather", _sent_all_gather),
    "all_gather_into_tensor": ("all_gather", _sent_all_gather_into_tensor),
    "_all_gather_base": ("all_gather", _sent_all_gather_into_tensor),
    "all_reduce": ("all_reduce", _sent_all_reduce),
    "broadcast": ("broadcast", _sent_broadcast),
}


def group_label(ranks: Sequence[int], topology: Topology) -> str:
    """Shape of a group of global ``ranks``: "world", "intra_host", "cross_host" (one per host) or "mixed".

    Example:
        >>> t = Topology(world_size=4, local_world_size=2)
        >>> [group_label(r, t) for r in ([0, 1, 2, 3], [2, 3], [1, 3], [0, 1, 2])]
        ['world', 'intra_host', 'cross_host', 'mixed']
    """
    hosts = [r // topology.local_world_size for r in ranks]
    if len(ranks) == topology.world_size:
        return "world"
    if len(set(hosts)) == 1:
        return "intra_host"
    if len(set(hosts)) == len(hosts):
        return "cross_host"
    return "mixed"


@dataclass(frozen=True)
class GroupInfo:
    """A process group as seen from this rank: global ranks, own index, shape, which are remote hosts."""

    ranks: tuple[int, ...]
    index: int
    label: str
    cross: tuple[bool, ...]

    @classmethod
    def of(cls, ranks: Sequence[int], topology: Topology) -> GroupInfo:
        """The group of global ``ranks`` seen from ``topology.rank``, which must be one of them."""
        ranks = tuple(ranks)
        me = topology.rank
        return cls(
            ranks=ranks,
            index=ranks.index(me),
            label=group_label(ranks, topology),
            cross=tuple(not topology.same_host(me, r) for r in ranks),
        )
