"""Compressed embedding all-to-alls: torchrec's quantized comms plus an error-bounded lossy codec.

torchrec compresses the pooled-embedding collectives through a *codec registry*: a dict from
``CommOp`` name to ``QuantizedCommCodecs(forward=..., backward=...)`` that a sharder hands to its
sharded modules. DMT uses exactly that mechanism, nothing beside it:

* ``fp16`` / ``bf16`` / ``int8`` / ``fp8`` come from torchrec's ``QCommsConfig`` and
  ``get_qcomm_codecs_registry`` (fbgemm's codecs), forward and backward chosen separately;
* ``lossy`` is :class:`ErrorBoundedCodec`, a codec of torchrec's ``QuantizedCommCodec`` protocol,
  put into the same registry for the pooled all-to-all.

:class:`CommCompression` is the JSON/CLI-friendly config, :func:`comm_codecs_registry` the factory
(``dmt.distributed.tower_sharding.shard(..., comm_compression=...)`` and
``dmt.distributed.flat.shard_flat`` call it), and
:func:`codec_stats` / :func:`set_iteration` read the byte/error counters and drive the bound's
iteration schedule on a sharded model.

The lossy codec
---------------
Values are cut into blocks of ``block`` consecutive values (the flat message torchrec hands to
``encode``). Each block is quantized linearly between its own min and max to ``w``-bit codes, and
travels as ``[min: f32][max: f32][w: u8][codes: ceil(block * w / 8) bytes]`` (little-endian), so a
receiver decodes every block from its own bytes. The guarantee, for every value ``x`` of a block::

    |x - x_hat| <= eb * (max - min)        (block max/min; hence also the tensor's)

Constant blocks round-trip exactly (all codes 0, ``x_hat = min``). NaN or inf raise
:class:`CommCodecError` -- on the rank that holds them, inside the collective, so its peers wait
in the all-to-all until the process group's timeout; the error names the cause.

*Why the width is not chosen from the data.* torchrec sizes the all-to-all's splits with
``calc_quantized_size(numel)`` on both ends, from element counts only (the receiver never sees the
sender's data before the exchange), so the encoded size must follow from ``(numel, config)``. With
a bound relative to the range, the number of levels a block needs does not depend on its values
either: steps of ``(max - min) / (2**w - 1)`` keep the error within half a step, so the smallest
``w`` in (4, 8, 16) with ``2**w - 1 >= 1 / eb`` (the factor 2 pays for the final rounding to
float32, which can at most double a reconstruction error; a 0.1% margin pays for float64
arithmetic) holds the bound for any data. The width then depends only on the *effective* bound,
which all ranks compute alike.

*Why blocks.* ``encode`` gets the whole message -- every destination's chunk concatenated -- and
never the chunk boundaries (the backward pass passes a flat tensor), yet each chunk must carry its
own header. Fixed blocks that never straddle a chunk do that; so every chunk (``B x D`` values for
a local batch ``B``) must be a multiple of ``block`` (default 32, as fbgemm's INT8 rows): a power
of two dividing the local batch size always is. Otherwise :class:`CommCodecError` says so. Per
block also means the bound is tighter than per tensor: each block has its own range.

*Dual-level adaptive bound.* The effective bound is
``eb_eff = eb * class_factor * schedule(iteration)``:

- class factor: the message's tables -- ``lossy_large_factor`` (default 0.5, i.e. tighter) when
  the largest table the registry's module holds has at least ``lossy_large_rows`` rows, else 1.
  torchrec gives one registry to a whole sharded module and one all-to-all carries all its local
  tables/towers, so the class resolves per registry: the tightest class among its tables.
- iteration schedule: ``lossy_warmup_factor`` (default 2x) at iteration 0, decaying linearly to 1x
  at ``lossy_warmup_iters`` (0: no schedule). Early training tolerates coarser embeddings. Every
  rank must call :func:`set_iteration` with the same step (the width, hence the split sizes,
  follows the bound); a rank that disagrees makes decode raise :class:`CommCodecError` (the header
  carries the width) instead of decoding garbage.

Byte cost per block: 9 header bytes + ``block * w / 8``; with the default block of 32 an fp32
message shrinks 3.1x at 8 bits, 5.1x at 4 bits, 1.75x at 16 bits (so below ``eb`` ~ 4e-3 fp16,
2x with a relative rather than range-relative error, is the cheaper choice).

Example:
    >>> cfg = CommCompression(forward="lossy", backward="fp16", lossy_eb=0.01)
    >>> registry = comm_codecs_registry(cfg, device=torch.device("cpu"))
    >>> sorted(registry)
    ['POOLED_EMBEDDINGS_ALL_TO_ALL', 'POOLED_EMBEDDINGS_REDUCE_SCATTER', 'SEQUENCE_EMBEDDINGS_ALL_TO_ALL']
    >>> x = torch.randn(64)
    >>> codec = registry["POOLED_EMBEDDINGS_ALL_TO_ALL"].forward
    >>> ctx = codec.create_context()
    >>> y = codec.encode(x, ctx)
    >>> y.dtype, y.numel() == codec.calc_quantized_size(64, ctx), y.numel()
    (torch.uint8, True, 82)
    >>> bool(((codec.decode(y, ctx) - x).abs() <= 0.01 * (x.max() - x.min())).all())
    True
"""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torchrec.distributed.fbgemm_qcomm_codec import (
    CommType,
    QCommsConfig,
    get_qcomm_codecs,
    get_qcomm_codecs_registry,
)
from torchrec.distributed.types import CommOp, NoOpQuantizedCommCodec, QuantizedCommCodecs, ShardedModule

