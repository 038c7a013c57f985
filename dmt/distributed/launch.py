"""Run a ``dmt`` command on H emulated hosts x L ranks on this machine, through real torchrun.

One torchrun agent per emulated host (``--nnodes H --nproc-per-node L``) meeting at a c10d
rendezvous on 127.0.0.1, so every rank sees exactly the variables it would see on a real cluster
(LOCAL_WORLD_SIZE=L, ranks contiguous per host). On real hosts the user runs the same torchrun
line on each host with their own rendezvous endpoint.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from dmt.distributed.topology import Topology


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
) -> int:
    """Start ``hosts`` torchrun agents running ``dmt <argv>`` (or ``<target> <argv>``, e.g. a
    script path); return the worst exit code.

    If one agent fails the others are stopped, so a crashed rank never leaves peers hanging in a
    collective until the timeout. ``host_launch(h)`` (with ``rdzv_host``, host 0's address) wraps
    host ``h``'s agent, e.g. into its own network namespace (``dmt.perf.netns.ShapedNetwork``).
    """
    Topology(world_size=hosts * ranks_per_host, local_world_size=ranks_per_host)  # validates
    port = free_port()
    child_env = {**os.environ, **(env or {})}
    # gloo over loopback: name the interface so it never picks an unreachable one.
    child_env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    child_env.setdefault("OMP_NUM_THREADS", "1")
    wraps = [host_launch(h) if host_launch is not None else HostLaunch() for h in range(hosts)]
    procs = [
        subprocess.Popen(
            [
                *w.prefix,
                *torchrun_command(
                    argv,
                    hosts=hosts,
                    ranks_per_host=ranks_per_host,
                    port=port,
                    rdzv_host=rdzv_host,
                    extra_args=w.torchrun_args,
                    target=target,
                ),
            ],
            env={**child_env, **host_gpu_env(h, ranks_per_host, child_env), **w.env},
            start_new_session=True,
        )
        for h, w in enumerate(wraps)
    ]
    try:
        return _wait_all(procs)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
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
