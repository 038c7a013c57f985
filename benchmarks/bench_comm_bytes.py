"""Measured vs analytic communication bytes per sample: flat table-wise, flat row-wise (and DMT).

Spawns ``hosts x ranks_per_host`` gloo processes on this machine (emulated hosts: ranks are
contiguous per host), builds a Criteo-shaped torchrec DLRM (13 dense + F sparse features, one
table each), shards it, runs one warm-up step and then counts one training step (forward,
backward, optimizer step) with :class:`dmt.perf.comm_counter.CommCounter`. Rank 0 prints a markdown table of
bytes per sample of the global batch, summed over all ranks, by collective, next to
:func:`dmt.perf.comm_counter.analytic_flat` / :func:`dmt.perf.comm_counter.analytic_dmt`.

Usage, from the repository root:
    python -m benchmarks.bench_comm_bytes                      # 26 x dim 64, p=1, B=256, 2 x 2
    python -m benchmarks.bench_comm_bytes --dim 16 --batch-size 64 --json out.json

DMT rows (identity towers and linear towers of c=4, one tower per host, TWRW inside a host) need
``dmt.distributed.tower_sharding`` and ``dmt.transform``; without them they are skipped with the reason.
:func:`build_dmt_model` is the one place that builds them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

# Cases: name -> how the flat model is sharded, or a DMT tower config.
FLAT_CASES = ("table_wise", "row_wise")
DMT_CASES = (("identity", 1.0), ("linear", 4.0))  # (tower kind, compression c)


@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    hosts: int = 2
    ranks_per_host: int = 2
    num_features: int = 26
    dim: int = 64
    pooling: int = 1  # ids per (sample, feature), exactly
    batch_size: int = 256  # per rank
    num_embeddings: int = 2000  # rows per table: bytes do not depend on it, memory does
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("hosts", "ranks_per_host", "num_features", "dim", "batch_size", "num_embeddings"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.pooling < 0:
            raise ValueError(f"pooling={self.pooling} must be >= 0")

    @property
    def world_size(self) -> int:
        return self.hosts * self.ranks_per_host


def parse_args(argv: list[str] | None = None) -> tuple[BenchConfig, str | None]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    d = BenchConfig()
    p.add_argument("--hosts", type=int, default=d.hosts)
    p.add_argument("--ranks-per-host", type=int, default=d.ranks_per_host)
    p.add_argument("--features", type=int, default=d.num_features)
    p.add_argument("--dim", type=int, default=d.dim)
    p.add_argument("--pooling", type=int, default=d.pooling)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="per rank")
    p.add_argument("--num-embeddings", type=int, default=d.num_embeddings)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--json", default=None, help="also write the per-sample numbers here")
    a = p.parse_args(argv)
    cfg = BenchConfig(
        hosts=a.hosts,
        ranks_per_host=a.ranks_per_host,
        num_features=a.features,
        dim=a.dim,
        pooling=a.pooling,
        batch_size=a.batch_size,
        num_embeddings=a.num_embeddings,
        seed=a.seed,
    )
    return cfg, a.json


# ---------------------------------------------------------------------------------------------
# Worker side (one process per rank)


def model_config(cfg: BenchConfig):
    from dmt.model.flat import ModelConfig  # workers import torchrec, the parent need not

    return ModelConfig.preset(
        "criteo",
        embedding_dim=cfg.dim,
        num_embeddings=(cfg.num_embeddings,) * cfg.num_features,
        sparse_features=tuple(f"cat_{i}" for i in range(cfg.num_features)),
        dense_arch=(512, 256, cfg.dim),
    )


def make_batch(cfg: BenchConfig, rank: int, step: int):
    """This rank's batch: exactly ``pooling`` uniform ids per (sample, feature)."""
    from torchrec.datasets.utils import Batch
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + rank * 1009 + step)
    B, F, p = cfg.batch_size, cfg.num_features, cfg.pooling
    return Batch(
        dense_features=torch.rand(B, 13, generator=g),
        sparse_features=KeyedJaggedTensor(
            keys=[f"cat_{i}" for i in range(F)],
            values=torch.randint(cfg.num_embeddings, (F * B * p,), generator=g),
            lengths=torch.full((F * B,), p, dtype=torch.int32),
        ),
        labels=torch.randint(2, (B,), generator=g).float(),
    )


