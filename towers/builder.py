"""Build one tower module per tower of a plan, and report each tower's size, FLOPs and output bytes.

Example:
    >>> from dmt.plan import TowerPlan
    >>> plan = TowerPlan.from_groups([["a", "b", "c", "d"], ["e", "f"]], num_hosts=2)
    >>> towers = build_tower_modules(plan, TowerModuleConfig(kind="linear", compression=2), embedding_dim=4)
    >>> [t.num_outputs for t in towers]
    [2, 1]
    >>> print(format_tower_report(tower_reports(plan, towers)))  # doctest: +NORMALIZE_WHITESPACE
    | tower | kind | features | outputs | params | FLOPs/sample | in B/sample | out B/sample | c |
    |---|---|---:|---:|---:|---:|---:|---:|---:|
    | tower_0 | ProjectionTower | 4 | 2 | 136 | 256 | 64 | 32 | 2.00 |
    | tower_1 | ProjectionTower | 2 | 1 | 36 | 64 | 32 | 16 | 2.00 |
    | total | | 6 | 3 | 172 | 320 | 96 | 48 | 2.00 |
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import nn

from towers.config import TowerConfigError, TowerModuleConfig
from towers.modules import DCNTower, DotTower, IdentityTower, ProjectionTower, TowerModule

if TYPE_CHECKING:  # only for the annotation: towers/ needs nothing else from dmt at runtime
    from dmt.plan import TowerPlan


def build_tower_module(num_features: int, embedding_dim: int, config: TowerModuleConfig) -> TowerModule:
    """One tower module of ``config.kind`` for a tower of F = ``num_features`` features of dim D."""
    f, d, c = num_features, embedding_dim, config.compression
    if config.kind == "identity":
        return IdentityTower(f, d)
    if config.kind in ("linear", "mlp"):
        return ProjectionTower(f, d, c, config.hidden)
    if config.kind == "dot":
        return DotTower(f, d, c, config.hidden, dot_init=config.dot_weight_init)
    assert config.kind == "dcn", config.kind  # the config validated the kind
    return DCNTower(f, d, c, config.hidden, num_cross_layers=config.num_cross_layers, cross_rank=config.cross_rank)


def build_tower_modules(plan: TowerPlan, config: TowerModuleConfig, embedding_dim: int) -> nn.ModuleList:
    """One tower module per tower of ``plan``, in the plan's logical tower order.

    Module i reads tower i's ``KeyedTensor`` (keys ``plan.towers[i].features``). Concatenating the
    outputs in this order gives the global interaction's ``tower_outputs`` of K = sum(k_t) vectors.
    Works under ``torch.device("meta")``: then ``to_empty(device=...)`` and call each
    module's ``init_weights()``.

    Args:
        plan: a ``dmt.plan.TowerPlan`` (anything with ``.towers``, each with ``.features``).
        config: the tower-module config, shared by all towers.
        embedding_dim: D, the pooled embedding dim of every feature.

    Returns:
        ``nn.ModuleList`` of :class:`towers.modules.TowerModule`, one per tower.
    """
    if embedding_dim < 1:
        raise TowerConfigError(f"embedding_dim={embedding_dim} must be >= 1")
    return nn.ModuleList(build_tower_module(len(t.features), embedding_dim, config) for t in plan.towers)


@dataclass(frozen=True)
class TowerReport:
    """Size and cost of one tower module, per sample.

    Args:
        name: the tower's name in the plan.
        kind: the tower module's class name.
        num_features: F_t.
        num_outputs: k_t.
        num_params: parameters of the tower module (not of its embedding tables).
        flops_per_sample: 2 x multiply-adds of the forward (see ``TowerModule.flops_per_sample``).
        input_bytes_per_sample: F_t * D * element size: what an identity tower would send.
        output_bytes_per_sample: k_t * D * element size: what this tower sends across hosts.
    """

    name: str
    kind: str
    num_features: int
    num_outputs: int
    num_params: int
    flops_per_sample: int
    input_bytes_per_sample: int
    output_bytes_per_sample: int

    @property
    def compression(self) -> float:
        """The realised ratio F_t / k_t (the configured c up to rounding)."""
        return self.input_bytes_per_sample / self.output_bytes_per_sample


def tower_reports(plan: TowerPlan, modules: Sequence[TowerModule], *, element_size: int = 4) -> list[TowerReport]:
    """A :class:`TowerReport` per tower; works for modules on the meta device.

    Args:
        plan: the plan ``modules`` were built from.
        modules: e.g. ``build_tower_modules(plan, ...)``.
        element_size: bytes per output element (4 for fp32, 2 for bf16/fp16).
    """
    if len(modules) != len(plan.towers):
        raise ValueError(f"{len(modules)} tower modules for a plan of {len(plan.towers)} towers")
    if element_size < 1:
        raise ValueError(f"element_size={element_size} must be >= 1")
    reports = []
    for tower, m in zip(plan.towers, modules):
        if m.num_features != len(tower.features):
            raise ValueError(
                f"tower {tower.name!r} has {len(tower.features)} features but its module has "
                f"{m.num_features}; "
                "were the modules built from this plan?"
            )
        reports.append(
            TowerReport(
                name=tower.name,
                kind=type(m).__name__,
                num_features=m.num_features,
                num_outputs=m.num_outputs,
                num_params=sum(p.numel() for p in m.parameters()),
                flops_per_sample=m.flops_per_sample(),
                input_bytes_per_sample=m.num_features * m.embedding_dim * element_size,
                output_bytes_per_sample=m.output_dim * element_size,
            )
        )
    return reports


def format_tower_report(reports: Sequence[TowerReport]) -> str:
    """A markdown table of ``reports`` with a total row; c is the realised compression."""
    lines = [
        "| tower | kind | features | outputs | params | FLOPs/sample | in B/sample | out B/sample | c |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in reports:
        lines.append(
            f"| {r.name} | {r.kind} | {r.num_features} | {r.num_outputs} | {r.num_params:,} | "
            f"{r.flops_per_sample:,} | {r.input_bytes_per_sample:,} | {r.output_bytes_per_sample:,} | "
            f"{r.compression:.2f} |"
        )
    total_in = sum(r.input_bytes_per_sample for r in reports)
    total_out = sum(r.output_bytes_per_sample for r in reports)
    lines.append(
        f"| total | | {sum(r.num_features for r in reports)} | {sum(r.num_outputs for r in reports)} | "
        f"{sum(r.num_params for r in reports):,} | {sum(r.flops_per_sample for r in reports):,} | "
        f"{total_in:,} | {total_out:,} | {total_in / total_out:.2f} |"
    )
    return "\n".join(lines)
