"""The error-bounded lossy codec: a torchrec ``QuantizedCommCodec`` whose error is bounded by the block's range.

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
  rank must call :func:`~dmt.distributed.qcomm.set_iteration` with the same step (the width,
  hence the split sizes, follows the bound); a rank that disagrees makes decode raise
  :class:`CommCodecError` (the header carries the width) instead of decoding garbage.

Byte cost per block: 9 header bytes + ``block * w / 8``; with the default block of 32 an fp32
message shrinks 3.1x at 8 bits, 5.1x at 4 bits, 1.75x at 16 bits (so below ``eb`` ~ 4e-3 fp16,
2x with a relative rather than range-relative error, is the cheaper choice).

Example:
    >>> x = torch.randn(64)
    >>> width = lossy_width(0.01)
    >>> message = lossy_encode(x, width, block=32)
    >>> width, message.dtype, message.numel()  # two blocks of 9 + 32 bytes
    (8, torch.uint8, 82)
    >>> x_hat = lossy_decode(message, width, block=32)
    >>> bool(((x_hat - x).abs() <= 0.01 * (x.max() - x.min())).all())
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from dmt.distributed.qcomm.stats import CodecStats
from dmt.errors import DmtError

WIDTHS = (4, 8, 16)
HEADER_BYTES = 9  # min f32, max f32, width u8
# Levels are chosen for eb / (1 + _MARGIN): the slack absorbs float64 rounding in encode/decode.
_MARGIN = 1e-3


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
