"""Flat DLRM vs DMT on Criteo-format data, every step of the data path spelled out.

    python examples/criteo/flat_vs_dmt.py                      # generated rows, 2 emulated hosts x 2 ranks
    python examples/criteo/flat_vs_dmt.py --data train.txt     # your Criteo file

Steps 1-2 run once in this process (data, tower partition); the script then relaunches itself on
H emulated hosts x L ranks (torchrun, gloo on CPU, NCCL on GPUs), where every rank runs steps 3-7:
build the flat model -> shard and train it -> transform it into towers -> shard and train DMT ->
evaluate -> (rank 0) report. On real hosts, run steps 1-2 once, then start the same script under
your own torchrun with ``--plan``. ``dmt train`` / ``dmt demo`` are the same path behind a CLI.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", help="Criteo TSV (default: generate --rows rows)")
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--plan", help="TowerPlan JSON (default: partition the data into --towers towers)")
    p.add_argument("--towers", type=int, default=4)
    p.add_argument("--tower-compression", type=float, default=4.0, help="tower output compression c (4)")
    p.add_argument("--hosts", type=int, default=2)
    p.add_argument("--ranks-per-host", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128, help="per rank")
    p.add_argument("--out", default="runs/example")
    return p.parse_args()


# ---------------------------------------------------------------- steps 1-2: once, in this process
def prepare(args: argparse.Namespace) -> int:
    from dmt.cli import main as dmt
    from dmt.distributed.launch import launch_local

    os.makedirs(args.out, exist_ok=True)
    if args.data is None:  # 1. data: synthetic Criteo rows with planted feature groups
        args.data = os.path.join(args.out, "rows.tsv")
        if not os.path.exists(args.data) and dmt(["gen-data", "--rows", str(args.rows), "--out", args.data]):
            return 2
    if args.plan is None:  # 2. towers: learn feature interactions, group them, balance the hosts
        args.plan = os.path.join(args.out, "plan.json")
        if dmt(
            [
                "partition",
                "--data",
                args.data,
                "--num-towers",
                str(args.towers),
                "--hosts",
                str(args.hosts),
                "--out",
                args.plan,
            ]
        ):
            return 2
    argv = [a for kv in vars(args).items() for a in (f"--{kv[0].replace('_', '-')}", str(kv[1]))]
    return launch_local(argv, hosts=args.hosts, ranks_per_host=args.ranks_per_host, target=[__file__])


# ----------------------------------------------------------------- steps 3-7: every rank
def rank_batches(rows, batch_size: int, num_embeddings, env, *, shuffle: bool):
    """This rank's ``batch_size`` rows of every global batch of ``rows`` (what `dmt train` feeds a rank)."""
    from dmt.data.batching import iter_batches

    topo = env.topology
    return iter_batches(
        rows,
        batch_size=batch_size,
        num_embeddings=num_embeddings,
        rank=topo.rank,
        world_size=topo.world_size,
        shuffle=shuffle,
        seed=0,
    )


def run_rank(args: argparse.Namespace) -> None:
    from dmt import ModelConfig, OptimConfig, TowerPlan, TowerSpec, build_model
    from dmt.data.criteo import read_criteo
    from dmt.distributed.env import init_distributed
    from dmt.quiet import quiet_third_party
    from dmt.train.job import split_train_eval
    from dmt.train.loop import LoopConfig, train
    from dmt.train.report import write_report
    from towers import TowerModuleConfig

    quiet_third_party()
    env = init_distributed()
    world = env.topology.world_size
    model_cfg, optim_cfg = ModelConfig.preset("small"), OptimConfig.for_preset("small")
    train_rows, eval_rows = split_train_eval(read_criteo(args.data, progress=False)[0], 0.2)

    def batches(rows, shuffle: bool):  # this rank's share of every global batch
        return rank_batches(rows, args.batch_size, model_cfg.num_embeddings, env, shuffle=shuffle)

    def fit(model, optimizer) -> dict:  # 6. train one epoch, then 7. evaluate on the held-out rows
        steps = len(train_rows) // (args.batch_size * world)
        result = train(
            model,
            optimizer,
            batches(train_rows, True),
            lambda: batches(eval_rows, False),
            LoopConfig(steps=steps, progress=env.is_main),
            device=env.device,
            is_main=env.is_main,
        )
        return {
            **result.evals[-1],
            "steps": result.steps,
            "losses": result.losses,
            "evals": result.evals,
            "samples_per_s": result.steps * args.batch_size * world / result.train_seconds,
        }

    # 3. the flat model: torchrec's DLRM over one global EmbeddingBagCollection, sharded table-wise.
    #    build_model is `dmt train`'s recipe: the seeded flat model, its tables sharded by torchrec's
    #    DMP (dmt.shard_flat) and loaded with the seeded weights, and its optimizers.
    runs = {"flat": fit(*build_model(model_cfg, optim_cfg, seed=0, towers=None, env=env))}

    # 4. transform: a dot tower module per plan tower (its in-tower dots, then compression c times;
    #    it learns as fast as flat, benchmarks/results/learning), towers grouped by host;
    # 5. shard: each tower's tables inside its host, ids and outputs cross hosts only between peers.
    #    With towers, build_model does both: dmt.transform of the same seeded flat model, then dmt.shard.
    module = TowerModuleConfig(kind="dot", compression=args.tower_compression)
    towers = TowerSpec(plan=TowerPlan.from_json(args.plan), module=module)
    runs[f"dmt dot c={args.tower_compression:g}"] = fit(
        *build_model(model_cfg, optim_cfg, seed=0, towers=towers, env=env)
    )

    if env.is_main:  # the report: AUC, log loss, curves (bytes per sample: see `dmt train`)
        print(f"report: {write_report(runs, os.path.join(args.out, 'report'), title='flat vs DMT')}")
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    arguments = parse_args()
    if "RANK" in os.environ:
        run_rank(arguments)
    else:
        sys.exit(prepare(arguments))
