"""State dicts of sharded models that load what they are given, or raise (torchrec trap (c)).

torchrec's ``ShardedEmbeddingTowerCollection.load_state_dict`` fails, and with ``strict=False``
(as through DMP's own ``load_state_dict``, which never raises) restores nothing, silently.
:class:`DmtModelParallel` walks the module tree itself and raises on missing, unexpected or
mis-shaped entries; :func:`copy_into` copies one entry into a (sharded) target.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torch.nn.modules.module import _IncompatibleKeys
from torchrec.distributed.model_parallel import DistributedModelParallel, get_unwrapped_module
from torchrec.distributed.types import ShardedModule, ShardingPlan

from dmt.errors import DmtError


class StateDictError(DmtError):
    """A state dict that does not fit the (sharded) model: missing, unknown or mis-shaped entries."""


def copy_into(key: str, target: Any, source: Any, errors: list[str]) -> None:
    """Copy ``source`` into ``target`` (a ShardedTensor's local shards or a tensor), or log why not."""
    if isinstance(target, ShardedTensor):
        if tuple(source.size()) != tuple(target.size()):
            errors.append(f"{key}: global shape {tuple(source.size())}, expected {tuple(target.size())}")
            return
        if isinstance(source, ShardedTensor):
            by_offset = {tuple(s.metadata.shard_offsets): s.tensor for s in source.local_shards()}
            for shard in target.local_shards():
                src = by_offset.get(tuple(shard.metadata.shard_offsets))
                if src is None or src.shape != shard.tensor.shape:
                    errors.append(
                        f"{key}: the source holds no shard at offsets {shard.metadata.shard_offsets} of size "
                        f"{shard.metadata.shard_sizes} on this rank (saved with another plan?); load "
                        "differently sharded checkpoints with torch.distributed.checkpoint"
                    )
                    return
                shard.tensor.detach().copy_(src)
        elif _is_plain_tensor(source):
            for shard in target.local_shards():
                index = tuple(slice(o, o + s) for o, s in zip(shard.metadata.shard_offsets, shard.metadata.shard_sizes))
                shard.tensor.detach().copy_(source[index])
        else:
            errors.append(f"{key}: cannot load a {type(source).__name__} into a ShardedTensor")
    elif _is_plain_tensor(source):
        if source.shape != target.shape:
            errors.append(f"{key}: shape {tuple(source.shape)}, expected {tuple(target.shape)}")
        else:
            target.detach().copy_(source)
    else:
        errors.append(f"{key}: cannot load a {type(source).__name__} into a {type(target).__name__}")


def _is_plain_tensor(x: Any) -> bool:
    """A tensor holding all its values locally (not a ShardedTensor or DTensor)."""
    return isinstance(x, torch.Tensor) and not isinstance(x, ShardedTensor) and type(x).__name__ != "DTensor"


def key_report(missing: list[str], unexpected: list[str]) -> str:
    parts = []
    if missing:
        parts.append(f"missing keys {sorted(missing)}")
    if unexpected:
        parts.append(f"unexpected keys {sorted(unexpected)}")
    return "state dict does not match the model: " + "; ".join(parts)


class DmtModelParallel(DistributedModelParallel):
    """torchrec's DMP whose ``load_state_dict`` really loads, or raises.

    Stock DMP walks the module tree with errors discarded and never raises, even with
    ``strict=True``, and it rewrites the caller's dict in place. Here: the caller's dict is
    untouched, shape errors always raise, and missing/unexpected keys raise when ``strict``.
    """

    @property
    def sharding_plan(self) -> ShardingPlan:
        """The global sharding plan (TWRW/TWCW, global ranks): :class:`TowerCollectionSharder`
        shards from a copy, so this is the plan as built, not torchrec's per-host rewrite."""
        return self._plan

    def load_state_dict(  # type: ignore[override]  # DMP's signature
        self, state_dict: Mapping[str, Any], prefix: str = "", strict: bool = True
    ) -> _IncompatibleKeys:
        """Load a state dict as produced by :meth:`state_dict` (this rank's shards) or an unsharded one.

        Raises:
            StateDictError: a value that does not fit, or (``strict``) missing/unexpected keys.
        """
        state = OrderedDict(state_dict)
        missing: list[str] = []
        unexpected: list[str] = []
        errors: list[str] = []
        self._load_tree(self.module, state, prefix, missing, unexpected, errors)
        if errors:
            raise StateDictError("cannot load the state dict:\n  " + "\n  ".join(errors))
        if strict and (missing or unexpected):
            raise StateDictError(key_report(missing, unexpected))
        return _IncompatibleKeys(missing, unexpected)

    def _load_tree(
        self,
        module: nn.Module,
        state: OrderedDict[str, Any],
        prefix: str,
        missing: list[str],
        unexpected: list[str],
        errors: list[str],
    ) -> None:
        module = get_unwrapped_module(module)
        if isinstance(module, ShardedModule):
            sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            try:
                result = module.load_state_dict(sub, strict=False)
            except StateDictError as e:
                errors.append(str(e))
                return
            missing += [prefix + k for k in result.missing_keys]
            unexpected += [prefix + k for k in result.unexpected_keys]
            return
        # strict=True here only means "record" missing/unexpected keys; the caller decides.
        module._load_from_state_dict(state, prefix, {}, True, missing, unexpected, errors)
        for name, child in module._modules.items():
            if child is not None:
                self._load_tree(child, state, f"{prefix}{name}.", missing, unexpected, errors)