from dmt.errors import DmtError

__all__ = [
    "PRECISIONS",
    "CodecStats",
    "CommCodecError",
    "CommCompression",
    "CountingCodec",
    "ErrorBoundedCodec",
    "LossySchedule",
    "codec_stats",
    "comm_codecs_registry",
    "largest_table_rows",
    "lossy_decode",
    "lossy_encode",
    "lossy_encoded_size",
    "lossy_width",
    "set_iteration",
]

PRECISIONS = ("fp32", "fp16", "bf16", "fp8", "int8", "lossy")
WIDTHS = (4, 8, 16)
HEADER_BYTES = 9  # min f32, max f32, width u8
# Levels are chosen for eb / (1 + _MARGIN): the slack absorbs float64 rounding in encode/decode.
_MARGIN = 1e-3
_A2A = CommOp.POOLED_EMBEDDINGS_ALL_TO_ALL.name
_FBGEMM_OPS = (
    CommOp.POOLED_EMBEDDINGS_ALL_TO_ALL,
    CommOp.POOLED_EMBEDDINGS_REDUCE_SCATTER,
    CommOp.SEQUENCE_EMBEDDINGS_ALL_TO_ALL,
)


class CommCodecError(DmtError):
    """A message a comm codec cannot carry: non-finite values, a size that does not fit its blocks,
    ranks that disagree on its width, or a precision the installed fbgemm cannot run here."""


# ------------------------------------------------------------------------------- lossy kernel
def lossy_width(eb: float) -> int:
    """The smallest code width (bits) that holds ``|x - x_hat| <= eb * (max - min)`` for any data.

    Example:
        >>> [lossy_width(eb) for eb in (0.1, 0.01, 1e-3)]
        [4, 8, 16]
    """
    if not eb > 0:
        raise ValueError(f"eb={eb} must be > 0")
    needed = (1.0 + _MARGIN) / eb  # levels - 1; see the module docstring for the factor 2 it hides
    for width in WIDTHS:
        if (1 << width) - 1 >= needed:
            return width
    raise ValueError(
        f"eb={eb:g} needs more than {WIDTHS[-1]}-bit codes (eb >= {(1 + _MARGIN) / ((1 << WIDTHS[-1]) - 1):.3g}); "
        "use fp16/bf16 comms for tighter errors"
    )


def lossy_encoded_size(numel: int, width: int, block: int) -> int:
    """Bytes of ``numel`` values encoded with ``width``-bit codes in blocks of ``block``."""
    if numel % block:
        raise CommCodecError(
            f"lossy comm codec: a message chunk of {numel} values is not a multiple of block={block}; "
            "every chunk is (local batch x embedding dims) values, so choose a lossy_block dividing the "
            "local batch size (a power of two), or a batch size that is a multiple of it"
        )
    return numel // block * _block_bytes(width, block)


