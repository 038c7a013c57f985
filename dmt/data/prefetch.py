"""A background producer: builds the next batches on threads while the model trains on this one.

Reading rows from the mmaps, hashing ids and building the KeyedJaggedTensor is numpy work that
releases the GIL, so threads overlap it with the training step. With CUDA the batches are put in
pinned (page-locked) memory here, so the consumer's ``batch.to(device, non_blocking=True)``
(torchrec's TrainPipelineSparseDist does exactly that on its copy stream) is an asynchronous DMA.

Example:
    >>> with Prefetcher(iter(range(5)), depth=2, pin_memory=False) as items:
    ...     list(items)
    [0, 1, 2, 3, 4]
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import queue
import threading
from collections.abc import Iterable
from typing import Any

import torch

_END = object()


class Prefetcher:
    """Iterate ``source`` on a daemon thread, up to ``depth`` items ahead, in order.

    Args:
        source: an iterable of torchrec Batches (anything, with ``pin_memory=False``). If it
            has ``build(step)`` and ``steps`` (``dmt.data.RankBatches``), ``workers`` threads
            build that many steps at once.
        depth: finished items waiting; memory is about ``depth + workers`` batches.
        workers: building threads (``build``-able sources only).
        pin_memory: pin each item (``item.pin_memory()``); None pins when CUDA is available.

    An exception while building is re-raised by ``next()`` in the consumer. ``close()`` (or
    leaving the ``with`` block) stops the threads.
    """

    def __init__(
        self, source: Iterable[Any], *, depth: int = 4, workers: int = 1, pin_memory: bool | None = None
    ) -> None:
        if depth < 1 or workers < 1:
            raise ValueError(f"depth={depth} and workers={workers} must be >= 1")
        if workers > 1 and not hasattr(source, "build"):
            raise ValueError("workers > 1 needs a source that can build any step (dmt.data.RankBatches)")
        self._source, self._workers = source, workers
        self._pin = torch.cuda.is_available() if pin_memory is None else pin_memory
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="dmt-prefetch", daemon=True)
        self._thread.start()

    def _finish(self, item: Any) -> Any:
        return item.pin_memory() if self._pin else item

    def _produce(self) -> None:
        try:
            if self._workers == 1:
                for item in self._source:
                    if not self._put(self._finish(item)):
                        return
            else:
                self._produce_parallel()
            self._put(_END)
        except BaseException as e:  # (handed to the consumer, which re-raises it)
            self._put(_Failure(e))

    def _produce_parallel(self) -> None:
        """Keep ``workers`` steps building; hand them over in step order."""
        build = self._source.build
        with cf.ThreadPoolExecutor(self._workers, thread_name_prefix="dmt-build") as pool:
            pending: collections.deque = collections.deque()
            for step in self._source.steps:
                pending.append(pool.submit(lambda s=step: self._finish(build(s))))
                if len(pending) >= self._workers and not self._put(pending.popleft().result()):
                    return
            while pending:
                if not self._put(pending.popleft().result()):
                    return

    def _put(self, item: Any) -> bool:
        """Queue ``item``, waiting for room; False if the consumer has closed us."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Prefetcher:
        return self

    def __next__(self) -> Any:
        if self._stop.is_set():
            raise StopIteration
        item = self._queue.get()
        if item is _END:
            self._stop.set()
            raise StopIteration
        if isinstance(item, _Failure):
            self._stop.set()
            raise item.error
        return item

    def close(self) -> None:
        """Stop the producer and wait for it (it finishes at most the batches it is building)."""
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self._stop.set()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error
