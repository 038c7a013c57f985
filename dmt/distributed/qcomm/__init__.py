"""Compressed embedding all-to-alls: torchrec's quantized comms plus an error-bounded lossy codec.

torchrec compresses the pooled-embedding collectives through a *codec registry* (``CommOp`` name
-> ``QuantizedCommCodecs``) that a sharder hands to its sharded modules; DMT fills that registry
and adds nothing beside it:

* ``fp16`` / ``bf16`` / ``int8`` / ``fp8`` are fbgemm's codecs, from torchrec's ``QCommsConfig``,
  forward and backward chosen separately;
* ``lossy`` is :class:`ErrorBoundedCodec`, ``|x - x_hat| <= eb * (block max - block min)``, put
  into the same registry for the pooled all-to-all.

Modules, by concern:

* :mod:`~dmt.distributed.qcomm.config`: :class:`CommCompression`, the JSON/CLI-friendly config;
* :mod:`~dmt.distributed.qcomm.registry`: :func:`comm_codecs_registry`, the factory
  (``dmt.distributed.tower_sharding.shard(..., comm_compression=...)`` and
  ``dmt.distributed.flat.shard_flat`` call it), and :func:`largest_table_rows`;
* :mod:`~dmt.distributed.qcomm.lossy`: the lossy codec, its maths and why it is built so;
* :mod:`~dmt.distributed.qcomm.stats`: the byte/error counters every codec keeps;
* :mod:`~dmt.distributed.qcomm.walk`: :func:`codec_stats` / :func:`set_iteration` read the
  counters and drive the bound's iteration schedule on a sharded model.
"""

from __future__ import annotations

from dmt.distributed.qcomm.config import PRECISIONS, CommCompression
from dmt.distributed.qcomm.lossy import (
    CommCodecError,
    ErrorBoundedCodec,
    LossySchedule,
    lossy_decode,
    lossy_encode,
    lossy_encoded_size,
    lossy_width,
)
from dmt.distributed.qcomm.registry import comm_codecs_registry, largest_table_rows
from dmt.distributed.qcomm.stats import CodecStats, CountingCodec
from dmt.distributed.qcomm.walk import codec_stats, lossy_schedules, set_iteration

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
    "lossy_schedules",
    "lossy_width",
    "set_iteration",
]
