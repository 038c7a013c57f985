"""torch.profiler over a few steps, written as a table of the top ops and a Chrome trace per rank.

``dmt bench --profile DIR`` profiles extra steps of each variant, ``dmt train --profile`` a few
steady-state steps of the job: where a job loses time to its model is read off the trace
(chrome://tracing or https://ui.perfetto.dev), not guessed.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from dmt.atomic import atomic_write_text

PROFILE_STEPS = 5  # steps per profile: enough for a steady pattern, a trace small enough to open


@contextlib.contextmanager
def profiled(directory: str, name: str, device: torch.device) -> Iterator[None]:
    """Profile the block; write ``<directory>/<name>.txt`` (the 40 top ops by device time on GPU, CPU
    time on CPU) and ``<name>.trace.json`` (a Chrome trace)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        yield
        if cuda:
            torch.cuda.synchronize(device)
    os.makedirs(directory, exist_ok=True)
    base = os.path.join(directory, name)
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    atomic_write_text(base + ".txt", prof.key_averages().table(sort_by=sort, row_limit=40) + "\n")
    prof.export_chrome_trace(base + ".trace.json")