def _block_bytes(width: int, block: int) -> int:
    return HEADER_BYTES + (block * width + 7) // 8  # an odd block's 4-bit codes end in half a byte


def _f32_to_bytes(t: torch.Tensor) -> torch.Tensor:
    """[N] float32 -> [N, 4] uint8, little-endian whatever the host's byte order."""
    bits = t.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    return torch.stack([(bits >> s) & 0xFF for s in (0, 8, 16, 24)], dim=1).to(torch.uint8)


def _bytes_to_f32(b: torch.Tensor) -> torch.Tensor:
    """[N, 4] uint8 (little-endian) -> [N] float32."""
    b = b.to(torch.int64)
    bits = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16) | (b[:, 3] << 24)
    bits = torch.where(bits >= 1 << 31, bits - (1 << 32), bits)  # to int32's two's complement
    return bits.to(torch.int32).view(torch.float32)


def _pack(q: torch.Tensor, width: int) -> torch.Tensor:
    """[N, K] int32 codes < 2**width -> [N, ceil(K * width / 8)] uint8."""
    if width == 4:
        if q.size(1) % 2:
            q = torch.nn.functional.pad(q, (0, 1))
        return (q[:, 0::2] | (q[:, 1::2] << 4)).to(torch.uint8)
    if width == 8:
        return q.to(torch.uint8)
    return torch.stack([q & 0xFF, q >> 8], dim=2).reshape(q.size(0), -1).to(torch.uint8)


def _unpack(codes: torch.Tensor, width: int, block: int) -> torch.Tensor:
    """Inverse of :func:`_pack`: [N, ceil(K * width / 8)] uint8 -> [N, K] int32."""
    c = codes.to(torch.int32)
    if width == 4:
        return torch.stack([c & 0xF, c >> 4], dim=2).reshape(c.size(0), -1)[:, :block]
    if width == 8:
        return c
    c = c.reshape(c.size(0), block, 2)
    return c[..., 0] | (c[..., 1] << 8)


def _check_finite(x: torch.Tensor) -> None:
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        nan = int(torch.isnan(x).sum())
        raise CommCodecError(
            f"lossy comm codec: the message holds {nan} NaN and {int((~finite).sum()) - nan} inf values "
            f"out of {x.numel()}; a range-relative error bound needs finite values (did training diverge?)"
        )


def lossy_encode(x: torch.Tensor, width: int, block: int) -> torch.Tensor:
    """Encode the values of ``x`` (any shape, float) into a flat uint8 message; see the module docstring.

    Raises:
        CommCodecError: NaN/inf in ``x``, or ``x.numel()`` not a multiple of ``block``.
    """
    size = lossy_encoded_size(x.numel(), width, block)
    _check_finite(x)
    xb = x.detach().reshape(-1, block).to(torch.float32)  # [N, K]; fp16/bf16 fit exactly
    lo, hi = xb.amin(dim=1), xb.amax(dim=1)
    lo64, hi64 = lo.double(), hi.double()
    step = (hi64 - lo64) / ((1 << width) - 1)
    # Constant blocks: x - lo is 0, so any non-zero divisor gives code 0 and an exact decode.
    scaled = (xb.double() - lo64[:, None]) / step.masked_fill(step == 0, 1.0)[:, None]
    q = scaled.round_().clamp_(0, (1 << width) - 1).to(torch.int32)
    width_col = torch.full((xb.size(0), 1), width, dtype=torch.uint8, device=x.device)
    out = torch.cat([_f32_to_bytes(lo), _f32_to_bytes(hi), width_col, _pack(q, width)], dim=1).reshape(-1)
    assert out.numel() == size, (out.numel(), size)
    return out


