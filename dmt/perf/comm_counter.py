"""Communication accounting: the bytes every collective sends, split into cross-host and intra-host.

DMT exists to cut the bytes that cross the slow inter-host network, so it needs to count them
exactly. :class:`CommCounter` is a context manager that, while active, counts every collective this
rank issues through ``torch.distributed``'s Python API (which is what torchrec's eager path calls:
``dist.all_to_all_single`` for the KJT and pooled-embedding all-to-alls, ``dist.reduce_scatter*`` /
``dist.all_gather*`` for row-wise sharding) plus DDP's gradient all-reduce through a DDP comm hook
(:func:`register_ddp_counting_hooks`; DDP's reducer is C++ and bypasses the Python API).

What one collective counts -- the bytes this rank sends to each other rank, same-host or not --
is :mod:`dmt.perf.comm_sizers`'s business; the counts are kept as :mod:`dmt.perf.comm_summary`'s
:class:`CommSummary` keyed by :class:`CommKey` (kind, group shape, phase, payload). Not counted:
object collectives (``broadcast_object_list``, ``all_gather_object``: set-up only), point-to-point
ops, DDP's start-up parameter broadcast (C++), and torchrec's sync-collective mode
(``torchrec.distributed.comm_ops.set_use_sync_collectives(True)`` or torch.compile), which goes
through ``torch.ops._c10d_functional`` and bypasses the Python API: entering a counter in that
mode warns.

Example:
    >>> from dmt.distributed.topology import Topology
    >>> with CommCounter(Topology(world_size=1, local_world_size=1)) as comm:
    ...     pass  # forward, backward, step; a world of 1 sends nothing
    >>> comm.summary().total().bytes
    0.0

Analytic counterparts, in bytes per sample of the global batch summed over all ranks, come from
:mod:`dmt.perf.comm_model` and use the same :class:`CommSummary` type, so a benchmark can print
measured next to expected.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import sys
import threading
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed import distributed_c10d as _c10d

from dmt.distributed.topology import Topology
from dmt.perf.comm_sizers import SIZERS, GroupInfo, Sizer, allreduce_sent, group_label, payload_kind
from dmt.perf.comm_summary import GROUPS, OPS, PAYLOADS, PHASES, CommKey, CommStats, CommSummary, reduce_summary

__all__ = [
    "GROUPS",
    "OPS",
    "PAYLOADS",
    "PHASES",
    "CommCounter",
    "CommKey",
    "CommStats",
    "CommSummary",
    "group_label",
    "reduce_summary",
    "register_ddp_counting_hooks",
]

# Module prefixes searched for direct aliases (``from torch.distributed import all_reduce``) of the
# patched functions. torchrec 1.6.1 and 1.8.0 have none: they call ``dist.<fn>`` at run time.
_ALIAS_MODULE_PREFIXES = ("torchrec", "fbgemm_gpu", "dmt", "towers")


# ----------------------------------------------------------------------------------------------
# Patch installation: shared by all active counters, installed by the first to enter and removed
# by the last to exit, so nested counters both count and nothing stays patched afterwards.

_lock = threading.RLock()
_active: list[CommCounter] = []
_restore: list[tuple[Any, str, Any]] = []  # (namespace, attribute, original)
_tls = threading.local()  # .depth > 0 while inside a counted collective (no double counting)


def _in_backward() -> bool:
    """True while autograd's engine runs a backward pass on this thread."""
    task_id = getattr(torch._C, "_current_graph_task_id", None)
    return task_id is not None and task_id() != -1


