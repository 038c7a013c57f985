"""The tower lookup's intra-host input distribution, moved into the pipeline's data-dist stage.

A DMT lookup distributes ids twice: across hosts to the peer on the tower's host (torchrec's
``ShardedEmbeddingTowerCollection.input_dist``), then inside that host to the ranks that own the
tables (the tower's sharded EBC, which torchrec runs inside ``compute``). torchrec's train
pipelines overlap only the first: the second ran in the forward on the default stream, where the
host sync it needs (the received ids' lengths per rank, ``.tolist()``) waited for every kernel
still queued there -- the previous step's backward and optimizer -- so the GPU emptied once per
step and idled while Python launched the rest of the forward.

Here the intra-host stage is chained into the awaitables that the pipeline already waits on its
data-dist stream, in the order a train pipeline waits them:

1. ``wait_sparse_data_dist`` (after the current batch's forward is queued): the cross-host splits
   arrive, the cross-host ids all-to-all is launched (torchrec's own first wait);
2. the next forward's first wait (``PipelinedForward``, still on the data-dist stream): the ids are
   received and every local tower's intra-host splits and ids all-to-alls run, syncing only on
   the data-dist stream, never on the default one.

``compute`` then starts at the lookup. Without a pipeline, ``ShardedModule.forward`` waits both
levels back to back, as before. Nothing here changes what is sent or computed, only where.
"""

from __future__ import annotations

from typing import Any

import torch
from torchrec.distributed.embedding_sharding import KJTListSplitsAwaitable
from torchrec.distributed.embedding_types import KJTList
from torchrec.distributed.types import Awaitable
from torchrec.streamable import Multistreamable


class TowerInputs(Multistreamable):
    """Each local tower lookup's context and intra-host-distributed ids, ready for ``compute_and_output_dist``."""

    def __init__(self, parts: list[tuple[Any, KJTList]]) -> None:
        self.parts = parts

    def record_stream(self, stream: torch.Stream) -> None:
        # The pipeline hands these from its data-dist stream to the default one.
        for ctx, features in self.parts:
            ctx.record_stream(stream)
            features.record_stream(stream)


def chain_intra_host_input_dist(cross: Awaitable, ctx: Any, embeddings: list, input_params: list) -> Awaitable:
    """Wrap the cross-host input dist ``cross`` (an awaitable of an awaitable of a KJTList) so that its
    second wait also runs the intra-host input dist of every local tower lookup (``embeddings``,
    with torchrec's ``(kjt, wkjt)`` flags ``input_params``). Returns an awaitable of an awaitable of
    ``KJTList([TowerInputs])``, the shape torchrec's pipelines expect from ``input_dist``."""
    return KJTListSplitsAwaitable([_CrossHostSplits(cross, embeddings, input_params)], ctx)


class _CrossHostSplits(Awaitable):
    """First wait: torchrec's (cross-host splits arrive, ids all-to-all launched)."""

    def __init__(self, cross: Awaitable, embeddings: list, input_params: list) -> None:
        super().__init__()
        self._cross, self._embeddings, self._input_params = cross, embeddings, input_params

    def _wait_impl(self) -> Awaitable:
        return _IntraHostInputs(self._cross.wait(), self._embeddings, self._input_params)


class _IntraHostInputs(Awaitable):
    """Second wait: receive the ids, distribute them inside the host, return :class:`TowerInputs`."""

    def __init__(self, cross_tensors: Awaitable, embeddings: list, input_params: list) -> None:
        super().__init__()
        self._cross_tensors, self._embeddings, self._input_params = cross_tensors, embeddings, input_params

    def _wait_impl(self) -> TowerInputs:
        received = self._cross_tensors.wait()
        started = []
        for embedding, params in zip(self._embeddings, self._input_params):
            ctx = embedding.create_context()
            started.append((ctx, embedding.input_dist(ctx, *_tower_features(received, params))))
        # Every tower's splits before any tower's ids: all ranks of a host post the same order.
        launched = [(ctx, splits.wait()) for ctx, splits in started]
        return TowerInputs([(ctx, ids.wait()) for ctx, ids in launched])


def _tower_features(received: KJTList, params: tuple[bool, bool]) -> tuple:
    """The inputs of one tower lookup from the cross-host KJTs, by torchrec's ``(kjt, wkjt)`` flags."""
    kjt_param, wkjt_param = params
    if kjt_param and wkjt_param:
        return received[0], received[1]
    if wkjt_param and len(received) == 2:
        return (received[1],)
    return (received[0],)
