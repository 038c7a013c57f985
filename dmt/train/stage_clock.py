"""Wall seconds of a training job's stages, for metrics.json and the run report."""

from __future__ import annotations

import os
import time

from dmt.train.loop import LoopResult


class StageClock:
    """Wall seconds of the job's stages (metrics.json's "stage_seconds").

    "start" is from the process's start (interpreter, imports, joining the group) to the data
    stage; "train" and "eval" are the loop's own clocks; "other" is what the rest of the job took
    (checkpoints, bookkeeping, writing the metrics).
    """

    def __init__(self) -> None:
        self._t0 = time.perf_counter()
        self._since_start = process_age()
        self.seconds: dict[str, float] = {}

    def stage(self, name: str, work):
        start = time.perf_counter()
        try:
            return work()
        finally:
            self.seconds[name] = time.perf_counter() - start

    def report(self, result: LoopResult, *, before: LoopResult) -> dict:
        """``before``: the progress this run resumed from; its loop seconds belong to earlier runs."""
        train_s, eval_s = result.train_seconds - before.train_seconds, result.eval_seconds - before.eval_seconds
        total = self._since_start + time.perf_counter() - self._t0
        stages = {"start": self._since_start, **self.seconds, "train": train_s, "eval": eval_s}
        if result.profile_seconds > before.profile_seconds:  # --profile: those steps are not in "train"
            stages["profile"] = result.profile_seconds - before.profile_seconds
        return {**stages, "other": max(total - sum(stages.values()), 0.0), "total": total}


def process_age() -> float:
    """Seconds since this process started (Linux /proc; 0 where that is not available)."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 0.0)
    except (OSError, ValueError, IndexError):
        return 0.0