def lossy_decode(message: torch.Tensor, width: int, block: int) -> torch.Tensor:
    """Decode a :func:`lossy_encode` message (or several concatenated) into flat float32 values.

    Raises:
        CommCodecError: a size that is not whole blocks, or blocks encoded with another width.
    """
    row = _block_bytes(width, block)
    if message.numel() % row:
        raise CommCodecError(
            f"lossy comm codec: received {message.numel()} bytes, not a whole number of {row}-byte blocks "
            f"({width}-bit codes, block={block}); do all ranks use the same CommCompression?"
        )
    rows = message.reshape(-1, row)
    widths = rows[:, 8]
    if rows.size(0) and not bool((widths == width).all()):
        seen = sorted(int(w) for w in widths.unique())
        raise CommCodecError(
            f"lossy comm codec: expected {width}-bit blocks, received {seen}-bit ones; ranks disagree on the "
            "bound -- call dmt.distributed.qcomm.set_iteration with the same step on every rank"
        )
    lo = _bytes_to_f32(rows[:, 0:4]).double()[:, None]
    hi = _bytes_to_f32(rows[:, 4:8]).double()[:, None]
    q = _unpack(rows[:, HEADER_BYTES:], width, block).double()
    y = lo + q * ((hi - lo) / ((1 << width) - 1))
    # Clamping to the block's range only moves a value towards the true one.
    return torch.minimum(torch.maximum(y, lo), hi).to(torch.float32).reshape(-1)


# ------------------------------------------------------------------------------- accounting
@dataclass
class CodecStats:
    """What a codec saw: messages, values, bytes before/after encoding, and (if tracked) errors.

    ``max_error_to_bound`` is the largest ``|x - x_hat| / (eb_eff * block range)`` of the lossy
    codec (<= 1 means the bound held); ``max_abs_error`` the largest ``|x - x_hat|`` of any codec.
    Both stay 0 unless the config's ``track_error`` is on (it decodes every message once more).
    """

    messages: int = 0
    values: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    max_abs_error: float = 0.0
    max_error_to_bound: float = 0.0

    @property
    def ratio(self) -> float:
        """bytes_in / bytes_out (1.0 before any message)."""
        return self.bytes_in / self.bytes_out if self.bytes_out else 1.0

    def __add__(self, other: CodecStats) -> CodecStats:
        return CodecStats(
            messages=self.messages + other.messages,
            values=self.values + other.values,
            bytes_in=self.bytes_in + other.bytes_in,
            bytes_out=self.bytes_out + other.bytes_out,
            max_abs_error=max(self.max_abs_error, other.max_abs_error),
            max_error_to_bound=max(self.max_error_to_bound, other.max_error_to_bound),
        )

    def record(self, x: torch.Tensor, encoded: torch.Tensor) -> None:
        self.messages += 1
        self.values += x.numel()
        self.bytes_in += x.numel() * x.element_size()
        self.bytes_out += encoded.numel() * encoded.element_size()

    def record_error(self, x: torch.Tensor, decoded: torch.Tensor) -> torch.Tensor:
        """Track ``max |x - decoded|``; returns the per-value error (float64, flat)."""
        err = (x.detach().reshape(-1).double() - decoded.reshape(-1)[: x.numel()].double()).abs()
        if err.numel():
            self.max_abs_error = max(self.max_abs_error, float(err.max()))
        return err


# ------------------------------------------------------------------------------- lossy codec
@dataclass
class LossySchedule:
    """The effective bound ``eb * class_factor * warmup(iteration)``; shared by a registry's codecs.

    ``warmup`` is ``warmup_factor`` at iteration 0, decaying linearly to 1 at ``warmup_iters``.

    Example:
        >>> s = LossySchedule(eb=0.003, warmup_iters=10, warmup_factor=2.0)
        >>> [round(s.effective_eb(i), 4) for i in (0, 5, 10, 99)], s.width(0), s.width(10)
        ([0.006, 0.0045, 0.003, 0.003], 8, 16)
    """

    eb: float
    class_factor: float = 1.0
    warmup_iters: int = 0
    warmup_factor: float = 2.0
    iteration: int = 0

    def effective_eb(self, iteration: int | None = None) -> float:
        it = self.iteration if iteration is None else iteration
        warm = 1.0
        if self.warmup_iters > 0 and it < self.warmup_iters:
            warm = self.warmup_factor - (self.warmup_factor - 1.0) * it / self.warmup_iters
        return self.eb * self.class_factor * warm

    def width(self, iteration: int | None = None) -> int:
        return lossy_width(self.effective_eb(iteration))


@dataclass
class _LossyContext:
    """Per-message state: the width fixed at ``create_context``, so one message never mixes two.

    ``row_dim`` and ``padded_dim_sum_per_rank`` are the fields torchrec's collectives read from
    fbgemm's context; the lossy codec needs neither (no row-wise FP8, no padding).
    """

    width: int
    eb: float
    row_dim: int = -1
    padded_dim_sum_per_rank: list[int] | None = None


