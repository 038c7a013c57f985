"""Measured vs analytic communication bytes per sample: flat table-wise, flat row-wise (and DMT).

Spawns ``hosts x ranks_per_host`` gloo processes on this machine (emulated hosts: ranks are
contiguous per host), builds a Criteo-shaped torchrec DLRM (13 dense + F sparse features, one
table each), shards it, runs one warm-up step and then counts one training step (forward,
backward, optimizer step) with :class:`dmt.perf.comm_counter.CommCounter`. Rank 0 prints a markdown table of
bytes per sample of the global batch, summed over all ranks, by collective, next to
:func:`dmt.perf.comm_model.analytic_flat` / :func:`dmt.perf.comm_model.analytic_dmt`.

Usage, from the repository root:
    python -m benchmarks.bench_comm_bytes                      # 26 x dim 64, p=1, B=256, 2 x 2
    python -m benchmarks.bench_comm_bytes --dim 16 --batch-size 64 --json out.json

DMT rows: identity towers and linear towers of c=4, one tower per host, TWRW inside a host
(:func:`tower_spec`). Every model is built by ``dmt.train.build.build_model``, the recipe
``dmt train`` and ``dmt bench`` use; the analytic formulas take their sizes from
``dmt.perf.bench_sizes.model_sizes``.
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
    from dmt.data.random_batches import random_batch

    features = model_config(cfg).sparse_features
    return random_batch(
        cfg.batch_size, cfg.num_embeddings, features=features, pooling=cfg.pooling, seed=cfg.seed, rank=rank, step=step
    )


def tower_spec(cfg: BenchConfig, tower_kind: str, compression: float):
    """The DMT rows' towers: features dealt round-robin into one tower per host (tower h on host h),
    tables sharded table-row-wise inside each host (TWRW)."""
    from dmt.plan import TowerPlan
    from dmt.train.build import TowerSpec
    from towers import TowerModuleConfig

    features = model_config(cfg).sparse_features
    plan = TowerPlan.from_groups([features[h :: cfg.hosts] for h in range(cfg.hosts)], num_hosts=cfg.hosts)
    module = TowerModuleConfig(kind=tower_kind, compression=compression)
    return TowerSpec(plan=plan, module=module, sharding="table_row_wise")


def _optim():
    """Plain SGD everywhere: no optimizer state to move, and bytes do not depend on it."""
    from dmt.train.optim import OptimConfig  # workers import torchrec, the parent need not

    return OptimConfig(sparse="sgd", dense="sgd")


def build_sharded(cfg: BenchConfig, env, towers=None, flat_sharding: str = "table_wise"):
    """The flat DLRM sharded ``flat_sharding`` by DMP (``towers`` None) or its DMT transform over
    ``towers``, with plain SGD (``dmt.train.build``; tables initialised by torchrec, shard by shard)."""
    from dmt.train.build import build_model

    return build_model(
        model_config(cfg),
        _optim(),
        seed=cfg.seed,
        towers=towers,
        env=env,
        flat_sharding=flat_sharding,
        table_init="local",
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
    from dmt.perf.bench_sizes import model_sizes

    env = init_distributed("gloo")
    results: dict = {"flat": {}, "dmt": {}}
    for sharding in FLAT_CASES:
        model, opt = build_sharded(cfg, env, flat_sharding=sharding)
        results["flat"][sharding] = _count_step(model, opt, cfg, env.topology, rank)
    for kind, c in DMT_CASES:
        towers = tower_spec(cfg, kind, c)
        model, opt = build_sharded(cfg, env, towers)
        sizes = model_sizes(model_config(cfg), _optim(), towers, env.topology)
        results["dmt"][f"dmt_{kind}_c{c:g}"] = {
            **_count_step(model, opt, cfg, env.topology, rank),
            "tower_features": list(sizes.tower_features),
            "tower_outputs": list(sizes.tower_outputs),
            "tower_params": sizes.tower_params,
            "dense_params": sizes.dense_params,
            "intra_sharding": sizes.intra_sharding,
        }
    if rank == 0:
        results["dense_params"] = model_sizes(model_config(cfg), _optim()).dense_params
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
