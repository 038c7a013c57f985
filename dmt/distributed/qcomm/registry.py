"""The codec registry torchrec's sharders take: fbgemm's codecs and the lossy one, each counting its bytes.

torchrec compresses the pooled-embedding collectives through a *codec registry*: a dict from
``CommOp`` name to ``QuantizedCommCodecs(forward=..., backward=...)`` that a sharder hands to its
sharded modules. DMT uses exactly that mechanism, nothing beside it: fp16 / bf16 / int8 / fp8 come
from torchrec's ``QCommsConfig`` and ``get_qcomm_codecs_registry`` (fbgemm's codecs), and lossy
is :class:`~dmt.distributed.qcomm.lossy.ErrorBoundedCodec`, put into the same registry for the
pooled all-to-all.

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

import dataclasses
from typing import Any

import torch
from torch import nn
from torchrec.distributed.fbgemm_qcomm_codec import (
    CommType,
    QCommsConfig,
    get_qcomm_codecs,
    get_qcomm_codecs_registry,
)
from torchrec.distributed.types import CommOp, NoOpQuantizedCommCodec, QuantizedCommCodecs

from dmt.distributed.qcomm.config import CommCompression
from dmt.distributed.qcomm.lossy import CommCodecError, ErrorBoundedCodec, LossySchedule
from dmt.distributed.qcomm.stats import CountingCodec

_A2A = CommOp.POOLED_EMBEDDINGS_ALL_TO_ALL.name
_FBGEMM_OPS = (
    CommOp.POOLED_EMBEDDINGS_ALL_TO_ALL,
    CommOp.POOLED_EMBEDDINGS_REDUCE_SCATTER,
    CommOp.SEQUENCE_EMBEDDINGS_ALL_TO_ALL,
)


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


def largest_table_rows(module: nn.Module) -> int:
    """Rows of the largest embedding table in ``module`` (0 if none): the lossy bound's class."""
    rows = [
        c.num_embeddings
        for m in module.modules()
        if hasattr(m, "embedding_bag_configs")
        for c in m.embedding_bag_configs()
    ]
    return max(rows, default=0)
