"""Byte and error counters of the comm codecs: what every codec of a registry saw on this rank."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


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
