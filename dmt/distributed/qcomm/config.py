""":class:`CommCompression`: how the embedding all-to-alls are compressed, per direction (JSON and CLI form)."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dmt.choices import CommPrecision
from dmt.distributed.qcomm.lossy import lossy_width

PRECISIONS = CommPrecision.names()


def _optional(cast: Any) -> Any:
    return lambda s: None if s.lower() in ("", "none", "null") else cast(s)


def _bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{s!r} is not a boolean")


@dataclass(frozen=True, kw_only=True)
class CommCompression:
    """How the embedding all-to-alls are compressed, per direction.

    Args:
        forward: precision of the forward messages (embeddings): one of :data:`PRECISIONS`.
        backward: precision of the backward messages (their gradients).
        lossy_eb: the range-relative error bound of ``"lossy"`` (required when a direction is lossy).
        lossy_block: values per lossy block (header per block); must divide every chunk.
        lossy_warmup_iters: iterations over which the bound decays from ``lossy_warmup_factor``
            times ``lossy_eb`` to ``lossy_eb`` (0: constant).
        lossy_warmup_factor: the bound's multiplier at iteration 0.
        lossy_large_rows: tables with at least this many rows are "large" (None: one class).
        lossy_large_factor: bound multiplier for messages carrying a large table.
        fp8_row_dim: fbgemm's row-wise FP8 group (``QCommsConfig.fp8_quantize_dim``); needed for fp8
            on the flat all-to-all messages (CUDA only).
        intra_host: DMT also compresses the intra-host comms of the towers' sharded lookups
            (default: only the cross-host exchange, the slow links).
        track_error: record the observed error of every message (decodes it once more).

    Example:
        >>> c = CommCompression.parse("lossy:bf16,lossy_eb=0.02,lossy_warmup_iters=100")
        >>> c.forward, c.backward, c.lossy_eb, c.lossy_warmup_iters
        ('lossy', 'bf16', 0.02, 100)
        >>> CommCompression.from_dict(c.to_dict()) == c
        True
    """

    forward: str = "fp32"
    backward: str = "fp32"
    lossy_eb: float | None = None
    lossy_block: int = 32  # fbgemm's INT8 row size: divides B x D for any local batch B % 32 == 0
    lossy_warmup_iters: int = 0
    lossy_warmup_factor: float = 2.0
    lossy_large_rows: int | None = None
    lossy_large_factor: float = 0.5
    fp8_row_dim: int | None = None
    intra_host: bool = False
    track_error: bool = False

    def __post_init__(self) -> None:
        for name in ("forward", "backward"):
            if getattr(self, name) not in PRECISIONS:
                raise ValueError(f"{name}={getattr(self, name)!r} is not one of {list(PRECISIONS)}")
        if self.uses_lossy:
            if self.lossy_eb is None or not 0 < self.lossy_eb < 1:
                raise ValueError(f"lossy_eb={self.lossy_eb} must be in (0, 1) when a direction is 'lossy'")
            lossy_width(self.lossy_eb * self._tightest_factor)  # raises when 16 bits are not enough
        elif self.lossy_eb is not None:
            warnings.warn(f"lossy_eb={self.lossy_eb} has no effect: no direction is 'lossy'", stacklevel=3)
        if self.lossy_block < 1:
            raise ValueError(f"lossy_block={self.lossy_block} must be >= 1")
        if self.lossy_warmup_iters < 0 or self.lossy_warmup_factor < 1:
            raise ValueError(
                f"lossy_warmup_iters={self.lossy_warmup_iters} must be >= 0 and "
                f"lossy_warmup_factor={self.lossy_warmup_factor} >= 1"
            )
        if not 0 < self.lossy_large_factor <= 1:
            raise ValueError(f"lossy_large_factor={self.lossy_large_factor} must be in (0, 1]")

    @property
    def uses_lossy(self) -> bool:
        return "lossy" in (self.forward, self.backward)

    @property
    def is_exact(self) -> bool:
        """fp32 both ways: torchrec's uncompressed path."""
        return self.forward == self.backward == "fp32"

    @property
    def _tightest_factor(self) -> float:
        return self.lossy_large_factor if self.lossy_large_rows is not None else 1.0

    def class_factor(self, rows: int) -> float:
        """The bound multiplier for messages whose largest table has ``rows`` rows."""
        large = self.lossy_large_rows is not None and rows >= self.lossy_large_rows
        return self.lossy_large_factor if large else 1.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CommCompression:
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown CommCompression fields {unknown}")
        return cls(**d)

    @classmethod
    def parse(cls, spec: str) -> CommCompression:
        """From a CLI string: ``"fp16"`` (both ways), ``"FWD:BWD"``, then optional ``,field=value`` pairs."""
        head, *pairs = [p.strip() for p in spec.split(",")]
        forward, _, backward = head.partition(":")
        kwargs: dict[str, Any] = {"forward": forward, "backward": backward or forward}
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep or key not in _PARSERS:
                raise ValueError(f"bad comm compression option {pair!r}; expected one of {sorted(_PARSERS)}=VALUE")
            kwargs[key] = _PARSERS[key](value)
        return cls(**kwargs)


_PARSERS: dict[str, Any] = {
    "lossy_eb": _optional(float),
    "lossy_block": int,
    "lossy_warmup_iters": int,
    "lossy_warmup_factor": float,
    "lossy_large_rows": _optional(int),
    "lossy_large_factor": float,
    "fp8_row_dim": _optional(int),
    "intra_host": _bool,
    "track_error": _bool,
}