def _make_counted(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap one torch.distributed collective so that active counters see it before it runs."""
    kind, sizer = SIZERS[name]
    signature = inspect.signature(original)

    @functools.wraps(original)
    def counted(*args: Any, **kwargs: Any) -> Any:
        depth = getattr(_tls, "depth", 0)
        if depth == 0 and _active:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            for counter in list(_active):
                counter._count_collective(kind, sizer, bound.arguments)
        _tls.depth = depth + 1
        try:
            return original(*args, **kwargs)
        finally:
            _tls.depth = depth

    return counted


def _install_patches() -> None:
    originals = {n: getattr(dist, n) for n in SIZERS if hasattr(dist, n)}
    wrappers = {n: _make_counted(n, f) for n, f in originals.items()}
    by_id = {id(f): n for n, f in originals.items()}
    for name, wrapper in wrappers.items():
        _restore.append((dist, name, originals[name]))
        setattr(dist, name, wrapper)
    # Direct aliases imported by module, e.g. ``from torch.distributed import all_to_all_single``.
    for mod_name, mod in list(sys.modules.items()):
        if mod is None or not mod_name.startswith(_ALIAS_MODULE_PREFIXES) or mod_name == __name__:
            continue
        for attr, value in list(vars(mod).items()):
            name = by_id.get(id(value))
            if name is not None and value is originals[name]:
                _restore.append((mod, attr, value))
                setattr(mod, attr, wrappers[name])


def _remove_patches() -> None:
    while _restore:
        namespace, attr, original = _restore.pop()
        setattr(namespace, attr, original)


def _check_sync_collectives() -> None:
    comm_ops = sys.modules.get("torchrec.distributed.comm_ops")
    getter = getattr(comm_ops, "get_use_sync_collectives", None)
    if getter is not None and getter():
        warnings.warn(
            "torchrec sync collectives are on (set_use_sync_collectives or torch.compile): they go "
            "through torch.ops._c10d_functional, which CommCounter does not see; counts will be low",
            stacklevel=3,
        )


class CommCounter:
    """Count the bytes this rank sends in collectives, per kind x group x phase x payload.

    Entering installs the counting wrappers on ``torch.distributed``'s collectives; exiting
    restores the originals. DDP all-reduces are counted only where
    :func:`register_ddp_counting_hooks` hooked the model. Counts accumulate across entries until
    :meth:`reset`.

    Args:
        topology: this rank's topology; its ``rank`` must be the process's global rank.

    Example:
        >>> comm = CommCounter(Topology(world_size=1, local_world_size=1))
        >>> with comm, comm.phase("eval"):
        ...     pass
        >>> comm.summary().stats
        {}
    """

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self._stats: dict[CommKey, CommStats] = {}
        self._groups: dict[int, tuple[Any, GroupInfo]] = {}  # id(group) -> (group kept alive, info)
        self._forced_phase: list[str] = []
        self._stats_lock = threading.Lock()

    # -- context -------------------------------------------------------------------------------

    def __enter__(self) -> CommCounter:
        if dist.is_initialized() and dist.get_rank() != self.topology.rank:
            raise ValueError(
                f"topology.rank={self.topology.rank} but this process is rank {dist.get_rank()}; "
                "pass Topology.from_env() or the DistEnv's topology"
            )
        with _lock:
            if self in _active:
                raise RuntimeError("this CommCounter is already active")
            if not _active:
                _check_sync_collectives()
                try:
                    _install_patches()
                except BaseException:
                    _remove_patches()  # never leave a half-patched torch.distributed behind
                    raise
            _active.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        with _lock:
            _active.remove(self)
            if not _active:
                _remove_patches()

    @property
    def active(self) -> bool:
        return self in _active

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Label everything counted inside the block ``name`` (else: backward inside autograd, forward outside)."""
        self._forced_phase.append(name)
        try:
            yield
        finally:
            self._forced_phase.pop()

    def current_phase(self) -> str:
        if self._forced_phase:
            return self._forced_phase[-1]
        return "backward" if _in_backward() else "forward"

    # -- results -------------------------------------------------------------------------------

    def summary(self) -> CommSummary:
        """This rank's counts so far (a snapshot)."""
        with self._stats_lock:
            return CommSummary(dict(self._stats))

    def reset(self) -> None:
        with self._stats_lock:
            self._stats.clear()

    # -- recording -----------------------------------------------------------------------------

    def _group_info(self, group: Any) -> GroupInfo:
        group = dist.group.WORLD if group is None else group
        cached = self._groups.get(id(group))
        if cached is not None and cached[0] is group:
            return cached[1]
        ranks = tuple(dist.get_process_group_ranks(group))
        me = self.topology.rank
        assert me in ranks, f"rank {me} issued a collective on group {ranks} it is not part of"
        info = GroupInfo.of(ranks, self.topology)
        self._groups[id(group)] = (group, info)
        return info

    def record(self, op: str, ranks: Sequence[int], sent: Sequence[float], payload: str) -> None:
        """Count one ``op`` on the group of global ``ranks`` that sent ``sent[j]`` bytes to ``ranks[j]``.

        For collectives issued outside ``torch.distributed``'s Python API; this rank's own entry
        is ignored.
        """
        ranks = tuple(ranks)
        me = self.topology.rank
        if me not in ranks:
            raise ValueError(f"rank {me} is not in ranks={list(ranks)}")
        self._record(op, GroupInfo.of(ranks, self.topology), sent, payload)

    def _record(self, op: str, info: GroupInfo, sent: Sequence[float], payload: str) -> None:
        if len(sent) != len(info.ranks):
            raise ValueError(f"{op}: {len(sent)} destination sizes for a group of {len(info.ranks)}")
        cross = sum(b for j, b in enumerate(sent) if j != info.index and info.cross[j])
        intra = sum(b for j, b in enumerate(sent) if j != info.index and not info.cross[j])
        key = CommKey(op=op, group=info.label, phase=self.current_phase(), payload=payload)
        add = CommStats(calls=1, bytes=float(cross + intra), cross_host=float(cross), intra_host=float(intra))
        with self._stats_lock:
            self._stats[key] = self._stats.get(key, CommStats()) + add

    def _count_collective(self, kind: str, sizer: Sizer, args: Mapping[str, Any]) -> None:
        info = self._group_info(args.get("group"))
        sent, tensor = sizer(args, info.ranks, info.index)
        self._record(kind, info, sent, payload_kind(tensor))


# ----------------------------------------------------------------------------------------------
# DDP: the reducer all-reduces gradient buckets in C++. A comm hook that counts and then does
# exactly what DDP's default does (divide by the group size, all-reduce, return the bucket).


_hooked_ddps: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()  # hooked once, never twice


@dataclass
class _DdpHookState:
    """What the counting hook needs: DDP's process group and which counter(s) to feed."""

    process_group: Any
    counter: CommCounter | None  # None: every active counter


def _counting_allreduce_hook(state: _DdpHookState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP comm hook: count the bucket as an all-reduce, then average it like DDP's default."""
    group = state.process_group if state.process_group is not None else dist.group.WORLD
    buffer = bucket.buffer()
    counters = [state.counter] if state.counter is not None else list(_active)
    for counter in counters:
        if counter is not None and counter.active:
            info = counter._group_info(group)
            counter._record("ddp_allreduce", info, allreduce_sent(buffer, len(info.ranks)), payload_kind(buffer))
    buffer.div_(group.size())
    # The unpatched function: this all-reduce is already counted as ddp_allreduce.
    work = _c10d.all_reduce(buffer, group=group, async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])


# DDP checks the hook's annotations against the real types; this module's are strings (PEP 563).
_counting_allreduce_hook.__annotations__ = {
    "state": _DdpHookState,
    "bucket": dist.GradBucket,
    "return": torch.futures.Future[torch.Tensor],
}


def _all_submodules(root: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Module]]:
    """Every submodule by FQN, through ``named_children``: torchrec's sharded tower modules
    override ``named_modules`` to yield only themselves, which would hide their intra-host DDPs."""
    seen: set[int] = set()
    stack = [("", root)]
    while stack:
        name, module = stack.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        yield name, module
        stack.extend((f"{name}.{n}" if name else n, c) for n, c in reversed(list(module.named_children())))


def register_ddp_counting_hooks(model: torch.nn.Module, counter: CommCounter | None = None) -> int:
    """Hook every DistributedDataParallel inside ``model`` so its all-reduces are counted.

    Finds DMP's dense DDP and any tower module's intra-host DDP (each keeps its own process group).
    A DDP comm hook cannot be removed, so the hook counts only while a counter is active (``counter``
    if given, else every active one) and otherwise just all-reduces, exactly like DDP's default.
    Register before the first backward. A DDP that already has a comm hook (e.g. DMP's
    ``allreduce_comm_precision``) is skipped with a warning.

    Returns:
        The number of DDP modules newly hooked.
    """
    from torch.nn.parallel import DistributedDataParallel

    hooked = 0
    for name, module in _all_submodules(model):
        if not isinstance(module, DistributedDataParallel) or module in _hooked_ddps:
            continue
        if getattr(module, "_comm_hooks", None):
            warnings.warn(
                f"DDP at {name or '<root>'} already has a comm hook; its all-reduce is not counted",
                stacklevel=2,
            )
            continue
        module.register_comm_hook(_DdpHookState(module.process_group, counter), _counting_allreduce_hook)
        _hooked_ddps.add(module)
        hooked += 1
    return hooked
