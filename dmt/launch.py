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
from collections.abc import Mapping, Sequence

from dmt.topology import Topology


def under_torchrun(env: Mapping[str, str] | None = None) -> bool:
    """True when this process is a worker started by torchrun (or another launcher setting RANK)."""
    env = os.environ if env is None else env
    return "RANK" in env and "WORLD_SIZE" in env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_command(
    argv: Sequence[str], *, hosts: int, ranks_per_host: int, port: int
) -> list[str]:
    """The torchrun command line of one emulated host running ``dmt <argv>``."""
    return [
        sys.executable, "-m", "torch.distributed.run",
        f"--nnodes={hosts}", f"--nproc-per-node={ranks_per_host}",
        "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", f"--rdzv-id=dmt-{port}",
        "-m", "dmt.cli", *argv,
    ]  # fmt: skip


def launch_local(
    argv: Sequence[str],
    *,
    hosts: int,
    ranks_per_host: int,
    env: Mapping[str, str] | None = None,
) -> int:
    """Start ``hosts`` torchrun agents running ``dmt <argv>``; return the worst exit code.

    If one agent fails the others are stopped, so a crashed rank never leaves peers hanging in a
    collective until the timeout.
    """
    Topology(world_size=hosts * ranks_per_host, local_world_size=ranks_per_host)  # validates
    port = free_port()
    child_env = {**os.environ, **(env or {})}
    # gloo over loopback: name the interface so it never picks an unreachable one.
    child_env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    child_env.setdefault("OMP_NUM_THREADS", "1")
    procs = [
        subprocess.Popen(
            torchrun_command(argv, hosts=hosts, ranks_per_host=ranks_per_host, port=port),
            env=child_env,
            start_new_session=True,
        )
        for h in range(hosts)
    ]
    try:
        return _wait_all(procs)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait()


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
