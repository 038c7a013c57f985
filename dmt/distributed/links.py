"""The link between emulated hosts on one GPU box: NVLink, NVLink inside a host + sockets between, or sockets.

A box of several GPUs runs H emulated hosts (one torchrun agent each, ``dmt.distributed.launch``).
NCCL picks its transport per pair of ranks: P2P (NVLink) or shared memory between ranks it sees
on one node, its network transport otherwise. Which ranks share a node it decides by a host hash,
which ``NCCL_HOSTID`` overrides. So, per :class:`LinkKind`:

* ``nvlink``: NCCL's defaults; every collective on NVLink, the emulated "inter-host" link too.
* ``hierarchical``: each emulated host's agent and ranks get their own ``NCCL_HOSTID=host<h>``
  (and ``NCCL_IB_DISABLE=1``): NCCL treats the hosts as different nodes, keeps P2P/SHM inside a
  host and sends everything between hosts through its TCP socket transport. ``NCCL_DEBUG=INFO``
  shows "via P2P" inside a host and "via NET/Socket" between hosts (verified on 4x H200 as 2x2).
  This is the link a real cluster has: fast inside a host, slow between hosts.
* ``sockets``: ``NCCL_P2P_DISABLE=1 NCCL_SHM_DISABLE=1 NCCL_IB_DISABLE=1`` everywhere: TCP for
  every collective, intra-host ones too (NCCL's transport choice is per process, not per peer).

Bandwidth knob: the socket transport's parallelism, ``NCCL_SOCKET_NTHREADS`` x
``NCCL_NSOCKS_PERTHREAD`` (NCCL allows at most 64 sockets per connection). It moves the socket link's
bandwidth up or down within what the box's TCP stack carries; there is no rate cap: a ``tc`` rate
on the box's interface would shape every other process's traffic too, and the per-host network
namespaces of ``dmt.perf.netns`` (the CPU path) are untested with NCCL's socket transport.

On CPU (gloo) there is no NCCL: only the default applies (gloo over loopback); a real slow link
between emulated CPU hosts is ``dmt bench --shaped-link`` (network namespaces + tc).

Example:
    >>> link = EmulatedLink("hierarchical")
    >>> link.host_env(1)
    {'NCCL_HOSTID': 'host1', 'NCCL_IB_DISABLE': '1'}
    >>> EmulatedLink("sockets", socket_threads=4, sockets_per_thread=2).host_env(0)["NCCL_SOCKET_NTHREADS"]
    '4'
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from dmt.choices import LinkKind
from dmt.distributed.launch import HostLaunch
from dmt.errors import DmtError

# NCCL's own limits on its socket transport (src/transport/net_socket.cc: MAX_THREADS 16, MAX_SOCKETS 64).
MAX_SOCKET_THREADS = 16
MAX_SOCKETS = 64
SOCKETS_ENV = {"NCCL_P2P_DISABLE": "1", "NCCL_SHM_DISABLE": "1", "NCCL_IB_DISABLE": "1"}
_DESCRIPTIONS = {
    LinkKind.NVLINK: "NVLink (NCCL P2P) for every collective",
    LinkKind.HIERARCHICAL: "NVLink inside a host, NCCL TCP sockets between hosts (NCCL_HOSTID per host)",
    LinkKind.SOCKETS: "NCCL TCP sockets for every collective (P2P and SHM off)",
}


def host_id(host: int) -> str:
    """The ``NCCL_HOSTID`` of emulated host ``host`` under the hierarchical link."""
    return f"host{host}"


@dataclass(frozen=True)
class EmulatedLink:
    """How the emulated hosts of one box are connected, as NCCL environment variables per host.

    Args:
        kind: a :class:`dmt.choices.LinkKind` (or its value).
        socket_threads: ``NCCL_SOCKET_NTHREADS`` for the socket transport (1-16); None: NCCL's default.
        sockets_per_thread: ``NCCL_NSOCKS_PERTHREAD``; threads x sockets must stay <= 64.

    Raises:
        DmtError: an unknown kind, a knob out of range, or a knob on the NVLink link (no sockets).
    """

    kind: LinkKind = LinkKind.NVLINK
    socket_threads: int | None = None
    sockets_per_thread: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", LinkKind.parse(self.kind, "--link"))
        knobs = {"--socket-threads": self.socket_threads, "--sockets-per-thread": self.sockets_per_thread}
        given = {k: v for k, v in knobs.items() if v is not None}
        if given and self.kind == LinkKind.NVLINK:
            raise DmtError(
                f"{' and '.join(given)} tune NCCL's socket transport: use them with --link hierarchical or sockets"
            )
        if self.socket_threads is not None and not 1 <= self.socket_threads <= MAX_SOCKET_THREADS:
            raise DmtError(
                f"--socket-threads={self.socket_threads} must be between 1 and {MAX_SOCKET_THREADS} (NCCL's limit)"
            )
        if self.sockets_per_thread is not None and self.sockets_per_thread < 1:
            raise DmtError(f"--sockets-per-thread={self.sockets_per_thread} must be >= 1")
        total = (self.socket_threads or 1) * (self.sockets_per_thread or 1)
        if total > MAX_SOCKETS:
            raise DmtError(
                f"--socket-threads x --sockets-per-thread = {total} sockets; NCCL allows at most {MAX_SOCKETS}"
            )

    @property
    def uses_nccl_env(self) -> bool:
        """Whether the link sets NCCL variables (every kind but NVLink)."""
        return self.kind != LinkKind.NVLINK

    def host_env(self, host: int) -> dict[str, str]:
        """The variables of emulated host ``host``'s torchrun agent (its ranks inherit them)."""
        env: dict[str, str] = {}
        if self.kind == LinkKind.HIERARCHICAL:
            env = {"NCCL_HOSTID": host_id(host), "NCCL_IB_DISABLE": "1"}
        elif self.kind == LinkKind.SOCKETS:
            env = dict(SOCKETS_ENV)
        if self.socket_threads is not None:
            env["NCCL_SOCKET_NTHREADS"] = str(self.socket_threads)
        if self.sockets_per_thread is not None:
            env["NCCL_NSOCKS_PERTHREAD"] = str(self.sockets_per_thread)
        return env

    def host_launch(self, host: int) -> HostLaunch:
        """``dmt.distributed.launch.launch_local``'s ``host_launch``: host ``host``'s agent with its env."""
        return HostLaunch(env=self.host_env(host))

    def label(self) -> str:
        """What a report says about the link, e.g. in ``dmt bench``'s JSON."""
        knobs = ""
        if self.socket_threads or self.sockets_per_thread:
            threads, sockets = self.socket_threads or "default", self.sockets_per_thread or "default"
            knobs = f"; {threads} socket threads x {sockets} sockets each"
        return f"{self.kind.value}: {_DESCRIPTIONS[self.kind]}{knobs}"

    def check_device(self, cuda: bool) -> None:
        """Refuse a link that needs NCCL on a machine without GPUs (gloo has no such transports).

        Raises:
            DmtError: one line naming the CPU alternative.
        """
        if self.uses_nccl_env and not cuda:
            raise DmtError(
                f"--link {self.kind.value} chooses NCCL transports and needs GPUs; on CPU (gloo) drop it "
                "(`dmt bench --shaped-link RATE` emulates a slow inter-host link there: root, netns + tc)"
            )

    def check_rank_env(self, env: Mapping[str, str], host: int) -> None:
        """In a rank: check that its environment carries this link's variables for its host.

        A rank started by ``dmt``'s own launcher always does; a rank of a user's torchrun does only
        if the user set them, and otherwise would time a different link than its report names.

        Raises:
            DmtError: a variable missing or different, with the fix.
        """
        wrong = {k: v for k, v in self.host_env(host).items() if env.get(k) != v}
        if wrong:
            settings = " ".join(f"{k}={v}" for k, v in wrong.items())
            raise DmtError(
                f"--link {self.kind.value} needs {settings} in host {host}'s environment; dmt sets them when it "
                "launches the emulated hosts itself (--hosts H without an outer torchrun), else set them yourself"
            )