class ErrorBoundedCodec:
    """torchrec ``QuantizedCommCodec``: ``|x - x_hat| <= eb_eff * (block max - block min)`` per value.

    Args:
        schedule: the effective bound (shared with the registry's other lossy codec).
        block: values per block; every all-to-all chunk must be a multiple of it.
        track_error: also decode every message and record the error in :attr:`stats`.
    """

    def __init__(self, schedule: LossySchedule, block: int = 32, track_error: bool = False) -> None:
        if block < 1:
            raise ValueError(f"block={block} must be >= 1")
        self.schedule = schedule
        self.block = block
        self.track_error = track_error
        self.stats = CodecStats()

    @property
    def quantized_dtype(self) -> torch.dtype:
        return torch.uint8

    def create_context(self) -> _LossyContext:
        return _LossyContext(width=self.schedule.width(), eb=self.schedule.effective_eb())

    def _context(self, ctx: _LossyContext | None) -> _LossyContext:
        return ctx if ctx is not None else self.create_context()

    def padded_size(
        self, input_tensor: torch.Tensor, dim_per_rank: list[int], my_rank: int, qcomm_ctx: Any
    ) -> tuple[int, int]:
        """No padding: (the input's row width -- or length if 1-D --, 0), as fbgemm's unpadded codecs."""
        return (input_tensor.shape[0] if input_tensor.dim() == 1 else input_tensor.shape[1]), 0

    def calc_quantized_size(self, input_len: int, ctx: _LossyContext | None = None) -> int:
        return lossy_encoded_size(input_len, self._context(ctx).width, self.block)

    def encode(self, input_tensor: torch.Tensor, ctx: _LossyContext | None = None) -> torch.Tensor:
        c = self._context(ctx)
        with torch.no_grad():
            out = lossy_encode(input_tensor, c.width, self.block)
            self.stats.record(input_tensor, out)
            if self.track_error:
                self._track(input_tensor, out, c)
        return out

    def decode(self, input_grad: torch.Tensor, ctx: _LossyContext | None = None) -> torch.Tensor:
        with torch.no_grad():
            return lossy_decode(input_grad, self._context(ctx).width, self.block)

    def _track(self, x: torch.Tensor, encoded: torch.Tensor, c: _LossyContext) -> None:
        err = self.stats.record_error(x, lossy_decode(encoded, c.width, self.block))
        if not err.numel():
            return
        xb = x.detach().reshape(-1, self.block).double()
        bound = (xb.amax(dim=1) - xb.amin(dim=1)) * c.eb
        err = err.reshape(-1, self.block).amax(dim=1)
        ratio = torch.where(bound > 0, err / bound.clamp_min(1e-300), (err > 0).double() * math.inf)
        self.stats.max_error_to_bound = max(self.stats.max_error_to_bound, float(ratio.max()))


class CountingCodec:
    """Wraps one of torchrec's (fbgemm's) codecs to count bytes (and, if asked, errors); else delegates."""

    def __init__(self, inner: Any, track_error: bool = False) -> None:
        self.inner = inner
        self.track_error = track_error
        self.stats = CodecStats()

    def __getattr__(self, name: str) -> Any:  # e.g. ``_comm_precision``, read by torchrec's VBE path
        if name == "inner":  # not set yet (copy/pickle): don't recurse
            raise AttributeError(name)
        return getattr(self.inner, name)

    @property
    def quantized_dtype(self) -> torch.dtype:
        return self.inner.quantized_dtype

    def create_context(self) -> Any:
        return self.inner.create_context()

    def padded_size(self, input_tensor: torch.Tensor, dim_per_rank: list[int], my_rank: int, qcomm_ctx: Any) -> Any:
        return self.inner.padded_size(input_tensor, dim_per_rank, my_rank, qcomm_ctx)

    def calc_quantized_size(self, input_len: int, ctx: Any = None) -> int:
        return self.inner.calc_quantized_size(input_len, ctx)

    def encode(self, input_tensor: torch.Tensor, ctx: Any = None) -> torch.Tensor:
        out = self.inner.encode(input_tensor, ctx)
        self.stats.record(input_tensor, out)
        if self.track_error:
            with torch.no_grad():
                self.stats.record_error(input_tensor, self.inner.decode(out.clone(), ctx))
        return out

    def decode(self, input_grad: torch.Tensor, ctx: Any = None) -> torch.Tensor:
        return self.inner.decode(input_grad, ctx)


