"""`dmt bench` library: time flat and DMT training steps side by side on synthetic Criteo batches.

Every rank of one job builds each variant in turn on the same Criteo-shaped model (26 tables) and
trains it on the same pre-generated random batches:

* ``flat``: torchrec's DLRM, its tables sharded over the whole job by DMP (``dmt.distributed.flat.shard_flat``);
* ``dmt``: the same DLRM transformed into towers (``dmt.transform``) and sharded tower per host
  (``dmt.shard``);
* ``stock``: the same DMT model sharded by torchrec's own ``EmbeddingTowerCollectionSharder``
  (none of ``dmt.distributed.tower_sharding``'s fixes; outputs come back in host order, which timing ignores);
* ``flat+comm`` / ``dmt+comm``: ``flat`` / ``dmt`` with ``comm`` (a :class:`dmt.distributed.qcomm.CommCompression`)
  compressing the embedding exchange;
* ``flat:<layout>`` / ``dmt:<layout>``: the baseline a user would pick (``flat:table_wise``,
  ``flat:table_row_wise``, ``flat:row_wise``, ``flat:planner``, ``flat:2d``) or a host's tower
  sharding (``dmt:table_wise``, ...), see :mod:`dmt.perf.bench_variants`; the report names the
  best flat variant per precision and compares every DMT variant with it
  (:mod:`dmt.perf.bench_report`).

A step is what training does: forward, backward (the fused sparse optimizer updates the tables
inside it), dense optimizer step; optionally through torchrec's ``TrainPipelineSparseDist``.
Step time is the median over the timed steps of the slowest rank's time (CUDA events on GPU,
``perf_counter`` between barriers on CPU). Bytes come from :class:`dmt.perf.comm_counter.CommCounter` over a
few extra steps after the timed ones, so counting never slows the timed steps.

Shapes: B = batch per rank, W = ranks, F = 26 features, D = embedding dim.
"""

from __future__ import annotations

import gc
import itertools
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.distributed as dist

from dmt.atomic import atomic_write_text
from dmt.choices import TowerSharding
from dmt.data.random_batches import random_batch
from dmt.distributed.qcomm import CommCompression
from dmt.errors import DmtError
from dmt.perf.bench_report import PHASES, format_bench_table, summary
from dmt.perf.bench_sizes import ModelSizes, model_sizes
from dmt.perf.bench_variants import Variant, parse_variant, parse_variants
from dmt.perf.profiling import PROFILE_STEPS, profiled
from dmt.plan import TowerPlan, contiguous_sizes
from dmt.train.optim import OptimConfig

__all__ = ["BenchConfig", "contiguous_plan", "format_bench_table", "run_bench"]

NUM_TABLES = 26  # Criteo's categorical features
FEATURES = tuple(f"cat_{i}" for i in range(NUM_TABLES))  # torchrec's DEFAULT_CAT_NAMES


@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    """What one ``dmt bench`` run measures; identical on every rank."""

    plan: TowerPlan  # the DMT towers and their hosts
    variants: tuple[str, ...] = ("flat", "dmt")
    model: str = "dlrm"  # or "dlrm_dcn"
    num_embeddings: int = 100_000  # rows per table
    embedding_dim: int = 64
    batch_size: int = 1024  # per rank
    pooling: int = 1  # ids per (sample, feature)
    warmup: int = 5
    steps: int = 20  # timed steps
    count_steps: int = 2  # extra steps whose collectives are counted
    tower_module: str = "linear"
    compression: float = 4.0
    tower_sharding: str = "auto"
    flat_sharding: str = "table_wise"
    pipeline: bool = False  # TrainPipelineSparseDist, steps timed back to back on GPU (as dmt train runs)
    optim: OptimConfig = field(default_factory=OptimConfig)
    seed: int = 0
    comm: CommCompression | None = None  # for the "+comm" variants
    profile: str | None = None  # directory: torch.profiler tables + traces of a few extra steps
    tf32: bool = False  # CUDA matmuls in TF32 (tensor cores) instead of full fp32
    link: str = "default"  # how the hosts are connected, for the report only
    link_kind: str = "default"  # the same as a name: nvlink, hierarchical, sockets, shaped (calibration reads it)
    sync_every_2d: int = 1  # flat:2d variants: DMPCollection.sync after every this many steps
    out: str | None = None  # JSON path
    progress: bool = True

    def __post_init__(self) -> None:
        parse_variants(self.variants)
        for name in ("num_embeddings", "embedding_dim", "batch_size", "steps", "count_steps", "sync_every_2d"):
            if getattr(self, name) < 1:
                raise DmtError(f"{name}={getattr(self, name)} must be >= 1")
        if self.warmup < 0 or self.pooling < 1:
            raise DmtError(f"warmup={self.warmup} must be >= 0 and pooling={self.pooling} >= 1")
        self.plan.validate_features(FEATURES)
        if any(v.endswith("+comm") for v in self.variants) and self.comm is None:
            raise DmtError("the +comm variants need --comm-compression, e.g. --comm-compression fp16")

    def to_dict(self) -> dict:
        return {**asdict(self), "plan": self.plan.to_dict(), "comm": self.comm.to_dict() if self.comm else None}


