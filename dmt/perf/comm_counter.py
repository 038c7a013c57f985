"""Communication accounting: the bytes every collective sends, split into cross-host and intra-host.

DMT exists to cut the bytes that cross the slow inter-host network, so it needs to count them
exactly. :class:`CommCounter` is a context manager that, while active, counts every collective this
rank issues through ``torch.distributed``'s Python API (which is what torchrec's eager path calls:
``dist.all_to_all_single`` for the KJT and pooled-embedding all-to-alls, ``dist.reduce_scatter*`` /
``dist.all_gather*`` for row-wise sharding) plus DDP's gradient all-reduce through a DDP comm hook
(:func:`register_ddp_counting_hooks`; DDP's reducer is C++ and bypasses the Python API).

What is counted, from this rank's point of view: the bytes it *sends to other ranks* (never to
itself), split by destination into same-host and other-host with :class:`~dmt.distributed.topology.Topology`.

- all-to-alls: exact, from the split sizes.
- reduce-scatter: chunk ``j`` of the input goes to member ``j``; all-gather: the input goes to every
  other member. Totals equal the ring algorithm's ``(n-1)/n * S`` (``S`` = the full tensor).
- all-reduce (and DDP's): the ring estimate ``2(n-1)/n * S``, as a reduce-scatter then an
  all-gather, i.e. ``2S/n`` to every other member.
- broadcast: the source sends ``S`` to every other member; the others send nothing.

These are *logical* bytes, independent of the backend's algorithm; the wire bytes of gloo or NCCL
(trees, rings, NVLS, protocol headers) differ. All-to-alls are point-to-point by nature, so their
split is what any backend must move. For all-reduce (and reduce-scatter / all-gather) the
same-host / other-host split is that of the direct exchange: a topology-aware algorithm moves
fewer bytes between hosts (a host-contiguous ring crosses hosts H times; a hierarchical one
``2(H-1)/H * S`` per host in all, vs. ``2(W-L)/W * S`` per rank here), so read DDP's cross-host
count as an upper bound. Not counted: object collectives
(``broadcast_object_list``, ``all_gather_object``: set-up only), point-to-point ops, DDP's start-up
parameter broadcast (C++), and torchrec's sync-collective mode
(``torchrec.distributed.comm_ops.set_use_sync_collectives(True)`` or torch.compile), which goes
through ``torch.ops._c10d_functional`` and bypasses the Python API: entering a counter in that
mode warns.

Each count is keyed by :class:`CommKey`: the collective kind (:data:`OPS`), the process group's
shape (:data:`GROUPS`), the phase ("forward" unless the collective runs inside autograd's backward,
or whatever :meth:`CommCounter.phase` forces), and the payload ("float": embeddings, gradients,
tower outputs; "int": ids, lengths, split sizes).

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
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed import distributed_c10d as _c10d

from dmt.distributed.topology import Topology

OPS = ("all_to_all_single", "all_to_all", "reduce_scatter", "all_gather", "all_reduce", "broadcast", "ddp_allreduce")
# A process group is named by its shape, which is the same on every rank (its members are not:
# rank 0's peers are [0, 2], rank 1's are [1, 3]), so counts from all ranks add up per name.
GROUPS = ("world", "intra_host", "cross_host", "mixed")
PHASES = ("forward", "backward")
PAYLOADS = ("float", "int")

# Module prefixes searched for direct aliases (``from torch.distributed import all_reduce``) of the
# patched functions. torchrec 1.6.1 and 1.8.0 have none: they call ``dist.<fn>`` at run time.
_ALIAS_MODULE_PREFIXES = ("torchrec", "fbgemm_gpu", "dmt", "towers")


@dataclass(frozen=True, order=True)
class CommKey:
    """What a count is about: collective kind, group shape, phase and payload type."""

    op: str
    group: str
    phase: str
    payload: str


@dataclass(frozen=True)
class CommStats:
    """Collective calls and the bytes they sent off-rank (``bytes == cross_host + intra_host``)."""

    calls: int = 0
    bytes: float = 0.0
    cross_host: float = 0.0
    intra_host: float = 0.0

    def __add__(self, other: CommStats) -> CommStats:
        return CommStats(
            calls=self.calls + other.calls,
            bytes=self.bytes + other.bytes,
            cross_host=self.cross_host + other.cross_host,
            intra_host=self.intra_host + other.intra_host,
        )

    def scaled(self, factor: float) -> CommStats:
        """Bytes times ``factor``; the call count is kept."""
        f = factor
        return replace(self, bytes=self.bytes * f, cross_host=self.cross_host * f, intra_host=self.intra_host * f)


@dataclass(frozen=True)
class CommSummary:
    """Counts keyed by :class:`CommKey`: one rank's, all ranks' summed, or an analytic model's.

    Example:
        >>> s = CommSummary({CommKey("all_to_all_single", "world", "forward", "float"):
        ...                  CommStats(calls=2, bytes=96.0, cross_host=64.0, intra_host=32.0)})
        >>> s.total(phase="forward").cross_host, s.total(phase="backward").bytes
        (64.0, 0.0)
        >>> s.per_sample(32).total().bytes
        3.0
    """

    stats: Mapping[CommKey, CommStats] = field(default_factory=dict)

    def total(
        self,
        *,
        op: str | Sequence[str] | None = None,
        group: str | Sequence[str] | None = None,
        phase: str | Sequence[str] | None = None,
        payload: str | Sequence[str] | None = None,
    ) -> CommStats:
        """Sum of the entries matching every given filter (a value or a sequence of values)."""

        def match(value: str, wanted: str | Sequence[str] | None) -> bool:
            return wanted is None or value == wanted or (not isinstance(wanted, str) and value in wanted)

        out = CommStats()
        for k, s in self.stats.items():
            if match(k.op, op) and match(k.group, group) and match(k.phase, phase) and match(k.payload, payload):
                out = out + s
        return out

    def per_sample(self, global_batch: int) -> CommSummary:
        """Bytes divided by ``global_batch`` (samples per step over all ranks); calls are kept."""
        if global_batch < 1:
            raise ValueError(f"global_batch={global_batch} must be >= 1")
        return CommSummary({k: s.scaled(1.0 / global_batch) for k, s in self.stats.items()})

    def grouped(self, *fields: str) -> dict[tuple[str, ...], CommStats]:
        """Totals per distinct value of the named :class:`CommKey` fields, e.g. ``("op", "phase")``."""
        for f in fields:
            if f not in CommKey.__dataclass_fields__:
                raise ValueError(f"unknown field {f!r}; choose from {list(CommKey.__dataclass_fields__)}")
        out: dict[tuple[str, ...], CommStats] = {}
        for k, s in sorted(self.stats.items()):
            g = tuple(getattr(k, f) for f in fields)
            out[g] = out.get(g, CommStats()) + s
        return out

    def to_markdown(self, unit: str = "B") -> str:
        """One row per key: calls, off-rank, cross-host and intra-host bytes."""
        lines = [
            f"| collective | group | phase | payload | calls | off-rank {unit} | cross-host {unit} "
            f"| intra-host {unit} |",
            "|---|---|---|---|---:|---:|---:|---:|",
        ]
        for k, s in sorted(self.stats.items()):
            lines.append(
                f"| {k.op} | {k.group} | {k.phase} | {k.payload} | {s.calls} | {s.bytes:,.1f} | "
                f"{s.cross_host:,.1f} | {s.intra_host:,.1f} |"
            )
        return "\n".join(lines)


def reduce_summary(summary: CommSummary, group: dist.ProcessGroup | None = None) -> CommSummary:
    """Sum ``summary`` over the ranks of ``group`` (default: world); a collective, call it on all ranks.

    Keys missing on some ranks count as zero there. Uses the unpatched collectives, so calling it
    inside an active :class:`CommCounter` does not count itself.
    """
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return CommSummary(dict(summary.stats))
    keys_per_rank: list[Any] = [None] * dist.get_world_size(group)
    _c10d.all_gather_object(keys_per_rank, sorted(summary.stats), group=group)
    keys = sorted({k for ks in keys_per_rank for k in ks})
    mine = [summary.stats.get(k, CommStats()) for k in keys]
    values = torch.tensor([[s.calls, s.bytes, s.cross_host, s.intra_host] for s in mine], dtype=torch.float64)
    values = values.reshape(len(keys), 4)
    backend = str(dist.get_backend(group))
    if "nccl" in backend and torch.cuda.is_available():
        values = values.cuda()
    _c10d.all_reduce(values, group=group)
    rows = values.cpu().tolist()
    return CommSummary({k: CommStats(round(c), b, x, i) for k, (c, b, x, i) in zip(keys, rows)})


# ----------------------------------------------------------------------------------------------
# Bytes per destination. Each sizer takes the collective's bound arguments, the group's global ranks
# and this rank's index in it, and returns the bytes this rank sends to each member (by group
# index; its own entry is ignored) and the tensor whose dtype names the payload.


_Args = Mapping[str, Any]  # the collective's arguments by parameter name
_Sent = tuple[list[float], torch.Tensor]  # bytes to each group member, and the payload tensor


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _even_chunks(total: float, n: int) -> list[float]:
    return [total / n] * n


def _sent_all_to_all_single(a: _Args, ranks: Sequence[int], me: int) -> _Sent:
    x: torch.Tensor = a["input"]
    splits = a.get("input_split_sizes")
    if splits is None or len(splits) == 0:  # equal split along dim 0
        return _even_chunks(_nbytes(x), len(ranks)), x
    rows = x.size(0) if x.dim() else 0
    row_bytes = _nbytes(x) / rows if rows else 0.0
    if len(splits) != len(ranks):
        raise ValueError(f"all_to_all_single got {len(splits)} input splits for a group of {len(ranks)}")
    return [int(s) * row_bytes for s in splits], x


def _sent_all_to_all(a: _Args, ranks: Sequence[int], me: int) -> _Sent:
    xs: list[torch.Tensor] = a["input_tensor_list"]
    return [float(_nbytes(t)) for t in xs], xs[me]


def _sent_reduce_scatter(a: _Args, ranks: Sequence[int], me: int) -> _Sent:
    xs: list[torch.Tensor] = a["input_list"]
    return [float(_nbytes(t)) for t in xs], xs[me]


def _sent_reduce_scatter_tensor(a: _Args, ranks: Sequence[int], me: int) -> _Sent:
    return _even_chunks(_nbytes(a["input"]), len(ranks)), a["input"]


def _sent_all_gather(a: _Args, ranks: Sequence[int], me: int) -> _Sent:
    return [float(_nbytes(a["tensor"]))] * len(ranks), a["tensor"]


def _sent_all_gather_into_tensor(a: _Args, ranks: Sequence[int], me: int) -> _Sent:
    return [float(_nbytes(a["input_tensor"]))] * len(ranks), a["input_tensor"]


def _sent_all_reduce(a: _Args, ranks: Sequence[int], me: int) -> _Sent:
    # Ring estimate 2(n-1)/n * S: a reduce-scatter and an all-gather, S/n to each member in each.
    return _even_chunks(2.0 * _nbytes(a["tensor"]), len(ranks)), a["tensor"]


def _sent_broadcast(a: _Args, ranks: Sequence[int], me: int) -> _Sent:
    src = ranks[a["group_src"]] if a.get("group_src") is not None else a["src"]
    sent = float(_nbytes(a["tensor"])) if ranks[me] == src else 0.0
    return [sent] * len(ranks), a["tensor"]


# torch.distributed function -> (collective kind, sizer). The deprecated underscore aliases are
# included so that older callers are counted too; names a torch version lacks are skipped.
_SIZERS: dict[str, tuple[str, Callable[[_Args, Sequence[int], int], _Sent]]] = {
    "all_to_all_single": ("all_to_all_single", _sent_all_to_all_single),
    "all_to_all": ("all_to_all", _sent_all_to_all),
    "reduce_scatter": ("reduce_scatter", _sent_reduce_scatter),
    "reduce_scatter_tensor": ("reduce_scatter", _sent_reduce_scatter_tensor),
    "_reduce_scatter_base": ("reduce_scatter", _sent_reduce_scatter_tensor),
    "all_gather": ("all_gather", _sent_all_gather),
    "all_gather_into_tensor": ("all_gather", _sent_all_gather_into_tensor),
    "_all_gather_base": ("all_gather", _sent_all_gather_into_tensor),
    "all_reduce": ("all_reduce", _sent_all_reduce),
    "broadcast": ("broadcast", _sent_broadcast),
}


@dataclass(frozen=True)
class _GroupInfo:
    """A process group as seen from this rank: global ranks, own index, shape, which are remote hosts."""

    ranks: tuple[int, ...]
    index: int
    label: str
    cross: tuple[bool, ...]


def group_label(ranks: Sequence[int], topology: Topology) -> str:
    """Shape of a group of global ``ranks``: "world", "intra_host", "cross_host" (one per host) or "mixed".

    Example:
        >>> t = Topology(world_size=4, local_world_size=2)
        >>> [group_label(r, t) for r in ([0, 1, 2, 3], [2, 3], [1, 3], [0, 1, 2])]
        ['world', 'intra_host', 'cross_host', 'mixed']
    """
    hosts = [r // topology.local_world_size for r in ranks]
    if len(ranks) == topology.world_size:
        return "world"
    if len(set(hosts)) == 1:
        return "intra_host"
    if len(set(hosts)) == len(hosts):
        return "cross_host"
    return "mixed"


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
    kind, sizer = _SIZERS[name]
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
    originals = {n: getattr(dist, n) for n in _SIZERS if hasattr(dist, n)}
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
        self._groups: dict[int, tuple[Any, _GroupInfo]] = {}  # id(group) -> (group kept alive, info)
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

    def _group_info(self, group: Any) -> _GroupInfo:
        group = dist.group.WORLD if group is None else group
        cached = self._groups.get(id(group))
        if cached is not None and cached[0] is group:
            return cached[1]
        ranks = tuple(dist.get_process_group_ranks(group))
        me = self.topology.rank
        assert me in ranks, f"rank {me} issued a collective on group {ranks} it is not part of"
        info = _GroupInfo(
            ranks=ranks,
            index=ranks.index(me),
            label=group_label(ranks, self.topology),
            cross=tuple(not self.topology.same_host(me, r) for r in ranks),
        )
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
        info = _GroupInfo(
            ranks,
            ranks.index(me),
            group_label(ranks, self.topology),
            tuple(not self.topology.same_host(me, r) for r in ranks),
        )
        self._record(op, info, sent, payload)

    def _record(self, op: str, info: _GroupInfo, sent: Sequence[float], payload: str) -> None:
        if len(sent) != len(info.ranks):
            raise ValueError(f"{op}: {len(sent)} destination sizes for a group of {len(info.ranks)}")
        cross = sum(b for j, b in enumerate(sent) if j != info.index and info.cross[j])
        intra = sum(b for j, b in enumerate(sent) if j != info.index and not info.cross[j])
        key = CommKey(op=op, group=info.label, phase=self.current_phase(), payload=payload)
        add = CommStats(calls=1, bytes=float(cross + intra), cross_host=float(cross), intra_host=float(intra))
        with self._stats_lock:
            self._stats[key] = self._stats.get(key, CommStats()) + add

    def _count_collective(self, kind: str, sizer: Callable[..., Any], args: Mapping[str, Any]) -> None:
        info = self._group_info(args.get("group"))
        sent, tensor = sizer(args, info.ranks, info.index)
        self._record(kind, info, sent, _payload(tensor))


def _payload(t: torch.Tensor) -> str:
    return "float" if (t.is_floating_point() or t.is_complex()) else "int"


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
            sent = _even_chunks(2.0 * _nbytes(buffer), len(info.ranks))
            counter._record("ddp_allreduce", info, sent, _payload(buffer))
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