# ------------------------------------------------------------------------------- config
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


# ------------------------------------------------------------------------------- factory
def _qcomms_config(forward: str, backward: str, cfg: CommCompression) -> QCommsConfig:
    try:
        fwd, bwd = CommType(forward), CommType(backward)
    except ValueError as e:
        raise CommCodecError(f"the installed torchrec has no {e} comm type") from None
    extra: dict[str, Any] = {}
    if cfg.fp8_row_dim is not None and CommType.FP8 in (fwd, bwd):
        if "fp8_quantize_dim" not in {f.name for f in dataclasses.fields(QCommsConfig)}:
            raise CommCodecError("the installed torchrec's QCommsConfig has no fp8_quantize_dim (fp8_row_dim)")
        extra = {"fp8_quantize_dim": cfg.fp8_row_dim, "fp8_quantize_dim_bwd": cfg.fp8_row_dim}
    return QCommsConfig(forward_precision=fwd, backward_precision=bwd, **extra)


def _check_runs(codecs: QuantizedCommCodecs, names: tuple[str, str], numel: int, device: torch.device) -> None:
    """Encode and decode a small message with each codec, so an unsupported one fails here, clearly."""
    x = torch.linspace(-1.0, 1.0, numel, device=device)
    for codec, name in zip((codecs.forward, codecs.backward), names):
        if name == "fp32":
            continue
        try:
            ctx = codec.create_context()
            codec.decode(codec.encode(x, ctx), ctx)
        except Exception as e:  # fbgemm raises RuntimeError/AssertionError/NotImplementedError
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise CommCodecError(
                f"{name} comms do not run with the installed fbgemm_gpu on {device.type}: {first}"
            ) from e


def _fbgemm_registry(forward: str, backward: str, cfg: CommCompression, device: torch.device) -> dict[str, Any]:
    """torchrec's registry for the non-lossy precisions (a lossy direction is fp32 here)."""
    if forward == backward == "fp32":
        return {}
    qcfg = _qcomms_config(forward, backward, cfg)
    registry = dict(get_qcomm_codecs_registry(qcfg, comm_ops=list(_FBGEMM_OPS), device=device) or {})
    if device.type == "cpu" and "bf16" in (forward, backward):
        # torchrec swaps bf16 for fp16 on CPU ("not supported on GLOO"): true of gloo's reductions,
        # not of its all-to-all, which only copies bytes (bf16 all-to-all tested on torch 2.13).
        # The reduce-scatter keeps torchrec's fallback.
        registry[_A2A] = get_qcomm_codecs(qcfg)
    # 256 values: whole rows for fbgemm's INT8 (32) and any fp8 row size.
    _check_runs(registry[_A2A], (forward, backward), 256 * (cfg.fp8_row_dim or 1), device)
    return registry