def contiguous_plan(num_towers: int, num_hosts: int) -> TowerPlan:
    """``num_towers`` towers of contiguous features (sizes differ by at most one), tower i on host i % H.

    Example:
        >>> [len(t.features) for t in contiguous_plan(4, 2).towers], [t.host for t in contiguous_plan(4, 2).towers]
        ([7, 7, 6, 6], [0, 1, 0, 1])
    """
    if not 1 <= num_towers <= NUM_TABLES:
        raise DmtError(f"--towers={num_towers} must be between 1 and {NUM_TABLES} (one feature per tower at most)")
    bounds = itertools.accumulate(contiguous_sizes(NUM_TABLES, num_towers), initial=0)
    groups = [FEATURES[a:b] for a, b in itertools.pairwise(bounds)]
    return TowerPlan.from_groups(groups, num_hosts=num_hosts, method="contiguous")


# ---------------------------------------------------------------------------------------- model
def model_config(cfg: BenchConfig):
    """The Criteo-shaped flat model: 26 tables of ``num_embeddings`` x D, dense arch 512-256-D."""
    from dmt.model.flat import ModelConfig  # torchrec only in the ranks

    return ModelConfig.preset(
        "criteo",
        arch=cfg.model,
        embedding_dim=cfg.embedding_dim,
        num_embeddings=(cfg.num_embeddings,) * NUM_TABLES,
        dense_arch=(512, 256, cfg.embedding_dim),
    )


def tower_spec(cfg: BenchConfig, layout: str | None = None):
    """The :class:`dmt.train.build.TowerSpec` of the DMT variants (``layout``: their tower sharding)."""
    from dmt.train.build import TowerSpec
    from towers import TowerModuleConfig

    try:
        module = TowerModuleConfig(kind=cfg.tower_module, compression=cfg.compression)
    except ValueError as e:
        raise DmtError(f"bad tower module: {e}") from None
    return TowerSpec(plan=cfg.plan, module=module, sharding=layout or cfg.tower_sharding)


def _layout(v: Variant, cfg: BenchConfig) -> str:
    return v.resolved_layout(flat_sharding=cfg.flat_sharding, tower_sharding=cfg.tower_sharding)


def build_variant(name: str, cfg: BenchConfig, env) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """The ``name`` variant, sharded, and its optimizer (``dmt.train.build``); collective (every rank).

    Every variant starts from the same seed. Tables stay on the meta device until torchrec
    initialises each rank's own shards: no rank ever holds a full copy of the (large) tables.
    """
    from dmt.train.build import build_model

    v = parse_variant(name)
    return build_model(
        model_config(cfg),
        cfg.optim,
        seed=cfg.seed,
        towers=None if v.is_flat else tower_spec(cfg, _layout(v, cfg)),
        env=env,
        flat_sharding=_layout(v, cfg) if v.is_flat else cfg.flat_sharding,
        comm=cfg.comm if v.comm else None,
        table_init="local",
        tower_sharder="stock" if v.base == "stock" else "dmt",
    )


