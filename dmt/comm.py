"""Communication accounting: the bytes every collective sends, split into cross-host and intra-host.

DMT exists to cut the bytes that cross the slow inter-host network, so it needs to count them
exactly. :class:`CommCounter` is a context manager that, while active, counts every collective this
rank issues through ``torch.distributed``'s Python API (which is what torchrec's eager path calls:
``dist.all_to_all_single`` for the KJT and pooled-embedding all-to-alls, ``dist.reduce_scatter*`` /
``dist.all_gather*`` for row-wise sharding) plus DDP's gradient all-reduce through a DDP comm hook
(:func:`register_ddp_counting_hooks`; DDP's reducer is C++ and bypasses the Python API).

What is counted, from this rank's point of view: the bytes it *sends to other ranks* (never to
itself), split by destination into same-host and other-host with :class:`~dmt.topology.Topology`.

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
    >>> from dmt.topology import Topology
    >>> with CommCounter(Topology(world_size=1, local_world_size=1)) as comm:
    ...     pass  # forward, backward, step; a world of 1 sends nothing
    >>> comm.summary().total().bytes
    0.0

Analytic counterparts, in bytes per sample of the global batch summed over all ranks, come from
:func:`analytic_flat` and :func:`analytic_dmt` and use the same :class:`CommSummary` type, so a
benchmark can print measured next to expected.
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

from dmt.topology import Topology

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
    return CommSummary({k: CommStats(int(round(c)), b, x, i) for k, (c, b, x, i) in zip(keys, rows)})


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
        info = _GroupInfo(ranks, ranks.index(me), group_label(ranks, self.topology),
                          tuple(not self.topology.same_host(me, r) for r in ranks))  # fmt: skip
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
    "state": _DdpHookState, "bucket": dist.GradBucket, "return": torch.futures.Future[torch.Tensor],
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
    from torch.nn.parallel import DistributedDataParallel  # noqa: PLC0415

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


# ----------------------------------------------------------------------------------------------
# Analytic model. Everything is in bytes per sample of the global batch, summed over all ranks,
# for one training step, steady state (no lazy set-up). Notation:
#   F features, D embedding dim, p ids per (sample, feature), s bytes per float element,
#   i bytes per id, l bytes per length, H hosts, L ranks per host, W = H*L ranks, B per-rank batch.
# A sample lives on one rank; a destination rank is off-rank for W-1 of W sample ranks, another
# host for W-L of them (fraction (H-1)/H) and the same host for L-1 of them.
# Not modelled: the per-step all-to-all of split sizes ahead of each KJT all-to-all (a few int64
# per rank pair: ~k*8*(W-1)/B bytes per sample, k = 2 or 3), and weighted features' weights.

FLAT_SHARDINGS = ("table_wise", "row_wise")
INTRA_SHARDINGS = ("row_wise", "table_wise", "column_wise")


@dataclass(frozen=True, kw_only=True)
class CommShape:
    """Sizes that set the bytes of one training step.

    Args:
        num_features: sparse features F, one table each.
        embedding_dim: D, the width of every table.
        num_hosts, ranks_per_host: H and L.
        batch_size: B, samples per rank per step (only per-step costs such as DDP need it).
        pooling_factor: p, ids per (sample, feature).
        element_bytes: bytes of an embedding / gradient / tower-output element (fp32: 4).
        index_bytes: bytes of an id (torchrec KJT values are int64).
        length_bytes: bytes of a KJT length (int32 from DMT's batching).
    """

    num_features: int
    embedding_dim: int
    num_hosts: int
    ranks_per_host: int
    batch_size: int
    pooling_factor: float = 1.0
    element_bytes: int = 4
    index_bytes: int = 8
    length_bytes: int = 4

    def __post_init__(self) -> None:
        for name in ("num_features", "embedding_dim", "num_hosts", "ranks_per_host", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.pooling_factor < 0:
            raise ValueError(f"pooling_factor={self.pooling_factor} must be >= 0")

    @property
    def world_size(self) -> int:
        return self.num_hosts * self.ranks_per_host

    @property
    def topology(self) -> Topology:
        return Topology(world_size=self.world_size, local_world_size=self.ranks_per_host)


def _shape_group(kind: str, shape: CommShape) -> str:
    """Label of the world, a host's ranks, or a rank's peers, consistent with :func:`group_label`."""
    t = shape.topology
    ranks = {"world": range(t.world_size), "intra_host": t.host_ranks(0), "cross_host": t.peers}[kind]
    return group_label(list(ranks), t)


class _Terms:
    """Accumulates analytic entries into a CommSummary (calls are 0: not modelled)."""

    def __init__(self, shape: CommShape) -> None:
        self.shape = shape
        self.stats: dict[CommKey, CommStats] = {}

    def add(self, op: str, group: str, phase: str, payload: str, *, cross: float, intra: float) -> None:
        if cross == 0 and intra == 0:
            return
        key = CommKey(op, _shape_group(group, self.shape), phase, payload)
        self.stats[key] = self.stats.get(key, CommStats()) + CommStats(0, cross + intra, cross, intra)

    def lookup(self, group: str, sharding: str, *, features: float, out_bytes: float, n: int, remote: int) -> None:
        """An EBC of ``features`` features sharded ``sharding`` over a group of ``n`` ranks.

        ``out_bytes`` is what one sample's lookup returns (``F*D*s``); ``remote`` of the n-1 other
        ranks are on another host. Each entry below is the bytes one sample costs *per other rank*
        of the group, averaged over which rank the sample lives on.
        """
        sh = self.shape
        ids = features * (sh.length_bytes + sh.pooling_factor * sh.index_bytes)
        local = n - 1 - remote

        def add(op: str, phases: tuple[str, ...], payload: str, per_rank: float) -> None:
            for phase in phases:
                self.add(op, group, phase, payload, cross=per_rank * remote, intra=per_rank * local)

        a2a = "all_to_all_single"
        if sharding == "table_wise":  # a table on one rank: ids there, the pooled vector back
            add(a2a, ("forward",), "int", ids / n)
            add(a2a, PHASES, "float", out_bytes / n)
        elif sharding == "row_wise":  # lengths to every rank, each id to its row's owner
            add(a2a, ("forward",), "int", features * (sh.length_bytes + sh.pooling_factor * sh.index_bytes / n))
            add("reduce_scatter", ("forward",), "float", out_bytes)  # partial sums from every rank
            add("all_gather", ("backward",), "float", out_bytes)
        else:  # column_wise, n column shards: every shard owner needs all ids, returns D/n columns
            add(a2a, ("forward",), "int", ids)
            add(a2a, PHASES, "float", out_bytes / n)

    def allreduce(self, group: str, params: float) -> None:
        """DDP's ring all-reduce of ``params`` elements each step: ``2S/n`` to every other member.

        world: one DDP over all W ranks. intra_host: one DDP per host over its L ranks, each of
        its own tower parameters; ``params`` is the sum over hosts.
        """
        sh = self.shape
        W, L = sh.world_size, sh.ranks_per_host
        S = params * sh.element_bytes / (W * sh.batch_size)  # per global sample
        if group == "world":  # W ranks, each 2S/W to W-L remote and L-1 local ranks
            self.add("ddp_allreduce", group, "backward", "float", cross=2 * S * (W - L), intra=2 * S * (L - 1))
        else:  # per host: L ranks, each 2S_h/L to L-1 local ranks
            self.add("ddp_allreduce", group, "backward", "float", cross=0.0, intra=2 * S * (L - 1))

    def summary(self) -> CommSummary:
        return CommSummary(dict(self.stats))


def analytic_flat(shape: CommShape, sharding: str, *, dense_params: int = 0) -> CommSummary:
    """Bytes per global sample of a flat torchrec model: one EBC sharded ``sharding`` over the world.

    table_wise: each table lives on one rank; the sample's rank sends it the lengths and ids
    (all-to-all), and it returns the pooled vector (all-to-all); backward returns the gradient the
    same way. Per sample and feature that is ``l + p*i`` and ``D*s`` bytes to one rank, off-rank
    with probability (W-1)/W and on another host with probability (H-1)/H, whatever the placement.

    row_wise: each table is split by rows over all W ranks; the sample's rank sends the lengths of
    every feature to every rank and each id to the one rank owning its row (uniform ids: (W-1)/W
    off-rank); every rank returns a partial pooled sum for every sample (reduce-scatter: ``D*s`` to
    W-1 ranks), and the gradient comes back by all-gather (the same).

    Args:
        shape: the sizes.
        sharding: "table_wise" or "row_wise".
        dense_params: elements DMP's world DDP all-reduces each step (dense and over arch).

    Example:
        >>> sh = CommShape(num_features=2, embedding_dim=4, num_hosts=2, ranks_per_host=2, batch_size=8)
        >>> tw = analytic_flat(sh, "table_wise")
        >>> tw.total(phase="forward", payload="float").cross_host  # 2 * 4 * 4 B * (2-1)/2
        16.0
        >>> analytic_flat(sh, "row_wise").total(phase="forward", payload="float").cross_host  # x (W-L)
        64.0
    """
    if sharding not in FLAT_SHARDINGS:
        raise ValueError(f"sharding={sharding!r} is not one of {FLAT_SHARDINGS}")
    sh = shape
    W, L = sh.world_size, sh.ranks_per_host
    terms = _Terms(sh)
    terms.lookup("world", sharding, features=sh.num_features,
                 out_bytes=sh.num_features * sh.embedding_dim * sh.element_bytes, n=W, remote=W - L)  # fmt: skip
    if dense_params:
        terms.allreduce("world", dense_params)
    return terms.summary()


def analytic_dmt(
    shape: CommShape,
    tower_features: Sequence[int],
    tower_output_dims: Sequence[int],
    *,
    intra_sharding: str = "row_wise",
    dense_params: int = 0,
    tower_params: int = 0,
) -> CommSummary:
    """Bytes per global sample of a DMT model (SPTT): towers on hosts, tables sharded within a host.

    Per sample on rank (h, r) and tower t on host g (F_t features, output O_t elements per sample):

    1. cross-host input all-to-all over the peers: the sample's lengths and ids of tower t go to
       peer (g, r): ``F_t*(l + p*i)``, remote when g != h, i.e. with probability (H-1)/H;
    2. intra-host lookup on host g, ``intra_sharding`` over its L ranks, all same-host: the
       formulas of :func:`analytic_flat` with W -> L (row_wise is torchrec's TWRW; column_wise
       assumes L column shards per table);
    3. the tower module: no communication forward; its DDP all-reduce stays on the host;
    4. cross-host output all-to-all over the peers: ``O_t*s`` back to (h, r), remote with
       probability (H-1)/H; backward sends the output gradient the same way.

    Steps 1 and 4 are a table-wise lookup over the H peers whose "pooled vector" is the tower
    output. Totals do not depend on which host runs which tower. With identity towers
    (``O_t = F_t*D``) the cross-host bytes equal flat table-wise; towers of compression c divide
    the float part by c.

    Args:
        shape: the sizes; ``num_features`` must equal ``sum(tower_features)``.
        tower_features: F_t per tower.
        tower_output_dims: O_t per tower, elements per sample.
        intra_sharding: "row_wise", "table_wise" or "column_wise" within a host.
        dense_params: elements the world DDP all-reduces (dense arch, global interaction, over arch).
        tower_params: tower-module parameters summed over all towers (each host all-reduces its own).

    Example:
        >>> sh = CommShape(num_features=4, embedding_dim=4, num_hosts=2, ranks_per_host=2, batch_size=8)
        >>> flat = analytic_flat(sh, "table_wise").total(phase="forward", payload="float").cross_host
        >>> dmt = analytic_dmt(sh, [2, 2], [2, 2]).total(phase="forward", payload="float").cross_host
        >>> flat, dmt  # c = 4: each 2-feature tower outputs 2 floats instead of 8
        (32.0, 8.0)
    """
    if intra_sharding not in INTRA_SHARDINGS:
        raise ValueError(f"intra_sharding={intra_sharding!r} is not one of {INTRA_SHARDINGS}")
    if len(tower_features) != len(tower_output_dims):
        raise ValueError(f"{len(tower_features)} tower feature counts but {len(tower_output_dims)} output dims")
    sh = shape
    F, O = sum(tower_features), sum(tower_output_dims)
    if F != sh.num_features:
        raise ValueError(f"towers hold {F} features but num_features={sh.num_features}")
    H, L = sh.num_hosts, sh.ranks_per_host
    terms = _Terms(sh)
    terms.lookup("cross_host", "table_wise", features=F, out_bytes=O * sh.element_bytes, n=H, remote=H - 1)
    terms.lookup("intra_host", intra_sharding, features=F, out_bytes=F * sh.embedding_dim * sh.element_bytes,
                 n=L, remote=0)  # fmt: skip
    if tower_params:
        terms.allreduce("intra_host", tower_params)
    if dense_params:
        terms.allreduce("world", dense_params)
    return terms.summary()
