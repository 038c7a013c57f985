"""Multi-process test harness (CPU, gloo) and the synthetic inputs the parity tests share.

``run_distributed(fn, world_size=4, local_world_size=2, **kwargs)`` starts ``world_size`` processes
with the ``spawn`` start method, sets the torchrun variables (RANK, WORLD_SIZE, LOCAL_RANK,
LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT) so ranks ``h*L .. h*L+L-1`` form emulated host ``h``,
joins a gloo process group (or NCCL with ``backend="nccl"``: each emulated host is an NCCL node
of its own and sees its own L GPUs, or with fewer GPUs than ranks GPU ``rank % num_gpus``) and
calls ``fn(rank, world_size, **kwargs)`` in each. It returns the
ranks' return values (which must pickle). A child's exception is re-raised in the test with the
child's traceback; a child killed by a signal (e.g. a gloo SIGABRT) or a run past ``timeout``
fails the test instead of hanging it; shortly before that timeout every child dumps its Python
stacks to stderr (pytest shows them), which is where a hung collective shows. The environment
variable DMT_TEST_DIST_TIMEOUT overrides every timeout (seconds). ``fn`` must be a module-level
function of an importable module (the children import it).
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import queue
import socket
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.multiprocessing as mp

from dmt.distributed.links import host_id

DEFAULT_TIMEOUT_S = 240.0


class ChildError(AssertionError):
    """A rank of a distributed test raised, died or timed out."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child(
    rank: int,
    world_size: int,
    local_world_size: int,
    port: int,
    backend: str,
    num_gpus: int,
    pg_timeout_s: float,
    stack_dump_s: float,
    fn: Callable[..., Any],
    kwargs: dict[str, Any],
    results: Any,
) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank % local_world_size),
        LOCAL_WORLD_SIZE=str(local_world_size),
        GROUP_RANK=str(rank // local_world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS="1",
    )
    local_rank = rank % local_world_size
    if backend == "nccl":  # before CUDA starts: torchrec puts shards on cuda:{rank % local size}
        # Emulated hosts are NCCL nodes of their own (the hierarchical link, dmt.distributed.links):
        # sockets between hosts, and two hosts' ranks may share one GPU (NCCL refuses a GPU twice
        # only within one node), so a 1-GPU box runs the 2-host checks too.
        os.environ.update(NCCL_HOSTID=host_id(rank // local_world_size), NCCL_IB_DISABLE="1")
        if num_gpus >= world_size:  # each emulated host sees its own L GPUs, as dmt.distributed.launch does
            host = rank // local_world_size
            gpus = range(host * local_world_size, (host + 1) * local_world_size)
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpus))
        else:
            assert local_world_size == 1, "with fewer GPUs than ranks, hosts must have one rank"
            os.environ["CUDA_VISIBLE_DEVICES"] = str(rank % num_gpus)
    torch.set_num_threads(1)
    faulthandler.dump_traceback_later(stack_dump_s, exit=False)
    import torch.distributed as dist

    try:
        if backend == "nccl":
            torch.cuda.set_device(local_rank if num_gpus >= world_size else 0)
        dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timedelta(seconds=pg_timeout_s))
        result = fn(rank, world_size, **kwargs)
        results.put((rank, "ok", result))
    except BaseException:  # (everything must reach the parent)
        results.put((rank, "error", traceback.format_exc()))
    finally:
        if dist.is_initialized():
            # A peer that failed may never join a barrier; don't let cleanup hang.
            with contextlib.suppress(Exception):
                dist.destroy_process_group()


def run_distributed(
    fn: Callable[..., Any],
    world_size: int,
    local_world_size: int,
    *,
    backend: str = "gloo",
    timeout: float = DEFAULT_TIMEOUT_S,
    **kwargs: Any,
) -> list[Any]:
    """Run ``fn(rank, world_size, **kwargs)`` on ``world_size`` ranks; return their results by rank."""
    assert world_size % local_world_size == 0, (world_size, local_world_size)
    timeout = float(os.environ.get("DMT_TEST_DIST_TIMEOUT", timeout))
    num_gpus = torch.cuda.device_count() if backend == "nccl" else 0
    assert backend == "gloo" or num_gpus >= 1, "backend='nccl' needs a GPU"
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    # The gloo timeout is shorter than ours so a stuck collective fails inside the children first.
    pg_timeout_s = max(10.0, timeout * 0.75)
    port = free_port()
    procs = [
        ctx.Process(
            target=_child,
            args=(
                rank,
                world_size,
                local_world_size,
                port,
                backend,
                num_gpus,
                pg_timeout_s,
                timeout * 0.9,
                fn,
                kwargs,
                results,
            ),
            daemon=True,
        )
        for rank in range(world_size)
    ]
    _start_with_one_omp_thread(procs)
    outcome: dict[int, tuple[str, Any]] = {}
    try:
        _collect(procs, results, outcome, timeout)
    finally:
        for p in procs:
            p.join(timeout=5 if len(outcome) == world_size else 0.1)
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
    errors = {r: v for r, (s, v) in outcome.items() if s == "error"}
    if errors:
        first = min(errors)
        raise ChildError(f"rank {first} failed:\n{errors[first]}")
    return [outcome[r][1] for r in range(world_size)]


def _start_with_one_omp_thread(procs: list[Any]) -> None:
    """Start the children with OMP_NUM_THREADS=1 (they inherit it before torch is imported)."""
    old_omp = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        for p in procs:
            p.start()
    finally:
        if old_omp is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = old_omp


def _collect(procs: list[Any], results: Any, outcome: dict[int, tuple[str, Any]], timeout: float) -> None:
    """Fill ``outcome`` (rank -> (status, value)) until every rank reported or one failed.

    Raises:
        ChildError: a rank died without reporting, or ``timeout`` seconds passed.
    """
    deadline = time.monotonic() + timeout
    while len(outcome) < len(procs):
        try:
            rank, status, value = results.get(timeout=0.5)
            outcome[rank] = (status, value)
            if status == "error":
                return  # the others are likely stuck in a collective with this rank
            continue
        except queue.Empty:
            pass
        dead = [r for r, p in enumerate(procs) if p.exitcode not in (None, 0) and r not in outcome]
        if dead:
            time.sleep(0.5)  # let a last message arrive
            while not results.empty():
                rank, status, value = results.get_nowait()
                outcome[rank] = (status, value)
            dead = [r for r in dead if r not in outcome]
            if dead:
                raise ChildError(
                    "rank(s) died without reporting: " + ", ".join(f"{r} (exit code {procs[r].exitcode})" for r in dead)
                )
        if time.monotonic() > deadline:
            # What the finished ranks said: a rank that failed a check and moved on leaves its
            # peers waiting in a collective, and its report is the only clue to why.
            said = "".join(f"\n--- rank {r} ({st}):\n{str(v)[-4000:]}" for r, (st, v) in sorted(outcome.items()))
            raise ChildError(
                f"distributed test timed out after {timeout:.0f}s; ranks that finished: {sorted(outcome)}{said}"
            )