def variant_sizes(name: str, cfg: BenchConfig, env) -> ModelSizes:
    """The sizes of the ``name`` variant that :func:`analytic` needs (from a meta model, no comms)."""
    v = parse_variant(name)
    towers = None if v.is_flat else tower_spec(cfg, _layout(v, cfg))
    return model_sizes(model_config(cfg), cfg.optim, towers, env.topology, env.device.type)


def make_batches(cfg: BenchConfig, rank: int, count: int, device: torch.device) -> list:
    """``count`` random Criteo-shaped batches of this rank, on ``device``; identical for every variant."""
    return [
        random_batch(
            cfg.batch_size, cfg.num_embeddings, features=FEATURES, pooling=cfg.pooling, seed=cfg.seed, rank=rank, step=i
        ).to(device)
        for i in range(count)
    ]


# --------------------------------------------------------------------------------------- timing
class _Clock:
    """Step and phase timestamps: CUDA events on GPU, perf_counter on CPU (milliseconds)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._marks: list[list] = []

    def start(self, barrier: bool = True) -> None:
        if barrier:
            dist.barrier()  # every rank starts the step together: a step is as slow as its slowest rank
        self._marks.append([self._now()])

    def mark(self) -> None:
        self._marks[-1].append(self._now())

    def _now(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def durations_ms(self) -> list[list[float]]:
        """Per step, the time between consecutive marks (the first is from start)."""
        if self.cuda:
            torch.cuda.synchronize()
            return [[a.elapsed_time(b) for a, b in itertools.pairwise(m)] for m in self._marks]
        return [[(b - a) * 1e3 for a, b in itertools.pairwise(m)] for m in self._marks]


def _plain_step(model, optimizer, clock: _Clock | None, after: Callable[[], None] | None) -> Callable[[object], None]:
    """forward, backward, optimizer step (then ``after``, e.g. a 2D model's replica sync), with a
    clock mark after each phase."""

    def step(batch) -> None:
        optimizer.zero_grad()
        loss, _ = model(batch)
        _mark(clock)
        loss.backward()
        _mark(clock)
        optimizer.step()
        if after is not None:
            after()
        _mark(clock)

    return step


def _mark(clock: _Clock | None) -> None:
    if clock is not None:
        clock.mark()


def _end_step(clock: _Clock) -> None:
    """Close a step on CPU: wait for every rank, then mark (a CUDA step ends at its last event)."""
    if not clock.cuda:
        dist.barrier()
        clock.mark()


def run_variant(name: str, model, optimizer, cfg: BenchConfig, env, batches: list, *, bar) -> dict:
    """Warm up, time ``cfg.steps`` steps, then count ``cfg.count_steps`` steps' collectives."""
    from dmt.distributed.flat import replica_sync
    from dmt.perf.comm_counter import CommCounter, reduce_summary, register_ddp_counting_hooks

    register_ddp_counting_hooks(model)  # as training does: the hook runs in timed steps too
    source = itertools.cycle(batches)
    clock = _Clock(env.device)
    if cfg.pipeline:
        from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

        # The pipeline syncs a 2D model's replicas itself (every batch unless told otherwise).
        pipeline = TrainPipelineSparseDist(
            model, optimizer, env.device, dmp_collection_sync_interval_batches=cfg.sync_every_2d
        )

        def one(timed: bool) -> None:
            pipeline.progress(source)
            if timed:
                _mark(clock if clock.cuda else None)
                _end_step(clock)
    else:
        after = replica_sync(model, cfg.sync_every_2d)  # None but for flat:2d
        timed_step = _plain_step(model, optimizer, clock, after)
        step = _plain_step(model, optimizer, None, after)

        def one(timed: bool) -> None:
            (timed_step if timed else step)(next(source))
            if timed:
                _end_step(clock)

    model.train()
    for _ in range(cfg.warmup):
        one(False)
        bar.update(1)
    # Pipelined CUDA steps run back to back after one barrier, as a training job runs them: a
    # barrier per step would block the host until the GPU is idle, the drain the pipeline avoids.
    back_to_back = cfg.pipeline and clock.cuda
    for i in range(cfg.steps):
        clock.start(barrier=not back_to_back or i == 0)
        one(True)
        bar.update(1)
    durations = _slowest_rank(clock.durations_ms(), env)
    with CommCounter(env.topology) as counter:
        for _ in range(cfg.count_steps):
            one(False)
            bar.update(1)
    comm = reduce_summary(counter.summary()).per_sample(cfg.batch_size * env.topology.world_size * cfg.count_steps)
    if cfg.profile:
        _profile(lambda: one(False), name, cfg.profile, env)
    return _variant_result(durations, comm, cfg, env)


def _profile(step: Callable[[], None], name: str, directory: str, env) -> None:
    """Profile ``PROFILE_STEPS`` more steps (after the timed ones, so timing is unaffected); every
    rank writes ``<name>_rank<r>.txt`` and ``.trace.json`` (:func:`dmt.perf.profiling.profiled`)."""
    with profiled(directory, f"{name.replace('+', '_')}_rank{env.topology.rank}", env.device):
        for _ in range(PROFILE_STEPS):
            step()


def _slowest_rank(durations: list[list[float]], env) -> list[list[float]]:
    """Per step ``[total, phase...]``, each the maximum over the ranks (a step waits for its slowest rank)."""
    t = torch.tensor([[sum(d), *d] for d in durations], dtype=torch.float64)
    if env.device.type == "cuda":
        t = t.to(env.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.cpu().tolist()


def _variant_result(durations: list[list[float]], comm, cfg: BenchConfig, env) -> dict:
    """Step-time statistics, phase medians and bytes per sample of one variant.

    ``durations`` rows are ``[total, intervals...]``: plain steps have forward, backward, optimizer
    (and on CPU the wait at the closing barrier); pipelined steps one span.
    """
    steps_ms = [d[0] for d in durations]
    phases = None
    if not cfg.pipeline:
        phases = {p: statistics.median(d[1 + i] for d in durations) for i, p in enumerate(PHASES)}
    world = env.topology.world_size
    median = statistics.median(steps_ms)
    total = comm.total()
    by_op = {
        "/".join(k): {"cross_host": v.cross_host, "intra_host": v.intra_host}
        for k, v in comm.grouped("op", "group", "phase").items()
    }
    return {
        "step_ms": {
            "median": median,
            "min": min(steps_ms),
            "max": max(steps_ms),
            "p10": _quantile(steps_ms, 0.1),
            "p90": _quantile(steps_ms, 0.9),
            "all": steps_ms,
        },
        "samples_per_s": cfg.batch_size * world / (median / 1e3),
        "phases_ms": phases,
        "cross_host_bytes_per_sample": total.cross_host,
        "intra_host_bytes_per_sample": total.intra_host,
        "comm_bytes_per_sample": by_op,
    }


def _quantile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


# ------------------------------------------------------------------------------------- analytic
def analytic(sizes: ModelSizes, name: str, cfg: BenchConfig, topology, flat_types: dict | None = None) -> dict | None:
    """Cross-/intra-host bytes per sample ``dmt.perf.comm_model`` predicts, or None where it has no model.

    A flat variant is modelled when all its tables use one modelled sharding type (``flat_types``:
    what the planner chose, see :func:`dmt.distributed.flat.sharding_types`); 2D is not (its replica
    sync goes through the process group object, which the byte counter does not see either).
    """
    from dmt.perf.comm_model import MODELLED_FLAT_SHARDINGS, CommShape, analytic_dmt, analytic_flat

    shape = CommShape(
        num_features=NUM_TABLES,
        embedding_dim=cfg.embedding_dim,
        num_hosts=topology.num_hosts,
        ranks_per_host=topology.local_world_size,
        batch_size=cfg.batch_size,
        pooling_factor=cfg.pooling,
    )
    v = parse_variant(name)
    if v.is_flat:
        types = list(flat_types or {})
        if _layout(v, cfg) == "2d" or len(types) != 1 or types[0] not in MODELLED_FLAT_SHARDINGS:
            return None
        total = analytic_flat(shape, types[0], dense_params=sizes.dense_params).total()
        return {"cross_host": total.cross_host, "intra_host": total.intra_host}
    total = analytic_dmt(
        shape,
        sizes.tower_features,
        sizes.tower_outputs,
        intra_sharding=sizes.intra_sharding or TowerSharding.TABLE_ROW_WISE,
        dense_params=sizes.dense_params,
        tower_params=sizes.tower_params,
    ).total()
    # Cross-host bytes do not depend on how a host shards its tables; intra-host bytes do.
    return {"cross_host": total.cross_host, "intra_host": total.intra_host if sizes.intra_sharding else None}


# ------------------------------------------------------------------------------------------ job
def _one_variant(name: str, cfg: BenchConfig, env, batches: list, bar) -> dict:
    """Build, time and count one variant; its result with the analytic bytes and what it ran with."""
    from dmt.distributed.flat import sharding_types

    v = parse_variant(name)
    sizes = variant_sizes(name, cfg, env)
    try:
        model, optimizer = build_variant(name, cfg, env)
    except (DmtError, AssertionError, RuntimeError, ValueError, ImportError) as e:
        # A layout this torchrec or device cannot build (e.g. 2D without CUDA) fails alike on every
        # rank before any training collective: report it and time the other variants.
        _release(env.device)
        return {"error": f"{type(e).__name__}: {e}".splitlines()[0]}
    types = sharding_types(model) if v.is_flat else {}
    result = {
        **run_variant(name, model, optimizer, cfg, env, batches, bar=bar),
        "layout": _layout(v, cfg),
        "sharding_types": types,  # flat: what the planner chose, table counts per torchrec type
        "intra_sharding": sizes.intra_sharding,  # DMT: the tower sharding "auto" resolved to
        "analytic": analytic(sizes, name, cfg, env.topology, types),
        "dense_params": sizes.dense_params,
        "tower_params": sizes.tower_params,
    }
    del model, optimizer
    _release(env.device)
    return result


def run_bench(cfg: BenchConfig) -> dict:
    """Every rank: build and time each variant in turn; rank 0 prints the table and writes the JSON."""
    from tqdm import tqdm

    from dmt.distributed.env import init_distributed

    env = init_distributed()
    topo = env.topology
    cfg.plan.validate_hosts(topo.num_hosts)
    # The dense layers (over-arch, tower modules) run as fp32 SIMT GEMMs otherwise; measured on
    # H200 they were DMT's largest extra cost on a fast link (the tower modules see B*H rows).
    torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
    per_variant = cfg.warmup + cfg.steps + cfg.count_steps
    batches = make_batches(cfg, topo.rank, min(per_variant + 2, 16), env.device)
    bar = tqdm(total=per_variant * len(cfg.variants), unit="step", disable=not (cfg.progress and env.is_main))
    results: dict = {}
    failed: dict = {}
    for name in cfg.variants:
        bar.set_description(name)
        result = _one_variant(name, cfg, env, batches, bar)
        if "error" in result:
            failed[name] = result["error"]
        else:
            results[name] = result
        if env.is_main and cfg.out:  # what is measured so far survives a later hang or kill
            partial = {**_report(cfg, env, results), "failed": failed, "complete": False}
            atomic_write_text(cfg.out, json.dumps(partial, indent=2) + "\n")
    bar.close()
    report = {**_report(cfg, env, results), "failed": failed, "complete": True}
    if env.is_main:
        print(format_bench_table(report), flush=True)
        if cfg.out:
            atomic_write_text(cfg.out, json.dumps(report, indent=2) + "\n")
    dist.barrier()  # leave together (see dmt.train.job)
    dist.destroy_process_group()
    return report


def _release(device: torch.device) -> None:
    """Free a finished variant before the next one is built (tables can be most of the memory)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _report(cfg: BenchConfig, env, results: dict) -> dict:
    topo = env.topology
    device = torch.cuda.get_device_name(env.device) if env.device.type == "cuda" else "cpu"
    return {
        "hosts": topo.num_hosts,
        "ranks_per_host": topo.local_world_size,
        "world_size": topo.world_size,
        "device": device,
        "backend": env.backend,
        "torch": torch.__version__,
        "torchrec": _torchrec_version(),
        "config": cfg.to_dict(),
        "variants": results,
        **summary(results),
    }


def _torchrec_version() -> str:
    from importlib.metadata import version

    return version("torchrec")
