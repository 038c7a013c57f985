"""The types of communication counts: what a count is about (:class:`CommKey`) and how many bytes.

Each count is keyed by :class:`CommKey`: the collective kind (:data:`OPS`), the process group's
shape (:data:`GROUPS`), the phase ("forward" unless the collective runs inside autograd's backward,
or whatever :meth:`~dmt.perf.comm_counter.CommCounter.phase` forces), and the payload ("float":
embeddings, gradients, tower outputs; "int": ids, lengths, split sizes). The byte counter
(:mod:`dmt.perf.comm_counter`) and the analytic model (:mod:`dmt.perf.comm_model`) both answer in
:class:`CommSummary`, so a benchmark can print measured next to expected.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed import distributed_c10d as _c10d

OPS = ("all_to_all_single", "all_to_all", "reduce_scatter", "all_gather", "all_reduce", "broadcast", "ddp_allreduce")
# A process group is named by its shape, which is the same on every rank (its members are not:
# rank 0's peers are [0, 2], rank 1's are [1, 3]), so counts from all ranks add up per name.
GROUPS = ("world", "intra_host", "cross_host", "mixed")
PHASES = ("forward", "backward")
PAYLOADS = ("float", "int")


@dataclass(frozen=True, order=True)
class CommKey:
    """What a count is about: collective kind, group shape, phase and payload type."""

    op: str
    group: str
    phase: str
    payload: str


@dataclass(frozen=True)
class CommStats:
    """Collective calls and the bytes they sent off-rank (``bytes == cross_host + intra_host``)."""

    calls: int = 0
    bytes: float = 0.0
    cross_host: float = 0.0
    intra_host: float = 0.0

    def __add__(self, other: CommStats) -> CommStats:
        return CommStats(
            calls=self.calls + other.calls,
            bytes=self.bytes + other.bytes,
            cross_host=self.cross_host + other.cross_host,
            intra_host=self.intra_host + other.intra_host,
        )

    def scaled(self, factor: float) -> CommStats:
        """Bytes times ``factor``; the call count is kept."""
        f = factor
        return replace(self, bytes=self.bytes * f, cross_host=self.cross_host * f, intra_host=self.intra_host * f)


@dataclass(frozen=True)
class CommSummary:
    """Counts keyed by :class:`CommKey`: one rank's, all ranks' summed, or an analytic model's.

    Example:
        >>> s = CommSummary({CommKey("all_to_all_single", "world", "forward", "float"):
        ...                  CommStats(calls=2, bytes=96.0, cross_host=64.0, intra_host=32.0)})
        >>> s.total(phase="forward").cross_host, s.total(phase="backward").bytes
        (64.0, 0.0)
        >>> s.per_sample(32).total().bytes
        3.0
    """

    stats: Mapping[CommKey, CommStats] = field(default_factory=dict)

    def total(
        self,
        *,
        op: str | Sequence[str] | None = None,
        group: str | Sequence[str] | None = None,
        phase: str | Sequence[str] | None = None,
        payload: str | Sequence[str] | None = None,
    ) -> CommStats:
        """Sum of the entries matching every given filter (a value or a sequence of values)."""

        def match(value: str, wanted: str | Sequence[str] | None) -> bool:
            return wanted is None or value == wanted or (not isinstance(wanted, str) and value in wanted)

        out = CommStats()
        for k, s in self.stats.items():
            if match(k.op, op) and match(k.group, group) and match(k.phase, phase) and match(k.payload, payload):
                out = out + s
        return out

    def per_sample(self, global_batch: int) -> CommSummary:
        """Bytes divided by ``global_batch`` (samples per step over all ranks); calls are kept."""
        if global_batch < 1:
            raise ValueError(f"global_batch={global_batch} must be >= 1")
        return CommSummary({k: s.scaled(1.0 / global_batch) for k, s in self.stats.items()})

    def grouped(self, *fields: str) -> dict[tuple[str, ...], CommStats]:
        """Totals per distinct value of the named :class:`CommKey` fields, e.g. ``("op", "phase")``."""
        for f in fields:
            if f not in CommKey.__dataclass_fields__:
                raise ValueError(f"unknown field {f!r}; choose from {list(CommKey.__dataclass_fields__)}")
        out: dict[tuple[str, ...], CommStats] = {}
        for k, s in sorted(self.stats.items()):
            g = tuple(getattr(k, f) for f in fields)
            out[g] = out.get(g, CommStats()) + s
        return out

    def to_markdown(self, unit: str = "B") -> str:
        """One row per key: calls, off-rank, cross-host and intra-host bytes."""
        lines = [
            f"| collective | group | phase | payload | calls | off-rank {unit} | cross-host {unit} "
            f"| intra-host {unit} |",
            "|---|---|---|---|---:|---:|---:|---:|",
        ]
        for k, s in sorted(self.stats.items()):
            lines.append(
                f"| {k.op} | {k.group} | {k.phase} | {k.payload} | {s.calls} | {s.bytes:,.1f} | "
                f"{s.cross_host:,.1f} | {s.intra_host:,.1f} |"
            )
        return "\n".join(lines)


def reduce_summary(summary: CommSummary, group: dist.ProcessGroup | None = None) -> CommSummary:
    """Sum ``summary`` over the ranks of ``group`` (default: world); a collective, call it on all ranks.

    Keys missing on some ranks count as zero there. Uses the unpatched collectives, so calling it
    inside an active :class:`CommCounter` does not count itself.
    """
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return CommSummary(dict(summary.stats))
    keys_per_rank: list[Any] = [None] * dist.get_world_size(group)
    _c10d.all_gather_object(keys_per_rank, sorted(summary.stats), group=group)
    keys = sorted({k for ks in keys_per_rank for k in ks})
    mine = [summary.stats.get(k, CommStats()) for k in keys]
    values = torch.tensor([[s.calls, s.bytes, s.cross_host, s.intra_host] for s in mine], dtype=torch.float64)
    values = values.reshape(len(keys), 4)
    backend = str(dist.get_backend(group))
    if "nccl" in backend and torch.cuda.is_available():
        values = values.cuda()
    _c10d.all_reduce(values, group=group)
    rows = values.cpu().tolist()
    return CommSummary({k: CommStats(round(c), b, x, i) for k, (c, b, x, i) in zip(keys, rows)})