def comm_codecs_registry(
    config: CommCompression, *, device: torch.device | None = None, rows: int = 0
) -> dict[str, QuantizedCommCodecs] | None:
    """The torchrec codec registry for ``config``: pass it as a sharder's ``qcomm_codecs_registry``.

    fp16/bf16/int8/fp8 directions come from torchrec's ``get_qcomm_codecs_registry`` for the pooled
    all-to-all, reduce-scatter and sequence all-to-all; a lossy direction puts an
    :class:`ErrorBoundedCodec` on the pooled all-to-all only (a reduce-scatter sums its inputs,
    which integer codes cannot do) and leaves the other ops' side at fp32. Every codec counts its
    bytes (:func:`codec_stats`).

    Args:
        config: the compression.
        device: where the comms run (CPU: gloo); default CUDA if available, else CPU.
        rows: rows of the largest table whose embeddings the registry's messages carry (the
            bound's class, see :meth:`CommCompression.class_factor`).

    Returns:
        None for fp32 both ways (torchrec's exact path), else the registry.

    Raises:
        CommCodecError: a precision the installed torchrec/fbgemm cannot run on ``device``.
    """
    if config.is_exact:
        return None
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    plain = [p if p != "lossy" else "fp32" for p in (config.forward, config.backward)]
    registry = _fbgemm_registry(plain[0], plain[1], config, device)
    wrapped = {
        op: QuantizedCommCodecs(
            forward=CountingCodec(c.forward, config.track_error),
            backward=CountingCodec(c.backward, config.track_error),
        )
        for op, c in registry.items()
    }
    if config.uses_lossy:
        assert config.lossy_eb is not None  # __post_init__
        schedule = LossySchedule(
            eb=config.lossy_eb,
            class_factor=config.class_factor(rows),
            warmup_iters=config.lossy_warmup_iters,
            warmup_factor=config.lossy_warmup_factor,
        )
        a2a = wrapped.get(_A2A) or QuantizedCommCodecs(  # lossy one way, fp32 the other
            forward=CountingCodec(NoOpQuantizedCommCodec()), backward=CountingCodec(NoOpQuantizedCommCodec())
        )
        lossy = {
            side: ErrorBoundedCodec(schedule, config.lossy_block, config.track_error)
            for side in ("forward", "backward")
            if getattr(config, side) == "lossy"
        }
        wrapped[_A2A] = QuantizedCommCodecs(
            forward=lossy.get("forward", a2a.forward), backward=lossy.get("backward", a2a.backward)
        )
    return wrapped


# ------------------------------------------------------------------------------- model hooks
def largest_table_rows(module: nn.Module) -> int:
    """Rows of the largest embedding table in ``module`` (0 if none): the lossy bound's class."""
    rows = [
        c.num_embeddings
        for m in module.modules()
        if hasattr(m, "embedding_bag_configs")
        for c in m.embedding_bag_configs()
    ]
    return max(rows, default=0)


def _submodules(root: nn.Module) -> Iterator[nn.Module]:
    """Every submodule through ``named_children`` (torchrec's sharded towers hide theirs from ``modules``)."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        m = stack.pop()
        if id(m) not in seen:
            seen.add(id(m))
            yield m
            stack.extend(m.children())


def _registries(target: nn.Module | Mapping[str, QuantizedCommCodecs]) -> list[Mapping[str, QuantizedCommCodecs]]:
    if isinstance(target, Mapping):
        return [target]
    found = [m.qcomm_codecs_registry for m in _submodules(target) if isinstance(m, ShardedModule)]
    return [r for r in found if r]


def _codecs(target: nn.Module | Mapping[str, QuantizedCommCodecs]) -> Iterator[tuple[str, Any]]:
    """(``"OP.direction"``, codec) for every distinct codec reachable from ``target``."""
    seen: set[int] = set()
    for registry in _registries(target):
        for op, codecs in registry.items():
            for side in ("forward", "backward"):
                codec = getattr(codecs, side)
                if id(codec) not in seen:
                    seen.add(id(codec))
                    yield f"{op}.{side}", codec


def lossy_schedules(target: nn.Module | Mapping[str, QuantizedCommCodecs]) -> list[LossySchedule]:
    """The iteration schedules of every lossy codec reachable from ``target`` (find them once, then
    set ``.iteration`` every step: walking the model's modules each step is wasted work)."""
    return [codec.schedule for _, codec in _codecs(target) if isinstance(codec, ErrorBoundedCodec)]


def set_iteration(target: nn.Module | Mapping[str, QuantizedCommCodecs], iteration: int) -> None:
    """Set the lossy bound's schedule to ``iteration`` in a registry or every registry of a sharded model.

    Call it on every rank with the same value before each step's forward (the width of the lossy
    codes follows the bound, and with it the all-to-all sizes).
    """
    for schedule in lossy_schedules(target):
        schedule.iteration = iteration


def codec_stats(target: nn.Module | Mapping[str, QuantizedCommCodecs]) -> dict[str, CodecStats]:
    """This rank's counters per ``"OP.direction"`` (summed over the model's registries); a snapshot."""
    out: dict[str, CodecStats] = {}
    for key, codec in _codecs(target):
        stats = getattr(codec, "stats", None)
        if isinstance(stats, CodecStats):
            out[key] = out.get(key, CodecStats()) + copy.copy(stats)
    return out
