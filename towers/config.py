"""Configs of the tower modules (TM) and of the global interaction, plus the compression rule.

Both configs are frozen, keyword-only dataclasses of JSON types, validated in ``__post_init__``.
A bad value raises :class:`TowerConfigError` (a ``ValueError`` via ``DmtError``) that names it.

Example:
    >>> cfg = TowerModuleConfig(kind="dot", compression=4, hidden=(64,))
    >>> TowerModuleConfig.from_dict(cfg.to_dict()) == cfg
    True
    >>> num_tower_outputs(num_features=6, compression=4.0)  # round(1.5) -> 2
    2
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from dmt.errors import DmtError

TOWER_KINDS = ("identity", "linear", "mlp", "dot", "dcn")
# A compressing dot tower's dot columns start normal with std DOT_WEIGHT_INIT / sqrt(pairs), not 0.
# At 0 an in-tower pair reaches the loss only through the product of two untrained things, its
# dot's weight and the pair structure of the embeddings: the embeddings get no gradient through the
# dots until the weights have grown, a saddle that some seeds leave late. Demo data, `dmt train`,
# row-wise Adagrad tables, 1 epoch, TP c=4, 12 seeds: at 0 AUC 0.775 (median 0.795, 4 runs below
# 0.75), at 0.3 0.780 (median 0.807, 2 below 0.75; the same 0.3 draw for every seed: 0.801);
# flat 0.794. Scales 0.1 / 1 / 3 (one draw, 6 seeds): 0.789 / 0.791 / 0.792. With per-coordinate
# Adagrad tables (the "small" preset's): 0.809 at 0 (seed 2 in the saddle: 0.739), 0.815 at 0.3.
# benchmarks/results/learning/README.md ("Stalls").
DOT_WEIGHT_INIT = 0.3
GLOBAL_KINDS = ("dot", "dcn", "concat")


class TowerConfigError(DmtError):
    """A tower-module or global-interaction config with a bad value."""


def num_tower_outputs(num_features: int, compression: float) -> int:
    """Number of D-dim vectors k_t a tower of ``num_features`` features emits at ratio ``compression``.

    ``k_t = max(1, floor(F_t / c + 1/2))``: F_t / c rounded half *up* (not Python's half-to-even
    ``round``, which would send F=3 and F=5 at c=2 to 2 and 2), and never below one vector so a
    tower always says something. Output bytes are ``k_t * D * element_size``, ~1/c of the identity's.

    Args:
        num_features: F_t >= 1.
        compression: c >= 1.

    Returns:
        k_t, with 1 <= k_t <= F_t.
    """
    if num_features < 1:
        raise TowerConfigError(f"num_features={num_features} must be >= 1")
    if not compression >= 1.0:
        raise TowerConfigError(f"compression={compression} must be >= 1")
    return max(1, math.floor(num_features / compression + 0.5))


def _check_kind(kind: Any, allowed: tuple[str, ...], what: str) -> None:
    if kind not in allowed:
        raise TowerConfigError(f"{what} kind={kind!r} is not one of {list(allowed)}")


def _check_int(name: str, value: Any, minimum: int) -> None:
    # bool is an int subclass; `hidden=True` is a bug, not a width of 1.
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise TowerConfigError(f"{name}={value!r} must be an integer >= {minimum}")


def _as_hidden(value: Any) -> tuple[int, ...]:
    """Accept a sequence of widths (JSON list) or a CLI string "64,32"; return a tuple."""
    if isinstance(value, str):
        try:
            value = [int(v) for v in value.replace(" ", "").split(",") if v]
        except ValueError:
            raise TowerConfigError(f"hidden={value!r} must be comma-separated integers, e.g. '64,32'") from None
    try:
        hidden = tuple(value)
    except TypeError:
        raise TowerConfigError(f"hidden={value!r} must be a sequence of layer widths") from None
    for h in hidden:
        _check_int(f"hidden width (in hidden={list(hidden)})", h, 1)
    return hidden


def _check_cross(kind: str, num_cross_layers: Any, cross_rank: Any) -> None:
    _check_int("num_cross_layers", num_cross_layers, 1)
    _check_int("cross_rank", cross_rank, 0)
    # A setting that would silently do nothing is an error, not a surprise later.
    if kind != "dcn" and (num_cross_layers != 1 or cross_rank != 0):
        raise TowerConfigError(
            f"num_cross_layers={num_cross_layers}, cross_rank={cross_rank} only apply to kind='dcn' "
            f"(got kind={kind!r}); leave them at their defaults"
        )


def _check_number(name: str, value: Any, minimum: float) -> None:
    # bool is an int subclass; `compression=True` is a bug, not 1.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < minimum:
        raise TowerConfigError(f"{name}={value!r} must be a finite number >= {minimum:g}")


def _check_dot_init(kind: str, dot_init: Any) -> None:
    if dot_init is None:
        return
    _check_number("dot_init", dot_init, 0)
    if kind != "dot":
        raise TowerConfigError(f"dot_init={dot_init} only applies to kind='dot' (got kind={kind!r}); leave it unset")


def _from_dict(cls: type, d: Mapping[str, Any]) -> Any:
    if not isinstance(d, Mapping):
        raise TowerConfigError(f"{cls.__name__} must come from a mapping, got {type(d).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise TowerConfigError(f"unknown {cls.__name__} keys {unknown}; known keys: {sorted(known)}")
    return cls(**d)


@dataclass(frozen=True, kw_only=True)
class TowerModuleConfig:
    """How every tower module of a plan is built (see ``towers.build_tower_modules``).

    Args:
        kind: "identity" (concatenation, the flat model's exact input), "linear" (projection),
            "mlp" (projection with a residual MLP branch), "dot" (in-tower pairwise dots, then
            projection) or "dcn" (in-tower cross network, then projection).
        compression: c >= 1; a tower of F features emits ``num_tower_outputs(F, c)`` D-dim vectors.
            Must be 1 for "identity", which keeps all F.
        hidden: widths of the residual MLP branch of the projection. Required for "mlp",
            optional for "dot"/"dcn", not allowed for "identity"/"linear". A CLI string
            "64,32" is accepted.
        num_cross_layers: cross layers of "dcn" towers.
        cross_rank: "dcn" only; 0 uses a full-rank ``CrossNet``, r > 0 a ``LowRankCrossNet`` of rank r.
        dot_init: "dot" only: the initial scale of the projection's weights on the in-tower dots
            (std ``dot_init / sqrt(pairs)``; 0 starts them at 0); None: :data:`DOT_WEIGHT_INIT`.
    """

    kind: str = "identity"
    compression: float = 1.0
    hidden: tuple[int, ...] = ()
    num_cross_layers: int = 1
    cross_rank: int = 0  # 0: full rank; low rank pays off once F*D is in the hundreds
    dot_init: float | None = None

    def __post_init__(self) -> None:
        _check_kind(self.kind, TOWER_KINDS, "tower")
        c = self.compression
        _check_number("compression", c, 1)
        object.__setattr__(self, "compression", float(c))
        object.__setattr__(self, "hidden", _as_hidden(self.hidden))
        if self.kind == "identity" and self.compression != 1.0:
            raise TowerConfigError(
                f"kind='identity' keeps all features, so compression={c} cannot apply; "
                "use kind='linear' (or 'mlp', 'dot', 'dcn') to compress"
            )
        if self.kind in ("identity", "linear") and self.hidden:
            raise TowerConfigError(
                f"kind={self.kind!r} has no hidden layers (got hidden={list(self.hidden)}); use kind='mlp'"
            )
        if self.kind == "mlp" and not self.hidden:
            raise TowerConfigError("kind='mlp' needs hidden widths, e.g. hidden=(128,); or use kind='linear'")
        _check_cross(self.kind, self.num_cross_layers, self.cross_rank)
        _check_dot_init(self.kind, self.dot_init)

    @property
    def dot_weight_init(self) -> float:
        """The dot columns' initial scale the "dot" tower is built with."""
        return DOT_WEIGHT_INIT if self.dot_init is None else self.dot_init

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TowerModuleConfig:
        return _from_dict(cls, d)


@dataclass(frozen=True, kw_only=True)
class GlobalInteractionConfig:
    """The global interaction over [dense, tower outputs] (see ``towers.build_global_interaction``).

    Args:
        kind: "dot" (DLRM pairwise dots, torchrec ``InteractionArch``), "dcn" (cross network over
            the concatenation, torchrec ``InteractionDCNArch``) or "concat" (concatenation, then
            an optional MLP).
        hidden: "concat" only: MLP widths after the concatenation; () returns the concatenation.
        num_cross_layers: cross layers of "dcn".
        cross_rank: "dcn" only; 0 uses a full-rank ``CrossNet``, r > 0 a ``LowRankCrossNet``.
        self_dots: "dot" only: also each vector's self-dot, which carries a compressed tower's
            in-tower pairs (see ``towers.interaction.GlobalDotInteraction``).
        raw_towers: "dot" only: also pass the tower vectors themselves to the over-arch.
    """

    kind: str = "dot"
    hidden: tuple[int, ...] = ()
    num_cross_layers: int = 1
    cross_rank: int = 0
    self_dots: bool = False
    raw_towers: bool = False

    def __post_init__(self) -> None:
        _check_kind(self.kind, GLOBAL_KINDS, "global interaction")
        object.__setattr__(self, "hidden", _as_hidden(self.hidden))
        if self.hidden and self.kind != "concat":
            raise TowerConfigError(
                f"hidden={list(self.hidden)} only applies to the global kind='concat' (got {self.kind!r})"
            )
        _check_cross(self.kind, self.num_cross_layers, self.cross_rank)
        for name in ("self_dots", "raw_towers"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise TowerConfigError(f"{name}={value!r} must be true or false")
            if value and self.kind != "dot":
                raise TowerConfigError(f"{name}=True only applies to the global kind='dot' (got {self.kind!r})")

    @classmethod
    def hierarchical(cls) -> GlobalInteractionConfig:
        """The global interaction for compressed towers: dots with self-dots, plus the raw towers."""
        return cls(kind="dot", self_dots=True, raw_towers=True)

    def output_dim(self, num_tower_outputs: int, embedding_dim: int) -> int:
        """Width of the interaction output for K = ``num_tower_outputs`` vectors of dim D.

        dot: D + K + K(K-1)/2 (dense, dense-tower dots, tower-tower dots), + K+1 self-dots with
        ``self_dots``, + K*D with ``raw_towers``; dcn and concat without hidden layers: (K+1)*D;
        concat with hidden layers: hidden[-1].
        """
        k, d = num_tower_outputs, embedding_dim
        if self.kind == "dot":
            return d + k + k * (k - 1) // 2 + (k + 1) * self.self_dots + k * d * self.raw_towers
        if self.kind == "concat" and self.hidden:
            return self.hidden[-1]
        return (k + 1) * d

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GlobalInteractionConfig:
        return _from_dict(cls, d)
