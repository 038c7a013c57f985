"""Model walkers: find the codecs of a sharded model's registries, to drive their schedules and read their counters."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from typing import Any

from torch import nn
from torchrec.distributed.types import QuantizedCommCodecs, ShardedModule

from dmt.distributed.qcomm.lossy import ErrorBoundedCodec, LossySchedule
from dmt.distributed.qcomm.stats import CodecStats


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