def build_flat_model(cfg: BenchConfig, env, sharding: str):
    """The flat DLRM sharded ``sharding`` by DMP (dmt.distributed.flat.shard_flat), plus its optimizer."""
    from dmt.distributed.flat import shard_flat
    from dmt.model.flat import build_flat_model as build
    from dmt.train.optim import OptimConfig, apply_sparse_optimizer, build_optimizer

    mcfg = model_config(cfg)
    model = build(mcfg, device="meta")
    optim = OptimConfig(sparse="sgd", dense="sgd")
    apply_sparse_optimizer(model, optim)
    model = shard_flat(model, mcfg, env, sharding)
    return model, build_optimizer(model, optim)


@dataclass(frozen=True)
class DmtBuild:
    """What a DMT case needs: the model (called as ``loss, _ = model(batch)``), its optimizer, and
    the shapes the analytic formula takes."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    tower_features: tuple[int, ...]  # F_t per tower
    tower_output_dims: tuple[int, ...]  # O_t per tower, floats per sample
    tower_params: int  # tower-module parameters summed over all towers (intra-host DDP)
    dense_params: int  # everything else that is not a table (world DDP)
    intra_sharding: str = "row_wise"  # how a host shards its towers' tables: see analytic_dmt


def build_dmt_model(cfg: BenchConfig, env, tower_kind: str, compression: float) -> DmtBuild:
    """HOOK for the DMT rows: the flat model transformed into one tower per host and sharded.

    Features are dealt round-robin into ``hosts`` towers (tower h on host h); tables are sharded
    table-row-wise inside each host (torchrec's TWRW, the analytic "row_wise"). Raises
    NotImplementedError (the rows are skipped) while ``dmt.distributed.tower_sharding`` / ``dmt.transform`` are absent.
    """
    try:
        from dmt.distributed.sharding_plan import find_tower_collection
        from dmt.distributed.tower_sharding import shard
        from dmt.model.dmt import tower_output_dims
        from dmt.model.transform import transform
    except ImportError as e:
        raise NotImplementedError(f"dmt.sharding / dmt.transform not available ({e})") from None
    from dmt.model.flat import build_flat_model as build
    from dmt.plan import TowerPlan
    from dmt.train.optim import OptimConfig, apply_sparse_optimizer, build_optimizer
    from towers import TowerModuleConfig

    mcfg = model_config(cfg)
    features = mcfg.sparse_features
    plan = TowerPlan.from_groups([features[h :: cfg.hosts] for h in range(cfg.hosts)], num_hosts=cfg.hosts)
    model = transform(
        build(mcfg, device="meta"), plan, tower_module=TowerModuleConfig(kind=tower_kind, compression=compression)
    )
    fqn, collection = find_tower_collection(model)
    tower_features = tuple(len(t.features) for t in plan.towers)
    tower_outputs = tower_output_dims(collection)
    tower_params = sum(p.numel() for t in collection.towers for p in t.interaction.parameters())
    dense_params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith(f"{fqn}."))
    optim = OptimConfig(sparse="sgd", dense="sgd")
    apply_sparse_optimizer(model, optim)
    sharded = shard(model, plan, env, sharding="table_row_wise")
    return DmtBuild(
        model=sharded,
        optimizer=build_optimizer(sharded, optim),
        tower_features=tower_features,
        tower_output_dims=tower_outputs,
        tower_params=tower_params,
        dense_params=dense_params,
        intra_sharding="row_wise",
    )


def _count_step(model, optimizer, cfg: BenchConfig, topology, rank: int) -> dict:
    """One warm-up step, then one counted step; returns the all-rank per-sample summary (rank 0)."""
    from dmt.perf.comm_counter import CommCounter, reduce_summary, register_ddp_counting_hooks

    register_ddp_counting_hooks(model)

    def step(i: int) -> None:
        optimizer.zero_grad()
        loss, _ = model(make_batch(cfg, rank, i))
        loss.backward()
        optimizer.step()

    step(0)  # lazy set-up (DDP bucket rebuild, torchrec's first-call exchanges) is not a step's cost
    with CommCounter(topology) as comm:
        step(1)
    total = reduce_summary(comm.summary()).per_sample(cfg.batch_size * cfg.world_size)
    return {"stats": [(asdict(k), asdict(s)) for k, s in total.stats.items()]}


def _dense_params(cfg: BenchConfig) -> int:
    from dmt.model.flat import build_flat_model as build

    model = build(model_config(cfg), device="meta")
    return sum(p.numel() for n, p in model.named_parameters() if "embedding_bag_collection" not in n)


def _worker(rank: int, cfg: BenchConfig, port: int, out_dir: str) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank % cfg.ranks_per_host),
        WORLD_SIZE=str(cfg.world_size),
        LOCAL_WORLD_SIZE=str(cfg.ranks_per_host),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    from dmt.quiet import quiet_third_party

    quiet_third_party()
    import torch.distributed as dist

    from dmt.distributed.env import init_distributed

    env = init_distributed("gloo")
    results: dict = {"flat": {}, "dmt": {}, "skipped": {}}
    for sharding in FLAT_CASES:
        torch.manual_seed(cfg.seed)
        model, opt = build_flat_model(cfg, env, sharding)
        results["flat"][sharding] = _count_step(model, opt, cfg, env.topology, rank)
    for kind, c in DMT_CASES:
        name = f"dmt_{kind}_c{c:g}"
        try:
            built = build_dmt_model(cfg, env, kind, c)
        except NotImplementedError as e:
            results["skipped"][name] = str(e)
            continue
        results["dmt"][name] = {
            **_count_step(built.model, built.optimizer, cfg, env.topology, rank),
            "tower_features": list(built.tower_features),
            "tower_outputs": list(built.tower_output_dims),
            "tower_params": int(built.tower_params),
            "dense_params": int(built.dense_params),
            "intra_sharding": built.intra_sharding,
        }
    if rank == 0:
        results["dense_params"] = _dense_params(cfg)
        Path(out_dir, "results.json").write_text(json.dumps(results))
    dist.barrier()
    dist.destroy_process_group()


def _worker_main(rank: int, cfg: BenchConfig, port: int, out_dir: str) -> None:
    try:
        _worker(rank, cfg, port, out_dir)
    except BaseException:
        Path(out_dir, f"error_{rank}.txt").write_text(traceback.format_exc())
        raise


def run_spawned(cfg: BenchConfig) -> dict:
    """Run the workers and return rank 0's results."""
    import torch.multiprocessing as mp

    from dmt.distributed.launch import free_port

    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            mp.start_processes(
                _worker_main, args=(cfg, free_port(), tmp), nprocs=cfg.world_size, start_method="spawn", join=True
            )
        except Exception:
            errors = sorted(Path(tmp).glob("error_*.txt"))
            if errors:
                sys.stderr.write(errors[0].read_text())
            raise
        return json.loads(Path(tmp, "results.json").read_text())


# ---------------------------------------------------------------------------------------------
# Parent side: the table


def _summary(entry: dict):
    from dmt.perf.comm_counter import CommKey, CommStats, CommSummary

    return CommSummary({CommKey(**k): CommStats(**s) for k, s in entry["stats"]})


def comparison_table(name: str, measured, analytic) -> str:
    """Markdown rows per (collective, group, payload): fwd/bwd cross and intra, measured | analytic."""
    keys = sorted({(k.op, k.group, k.payload) for k in (*measured.stats, *analytic.stats)})
    head = (
        "| case | collective | group | payload | fwd cross | fwd cross (analytic) | fwd intra | "
        "fwd intra (analytic) | bwd cross | bwd cross (analytic) | bwd intra | bwd intra (analytic) |"
    )
    lines = [head, "|---|---|---|---|" + "---:|" * 8]

    def cells(op: str, group: str, payload: str) -> list[str]:
        out = []
        for phase in ("forward", "backward"):
            m = measured.total(op=op, group=group, payload=payload, phase=phase)
            a = analytic.total(op=op, group=group, payload=payload, phase=phase)
            out += [f"{m.cross_host:,.1f}", f"{a.cross_host:,.1f}", f"{m.intra_host:,.1f}", f"{a.intra_host:,.1f}"]
        return out

    for op, group, payload in keys:
        lines.append(f"| {name} | {op} | {group} | {payload} | " + " | ".join(cells(op, group, payload)) + " |")
    tot = []
    for phase in ("forward", "backward"):
        m, a = measured.total(phase=phase), analytic.total(phase=phase)
        tot += [f"**{m.cross_host:,.1f}**", f"**{a.cross_host:,.1f}**", f"{m.intra_host:,.1f}", f"{a.intra_host:,.1f}"]
    lines.append(f"| {name} | **total** | | | " + " | ".join(tot) + " |")
    return "\n".join(lines)


def report(cfg: BenchConfig, results: dict) -> tuple[str, dict]:
    from dmt.perf.comm_model import CommShape, analytic_dmt, analytic_flat

    shape = CommShape(
        num_features=cfg.num_features,
        embedding_dim=cfg.dim,
        num_hosts=cfg.hosts,
        ranks_per_host=cfg.ranks_per_host,
        batch_size=cfg.batch_size,
        pooling_factor=cfg.pooling,
    )
    dense = results["dense_params"]
    cases = []  # (name, measured CommSummary, analytic CommSummary)
    for sharding, entry in results["flat"].items():
        cases.append((f"flat {sharding}", _summary(entry), analytic_flat(shape, sharding, dense_params=dense)))
    for name, entry in results["dmt"].items():
        analytic = analytic_dmt(
            shape,
            entry["tower_features"],
            entry["tower_outputs"],
            intra_sharding=entry["intra_sharding"],
            dense_params=entry["dense_params"],
            tower_params=entry["tower_params"],
        )
        cases.append((name, _summary(entry), analytic))
    text = [
        f"Bytes per sample of the global batch ({cfg.batch_size} x {cfg.world_size} ranks), summed over ranks; "
        f"{cfg.hosts} hosts x {cfg.ranks_per_host} ranks, {cfg.num_features} tables x dim {cfg.dim}, "
        f"pooling {cfg.pooling}, fp32, dense params {dense:,}.",
        "",
        "| case | fwd cross | bwd cross | **cross total** | fwd intra | bwd intra | intra total |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m, _ in cases:
        f, b = m.total(phase="forward"), m.total(phase="backward")
        cross = f.cross_host + b.cross_host
        text.append(
            f"| {name} | {f.cross_host:,.1f} | {b.cross_host:,.1f} | **{cross:,.1f}** "
            f"| {f.intra_host:,.1f} | {b.intra_host:,.1f} | {f.intra_host + b.intra_host:,.1f} |"
        )
    for name, m, a in cases:
        text += ["", comparison_table(name, m, a)]
    for name, why in results["skipped"].items():
        text += ["", f"{name}: skipped: {why}"]
    data = {
        name: {
            "measured": [(asdict(k), asdict(s)) for k, s in m.stats.items()],
            "analytic": [(asdict(k), asdict(s)) for k, s in a.stats.items()],
        }
        for name, m, a in cases
    }
    return "\n".join(text), data


def main(argv: list[str] | None = None) -> int:
    cfg, json_path = parse_args(argv)
    results = run_spawned(cfg)
    text, data = report(cfg, results)
    print(text)
    if json_path:
        Path(json_path).write_text(json.dumps({"config": asdict(cfg), "cases": data}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
