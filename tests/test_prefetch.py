"""dmt.data.Prefetcher's building threads: one while it keeps up, more while the consumer waits."""

from __future__ import annotations

import threading

import pytest

from dmt.data.prefetch import Prefetcher, WorkerGrowth

STEPS = 40
WAIT_S = 30.0  # a build that waits longer than this fails the test instead of hanging it


class GatedSteps:
    """A buildable source whose ``build(step)`` records that it began and waits until ``open[step]`` is set."""

    steps = range(STEPS)

    def __init__(self) -> None:
        self.began = [threading.Event() for _ in range(STEPS)]
        self.open = [threading.Event() for _ in range(STEPS)]

    def build(self, step: int) -> int:
        self.began[step].set()
        if not self.open[step].wait(WAIT_S):
            raise TimeoutError(f"step {step} was never opened")
        return step


def test_threads_are_added_while_every_take_finds_the_queue_empty():
    source = GatedSteps()
    with Prefetcher(source, depth=4, workers=1, max_workers=3, pin_memory=False) as items:
        got = []
        for step in range(STEPS):
            source.open[step].set()  # a step is built only once it is asked for: the consumer always waits
            got.append(next(items))
        assert items.workers == 3
    assert got == list(range(STEPS))  # growing kept the order


def test_no_thread_is_added_while_the_queue_holds_the_next_batch():
    source = GatedSteps()
    for event in source.open:
        event.set()
    with Prefetcher(source, depth=4, workers=1, max_workers=3, pin_memory=False) as items:
        got = []
        for step in range(STEPS - 1):
            # One thread begins building step + 1 only after queueing step: the take never waits.
            assert source.began[step + 1].wait(WAIT_S)
            got.append(next(items))
        assert items.workers == 1
    assert got == list(range(STEPS - 1))


def test_growth_needs_repeated_waits_after_the_warmup():
    growth = WorkerGrowth(warmup=8, window=16, starved_to_grow=3)
    assert not any(growth.behind(True) for _ in range(8))  # the producer is starting
    waits = [True, False, False, False] * 4  # one take in four waits: 4 of 16
    assert [growth.behind(w) for w in waits].count(True) == 1
    assert not any(growth.behind(False) for _ in range(100))


def test_fixed_threads_and_bad_counts():
    source = GatedSteps()
    for event in source.open:
        event.set()
    with Prefetcher(source, workers=2, pin_memory=False) as items:
        assert list(items) == list(range(STEPS)) and items.workers == 2
    with pytest.raises(ValueError, match="max_workers=1"):
        Prefetcher(GatedSteps(), workers=2, max_workers=1)
    with pytest.raises(ValueError, match="can build any step"):
        Prefetcher(iter(range(3)), workers=2, pin_memory=False)
    with Prefetcher(iter(range(3)), max_workers=4, pin_memory=False) as items:  # an iterator: one thread, in order
        assert list(items) == [0, 1, 2] and items.workers == 1
