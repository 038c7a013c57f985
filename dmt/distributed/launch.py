"""Run a ``dmt`` command on H emulated hosts x L ranks on this machine, through real torchrun.

One torchrun agent per emulated host (``--nnodes H --nproc-per-node L``) meeting at a c10d
rendezvous on 127.0.0.1, so every rank sees exactly the variables it would see on a real cluster
(LOCAL_WORLD_SIZE=L, ranks contiguous per host). On real hosts the user runs the same torchrun
line on each host with their own rendezvous endpoint.

The launcher owns its job. The agents start in their own sessions (so a Ctrl-C in the terminal
reaches the launcher alone, which then stops everything in order), and:

- SIGTERM, SIGINT or SIGHUP to the launcher (a scheduler's ``timeout``, preemption, Ctrl-C) stops
  every agent with SIGTERM (torchrun then stops its ranks), SIGKILLs what is left after
  ``STOP_GRACE_S``, and raises :class:`JobStopped`: ``dmt`` exits 128 + the signal number.
- ``kill -9`` of the launcher cannot be caught, so each agent watches its parent: a thread polls
  ``os.getppid()`` and, once the launcher is gone (the agent was re-parented), sends the agent
  SIGTERM, i.e. the same orderly stop (``watch_parent`` in ``dmt.distributed._torchrun``).
- Each rank watches its agent the same way and SIGKILLs itself if the agent vanishes (``kill -9``
  of an agent), so no rank keeps writing to ``--out`` for an agent that is gone (``dmt.cli.main``).

Polling rather than Linux's ``PR_SET_PDEATHSIG``: the death signal fires when the parent *thread*
that forked exits, needs ctypes, and does not exist on macOS; a poll every ``PARENT_POLL_S`` works
everywhere and the extra half-second does not matter for a job being stopped.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from dmt.distributed.topology import Topology

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
STOP_GRACE_S = 60.0  # torchrun gives its ranks 30 s after SIGTERM before SIGKILL; then the agent exits
PARENT_POLL_S = 0.5
WATCH_PARENT_ENV = "DMT_WATCH_PARENT"  # set for the agents launch_local starts: exit when it dies


class JobStopped(Exception):
    """The launcher was told to stop by a signal; its agents and ranks have been stopped.

    Args:
        signum: the signal that stopped it.
    """

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.exit_code = 128 + signum  # the shell's convention for "ended by signal N"
        super().__init__(f"stopped by {signal.Signals(signum).name}")


def watch_parent(on_orphaned: Callable[[], None], poll_s: float = PARENT_POLL_S) -> threading.Thread:
    """Call ``on_orphaned()`` from a daemon thread once this process's parent has died.

    Why a poll (see the module docstring): a parent's death re-parents us, so ``getppid()`` changes.
    """
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        on_orphaned()

    thread = threading.Thread(target=watch, name="dmt-watch-parent", daemon=True)
    thread.start()
    return thread


def under_torchrun(env: Mapping[str, str] | None = None) -> bool:
    """True when this process is a worker started by torchrun (or another launcher setting RANK)."""
    env = os.environ if env is None else env
    return "RANK" in env and "WORLD_SIZE" in env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class HostLaunch:
    """How one emulated host's torchrun agent starts, beyond the default (see ``dmt.perf.netns``).

    Args:
        prefix: command run in front of torchrun, e.g. ``("ip", "netns", "exec", "ns0")``.
        env: variables for this host's agent and ranks (override the launcher's).
        torchrun_args: extra torchrun flags, e.g. ``("--local-addr=10.77.0.1",)``.
    """

    prefix: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    torchrun_args: tuple[str, ...] = ()


def torchrun_command(
    argv: Sequence[str],
    *,
    hosts: int,
    ranks_per_host: int,
    port: int,
    rdzv_host: str = "127.0.0.1",
    extra_args: Sequence[str] = (),
    target: Sequence[str] = ("-m", "dmt.cli"),
) -> list[str]:
    """The torchrun command line of one emulated host running ``<target> <argv>`` (default ``dmt <argv>``)."""
    return [
        sys.executable,
        "-m",
        "dmt.distributed._torchrun",
        f"--nnodes={hosts}",
        f"--nproc-per-node={ranks_per_host}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={rdzv_host}:{port}",
        f"--rdzv-id=dmt-{port}",
        *extra_args,
        *target,
        *argv,
    ]


def launch_local(
    argv: Sequence[str],
    *,
    hosts: int,
    ranks_per_host: int,
    env: Mapping[str, str] | None = None,
    rdzv_host: str = "127.0.0.1",
    host_launch: Callable[[int], HostLaunch] | None = None,
    target: Sequence[str] = ("-m", "dmt.cli"),
    pass_fds: Sequence[int] = (),
) -> int:
    """Start ``hosts`` torchrun agents running ``dmt <argv>`` (or ``<target> <argv>``, e.g. a
    script path); return the worst exit code.

    If one agent fails the others are stopped, so a crashed rank never leaves peers hanging in a
    collective until the timeout. ``host_launch(h)`` (with ``rdzv_host``, host 0's address) wraps
    host ``h``'s agent, e.g. into its own network namespace (``dmt.perf.netns.ShapedNetwork``).
    ``pass_fds`` are inherited by the agents (the run directory's lock: ``dmt.train.run_dir``).

    Raises:
        JobStopped: a SIGTERM/SIGINT/SIGHUP arrived; every agent and rank has been stopped.
    """
    Topology(world_size=hosts * ranks_per_host, local_world_size=ranks_per_host)  # validates
    port = free_port()
    child_env = {**os.environ, **(env or {}), WATCH_PARENT_ENV: "1"}
    # gloo over loopback: name the interface so it never picks an unreachable one.
    child_env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    child_env.setdefault("OMP_NUM_THREADS", "1")
    wraps = [host_launch(h) if host_launch is not None else HostLaunch() for h in range(hosts)]
    procs: list[subprocess.Popen] = []
    with _signals_raise_job_stopped():
        try:
            for h, w in enumerate(wraps):
                command = torchrun_command(
                    argv,
                    hosts=hosts,
                    ranks_per_host=ranks_per_host,
                    port=port,
                    rdzv_host=rdzv_host,
                    extra_args=w.torchrun_args,
                    target=target,
                )
                procs.append(
                    subprocess.Popen(
                        [*w.prefix, *command],
                        env={**child_env, **host_gpu_env(h, ranks_per_host, child_env), **w.env},
                        start_new_session=True,
                        pass_fds=tuple(pass_fds),
                    )
                )
            return _wait_all(procs)
        finally:
            _stop(procs)


@contextlib.contextmanager
def _signals_raise_job_stopped() -> Iterator[None]:
    """Inside the block, the first SIGTERM/SIGINT/SIGHUP raises JobStopped; later ones are ignored so
    they cannot interrupt the clean-up. Only in the main thread, where Python delivers signals."""
    received: list[int] = []

    def handler(signum: int, frame: object) -> None:
        if not received:
            received.append(signum)
            raise JobStopped(signum)

    try:
        previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    except ValueError:  # not the main thread: the caller's signals stay as they are
        yield
        return
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _stop(procs: list[subprocess.Popen]) -> None:
    """Stop the agents still running: SIGTERM (torchrun stops its ranks), then SIGKILL after the grace time."""
    running = [p for p in procs if p.poll() is None]
    for p in running:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for p in running:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def host_gpu_env(host: int, ranks_per_host: int, env: Mapping[str, str]) -> dict[str, str]:
    """``CUDA_VISIBLE_DEVICES`` giving emulated host ``host`` its own L GPUs; {} on CPU.

    Why: on a real cluster every host has GPUs 0..L-1, and torchrec places a rank's shards on
    ``cuda:{rank % LOCAL_WORLD_SIZE}``; two emulated hosts on one box would both use GPU 0.
    Left alone when the user set the variable or the box has too few GPUs for H x L.
    """
    if "CUDA_VISIBLE_DEVICES" in env:
        return {}
    import torch  # device_count asks NVML; it does not start CUDA here

    gpus = torch.cuda.device_count()
    first = host * ranks_per_host
    if gpus < first + ranks_per_host:
        return {}
    return {"CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in range(first, first + ranks_per_host))}


def _wait_all(procs: list[subprocess.Popen]) -> int:
    worst = 0
    running = list(procs)
    while running:
        for p in list(running):
            rc = p.poll()
            if rc is None:
                continue
            running.remove(p)
            worst = worst or rc
            if rc != 0:
                return rc
        time.sleep(0.2)
    return worst
