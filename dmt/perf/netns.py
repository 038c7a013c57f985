"""Emulated hosts behind a shaped network link: one Linux network namespace per host.

``dmt bench --hosts H --shaped-link 1gbit,0.5ms`` (and anything else launched through
:func:`dmt.distributed.launch.launch_local` with :meth:`ShapedNetwork.host_launch`) runs each emulated host's
torchrun agent and its ranks in a namespace of its own, so the bytes that cross hosts are real TCP
traffic through a rate-limited (and optionally delayed) link, while a host's own ranks still talk
over loopback at memory speed::

     netns dmt<pid>h0                root netns                 netns dmt<pid>h1
   ranks 0..L-1, 10.77.0.1 ── veth ══ tc ══ bridge ══ tc ══ veth ── 10.77.0.2, ranks L..2L-1

* every host gets a veth pair: one end inside its namespace (address 10.77.0.<h+1>/24), the other
  in a bridge in the root namespace; the root namespace itself has no address on it;
* both ends are shaped with ``tc``: a token bucket (``tbf``) at RATE on each direction, i.e. every
  host has a full-duplex uplink of RATE, like a NIC; DELAY (``netem``) is added once, on the uplink,
  so a round trip between two hosts takes 2 x DELAY more;
* the ranks' gloo sockets bind to the namespace's veth (``GLOO_SOCKET_IFNAME``); a connection to
  the host's *own* address is routed over the namespace's loopback (the kernel's local route), so
  intra-host traffic is never shaped;
* the c10d rendezvous and the workers' store live at host 0's address (torchrun ``--local-addr``
  and ``--rdzv-conf is_host=...``: torchrun cannot tell on its own that 10.77.0.1 is "this host").

Everything is removed on exit, on errors and on Ctrl-C / SIGTERM (deleting a namespace deletes
its veth and the peer end; the bridge is deleted by name). Names carry the launcher's pid, so
concurrent runs do not collide and a leftover from a killed run (SIGKILL) is recognisable:
``ip netns list | grep ^dmt``.

Needs root (CAP_NET_ADMIN) and iproute2 (``ip``, ``tc``). Without netem in the kernel (no
``sch_netem`` module, e.g. some VM kernels) only the rate can be shaped: give ``RATE`` alone or
``RATE,0ms``.

Example (root)::

    dmt bench --hosts 2 --ranks-per-host 2 --shaped-link 1gbit,1ms --num-embeddings 20000 \\
        --embedding-dim 64 --batch-size 1024 --warmup 10 --steps 20
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType

from dmt.distributed.launch import HostLaunch
from dmt.errors import DmtError

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(bit|kbit|mbit|gbit|tbit|bps|kbps|mbps|gbps)\s*$", re.I)
_DELAY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(us|ms|s)?\s*$", re.I)
_RATE_UNITS = {
    "bit": 1,
    "kbit": 1e3,
    "mbit": 1e6,
    "gbit": 1e9,
    "tbit": 1e12,
    "bps": 8,
    "kbps": 8e3,
    "mbps": 8e6,
    "gbps": 8e9,
}  # tc: "bps" = bytes/s
_DELAY_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


class NetnsError(DmtError):
    """The shaped network cannot be built here (not root, no iproute2, a qdisc the kernel lacks)."""


@dataclass(frozen=True)
class LinkShape:
    """An inter-host link: ``rate_bits`` per second each way, ``delay_ms`` one-way extra latency.

    Example:
        >>> LinkShape.parse("1gbit,0.5ms")
        LinkShape(rate_bits=1000000000.0, delay_ms=0.5)
        >>> LinkShape.parse("100mbit").delay_ms
        0.0
    """

    rate_bits: float
    delay_ms: float = 0.0

    @staticmethod
    def parse(spec: str) -> LinkShape:
        """``RATE[,DELAY]`` in tc units: ``1gbit``, ``500mbit``, ``10gbit,0.5ms``, ``1gbit,200us``."""
        rate_s, _, delay_s = spec.partition(",")
        rate = _RATE.match(rate_s)
        delay = _DELAY.match(delay_s or "0")
        if rate is None or delay is None:
            raise DmtError(f"--shaped-link {spec!r}: expected RATE[,DELAY] like '1gbit,0.5ms' or '500mbit'")
        bits = float(rate.group(1)) * _RATE_UNITS[rate.group(2).lower()]
        ms = float(delay.group(1)) * _DELAY_UNITS[(delay.group(2) or "ms").lower()]
        if bits <= 0:
            raise DmtError(f"--shaped-link {spec!r}: the rate must be > 0")
        return LinkShape(rate_bits=bits, delay_ms=ms)

    @property
    def rate(self) -> str:
        """The rate in tc's units, e.g. ``1gbit``."""
        for unit, scale in (("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3)):
            if self.rate_bits >= scale:
                return f"{self.rate_bits / scale:g}{unit}"
        return f"{self.rate_bits:g}bit"

    def __str__(self) -> str:
        return self.rate + (f",{self.delay_ms:g}ms" if self.delay_ms else "")


def check_can_shape() -> None:
    """Raise NetnsError unless this process can create namespaces and run tc (root + iproute2)."""
    if os.geteuid() != 0:
        raise NetnsError(
            "--shaped-link needs root (network namespaces, veth and tc need CAP_NET_ADMIN); "
            "run as root or drop --shaped-link"
        )
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        raise NetnsError(f"--shaped-link needs iproute2, but {missing} are not on PATH (apt-get install iproute2)")


def _run(*cmd: str) -> None:
    """Run one ip/tc command; its stderr becomes the error message."""
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise NetnsError(f"`{' '.join(cmd)}` failed: {done.stderr.strip() or done.returncode}")


def _tbf(rate_bits: float) -> list[str]:
    """Token bucket at ``rate_bits``: the bucket holds 2 ms of traffic (at least 64 KiB, so one
    GSO super-packet fits), and 50 ms may queue before drops make TCP back off."""
    burst = max(64 * 1024, int(rate_bits / 8 * 0.002))
    return ["tbf", "rate", f"{int(rate_bits)}bit", "burst", str(burst), "latency", "50ms"]


class ShapedNetwork:
    """H network namespaces joined by a bridge over shaped veth links (see the module docstring).

    A context manager: entering builds the network, exiting (also on an exception or Ctrl-C)
    removes it. While active, :meth:`host_launch` tells :func:`dmt.distributed.launch.launch_local` how to
    start host ``h``'s torchrun agent inside namespace ``h``.

    Args:
        hosts: emulated hosts H (at most 250: one /24).
        shape: the link every host has to the bridge.
    """

    def __init__(self, hosts: int, shape: LinkShape) -> None:
        if not 1 <= hosts <= 250:
            raise NetnsError(f"hosts={hosts} must be between 1 and 250 for a shaped network")
        self.hosts = hosts
        self.shape = shape
        # Interface names are at most 15 characters: "d" + pid + "h" + host + "n" fits.
        self._tag = f"d{os.getpid()}"
        self._made_bridge = False
        self._made_ns: list[str] = []

    # -- names -----------------------------------------------------------------------------------
    def namespace(self, host: int) -> str:
        return f"dmt{os.getpid()}h{host}"

    def address(self, host: int) -> str:
        return f"10.77.0.{host + 1}"

    def interface(self, host: int) -> str:
        """The veth end inside host ``host``'s namespace (its ranks bind here)."""
        return f"{self._tag}h{host}n"

    def _root_end(self, host: int) -> str:
        return f"{self._tag}h{host}r"

    @property
    def bridge(self) -> str:
        return f"{self._tag}br"

    @property
    def rendezvous_host(self) -> str:
        return self.address(0)

    def host_launch(self, host: int) -> HostLaunch:
        """How host ``host``'s torchrun agent runs: inside its namespace, bound to its veth."""
        iface = self.interface(host)
        return HostLaunch(
            prefix=("ip", "netns", "exec", self.namespace(host)),
            env={"GLOO_SOCKET_IFNAME": iface, "NCCL_SOCKET_IFNAME": iface},
            torchrun_args=(
                f"--local-addr={self.address(host)}",
                f"--rdzv-conf=is_host={'true' if host == 0 else 'false'}",
            ),
        )

    # -- life cycle ------------------------------------------------------------------------------
    def __enter__(self) -> ShapedNetwork:
        check_can_shape()
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _build(self) -> None:
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        self._made_bridge = True
        _run("ip", "link", "set", self.bridge, "up")
        for h in range(self.hosts):
            self._add_host(h)

    def _add_host(self, h: int) -> None:
        ns, inner, outer = self.namespace(h), self.interface(h), self._root_end(h)
        _run("ip", "netns", "add", ns)
        self._made_ns.append(ns)
        _run("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
        _run("ip", "link", "set", inner, "netns", ns)
        _run("ip", "link", "set", outer, "master", self.bridge, "up")
        _run("ip", "-n", ns, "addr", "add", f"{self.address(h)}/24", "dev", inner)
        _run("ip", "-n", ns, "link", "set", "lo", "up")  # intra-host traffic takes this path
        _run("ip", "-n", ns, "link", "set", inner, "up")
        # Downlink: the root end's egress is what the host receives.
        _run("tc", "qdisc", "add", "dev", outer, "root", *_tbf(self.shape.rate_bits))
        # Uplink: rate, then the one-way delay in a netem child of the token bucket.
        uplink = ["dev", inner, "root", "handle", "1:", *_tbf(self.shape.rate_bits)]
        _run("ip", "netns", "exec", ns, "tc", "qdisc", "add", *uplink)
        if self.shape.delay_ms > 0:
            self._add_delay(ns, inner)

    def _add_delay(self, ns: str, inner: str) -> None:
        try:
            delay = f"{self.shape.delay_ms * 1000:.0f}us"
            netem = ["dev", inner, "parent", "1:1", "handle", "10:", "netem", "delay", delay, "limit", "100000"]
            _run("ip", "netns", "exec", ns, "tc", "qdisc", "add", *netem)
        except NetnsError as e:
            if "unknown" in str(e).lower():
                raise NetnsError(
                    f"this kernel has no netem qdisc (sch_netem), so a delay of {self.shape.delay_ms:g} ms "
                    f"cannot be emulated; give the rate alone (--shaped-link {self.shape.rate})"
                ) from None
            raise

    def close(self) -> None:
        """Remove every namespace and the bridge this object made (idempotent, never raises)."""
        for h, ns in reversed(list(enumerate(self._made_ns))):
            # Delete the veth pair first: `ip link del` returns once it is gone, whereas the pair of
            # a deleted namespace is torn down asynchronously and may still be listed for a moment.
            subprocess.run(["ip", "link", "del", self._root_end(h)], capture_output=True)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self._made_ns.clear()
        if self._made_bridge:
            subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
            self._made_bridge = False


@contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """Turn SIGTERM into SystemExit inside the block, so ``finally`` clean-ups run (Ctrl-C already
    raises KeyboardInterrupt). Only in the main thread, where Python delivers signals."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
