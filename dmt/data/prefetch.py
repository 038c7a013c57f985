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
        workers: building threads at the start (``build``-able sources only above 1).
        max_workers: with more than ``workers``, a thread is added (up to this many) each time
            the consumer keeps finding the queue empty (:class:`WorkerGrowth`): the producer is
            behind. Spare threads cost a launch-bound step: their Python between numpy calls
            takes the GIL from the thread launching it (``benchmarks.bench_producer`` on CUDA:
            2 threads 1.20x per step, 1 thread 1.04x; DMT's job at 2,048 rows per GPU: median
            266k samples/s with 1 thread, 232k with 2, within the runs' spread:
            benchmarks/results/gpu_h200x1_pipeline).
        pin_memory: pin each item (``item.pin_memory()``); None pins when CUDA is available.

    An exception while building is re-raised by ``next()`` in the consumer. ``close()`` (or
    leaving the ``with`` block) stops the threads. ``workers`` is the number building now.
    """

    def __init__(
        self,
        source: Iterable[Any],
        *,
        depth: int = 4,
        workers: int = 1,
        max_workers: int | None = None,
        pin_memory: bool | None = None,
    ) -> None:
        self._stop = threading.Event()  # first: __del__ sets it even when a check below fails
        max_workers = workers if max_workers is None else max_workers
        if depth < 1 or not 1 <= workers <= max_workers:
            raise ValueError(f"depth={depth} must be >= 1 and 1 <= workers={workers} <= max_workers={max_workers}")
        buildable = hasattr(source, "build") and hasattr(source, "steps")
        if max_workers > 1 and not buildable:
            if workers > 1:
                raise ValueError("workers > 1 needs a source that can build any step (dmt.data.RankBatches)")
            max_workers = 1  # one thread can only walk an iterator in order
        self._source, self._max_workers = source, max_workers
        self.workers = workers
        self._growth = WorkerGrowth()
        self._pin = torch.cuda.is_available() if pin_memory is None else pin_memory
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._thread = threading.Thread(target=self._produce, name="dmt-prefetch", daemon=True)
        self._thread.start()

    def _finish(self, item: Any) -> Any:
        return item.pin_memory() if self._pin else item

    def _produce(self) -> None:
        try:
            if self._max_workers == 1:
                for item in self._source:
                    if not self._put(self._finish(item)):
                        return
            else:
                self._produce_parallel()
            self._put(_END)
        except BaseException as e:  # (handed to the consumer, which re-raises it)
            self._put(_Failure(e))

    def _produce_parallel(self) -> None:
        """Keep ``self.workers`` steps building (it may grow meanwhile); hand them over in step order."""
        build = self._source.build
        with cf.ThreadPoolExecutor(self._max_workers, thread_name_prefix="dmt-build") as pool:
            pending: collections.deque = collections.deque()
            for step in self._source.steps:
                pending.append(pool.submit(lambda s=step: self._finish(build(s))))
                if len(pending) >= self.workers and not self._put(pending.popleft().result()):
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
        if self.workers < self._max_workers and self._growth.behind(starved=self._queue.empty()):
            self.workers += 1  # read by the producer thread at its next step (an int: no lock needed)
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


class WorkerGrowth:
    """When to add a building thread: the consumer found the queue empty in ``starved_to_grow`` of
    its last ``window`` takes, not counting the first ``warmup`` (the producer is starting then).

    Example:
        >>> growth = WorkerGrowth(warmup=1, window=4, starved_to_grow=2)
        >>> [growth.behind(starved) for starved in (True, True, False, True, True, True)]
        [False, False, False, True, False, True]
    """

    def __init__(self, warmup: int = 8, window: int = 16, starved_to_grow: int = 3) -> None:
        self.warmup, self.starved_to_grow = warmup, starved_to_grow
        self._takes: collections.deque = collections.deque(maxlen=window)  # True: the queue was empty
        self._seen = 0

    def behind(self, starved: bool) -> bool:
        """Note one take; True when a thread should be added (the count starts over then)."""
        self._seen += 1
        if self._seen <= self.warmup:
            return False
        self._takes.append(starved)
        if sum(self._takes) < self.starved_to_grow:
            return False
        self._takes.clear()
        return True
